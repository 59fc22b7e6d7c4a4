"""The fault suite's judge of the handler journal (tests/faults/journal.py): it must see
every way a lane can run wrongly, or the fencing scenarios could pass without cause."""

from __future__ import annotations

from tests.faults.journal import Run, judge


def _run(request: str, began: float, ended: float | None, *, deadline: float = 100.0, fenced: bool = False) -> Run:
    return Run(
        request=request,
        lane="u",
        pid=1,
        epoch=1,
        attempt=1,
        began=began,
        deadline=deadline,
        ended=None if fenced else ended,
        fenced_at=ended if fenced else None,
    )


def test_a_lane_run_one_request_after_another_is_clean() -> None:
    verdict = judge([_run("a", 0, 1), _run("b", 1.5, 2), _run("c", 3, 4)], [["a", "b", "c"]])
    assert verdict.clean() and verdict.runs == 3


def test_two_runs_of_one_request_at_once_overlap() -> None:
    verdict = judge([_run("a", 0, 2), _run("a", 1, 3)], [["a"]])
    assert verdict.overlaps == 1 and not verdict.clean()


def test_a_later_request_beginning_before_the_earlier_one_ended_is_out_of_order() -> None:
    verdict = judge([_run("a", 0, 2), _run("b", 1, 3)], [["a", "b"]])
    assert verdict.out_of_order == 1 and verdict.overlaps == 1


def test_a_later_request_run_entirely_first_is_out_of_order_without_overlap() -> None:
    verdict = judge([_run("b", 0, 1), _run("a", 2, 3)], [["a", "b"]])
    assert (verdict.out_of_order, verdict.overlaps) == (1, 0)


def test_a_run_after_one_that_ended_is_a_run_after_finish() -> None:
    verdict = judge([_run("a", 0, 1), _run("a", 5, 6)], [["a"]])
    assert verdict.runs_after_finish == 1 and verdict.overlaps == 0


def test_a_fenced_run_counts_until_its_deadline_not_its_late_end() -> None:
    # The paused run's end came at 90 s, after its deadline at 6 s: refused, so it acted
    # until 6 s; the next holder's run from 30 s overlaps nothing and may run it again.
    runs = [_run("a", 0, 90, deadline=6, fenced=True), _run("a", 30, 31.5), _run("b", 32, 33)]
    verdict = judge(runs, [["a", "b"]])
    assert verdict.clean(), verdict


def test_a_next_holder_starting_before_the_deadline_overlaps() -> None:
    runs = [_run("a", 0, 90, deadline=6, fenced=True), _run("a", 5, 6.5)]
    assert judge(runs, [["a"]]).overlaps == 1


def test_a_run_that_never_ended_counts_until_its_deadline() -> None:
    runs = [_run("a", 0, None, deadline=6), _run("a", 4, 5)]
    assert judge(runs, [["a"]]).overlaps == 1


def test_a_request_with_no_finished_run_is_counted() -> None:
    assert judge([_run("a", 0, None, deadline=6)], [["a"]]).never_finished == 1


def test_a_fence_written_before_the_deadline_shows_a_broken_journal() -> None:
    verdict = judge([_run("a", 0, 3, deadline=6, fenced=True), _run("a", 7, 8)], [["a"]])
    assert verdict.early_fences == 1 and not verdict.clean()
