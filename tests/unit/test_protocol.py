"""Pure pieces of the lane protocol: the per-lane scheduler and the enqueue ledger."""

from __future__ import annotations

import time

import pytest

from lanes.broker import PartitionDelivery
from lanes.lane.admission import LaneFull, LaneLedger
from lanes.lane.messages import LaneMessage, partition_of
from lanes.lane.notices import SettledNotices
from lanes.lane.scheduler import LaneScheduler, Turn


def turn(lane: str, request: str, partition: int = 0, generation: int = 1) -> Turn:
    delivery = PartitionDelivery(partition, generation, tag=hash(request) & 0xFFFF, body=b"")
    return Turn(lane, delivery, LaneMessage(request, lane, "echo", "null"))


def test_a_lane_runs_one_request_at_a_time_in_order() -> None:
    scheduler = LaneScheduler()
    for request in ("a1", "a2", "a3"):
        scheduler.add(turn("a", request))
    first = scheduler.next()
    assert first is not None and first.message.request_id == "a1"
    assert scheduler.next() is None  # a1 runs: a2 waits for it, whatever the idle slots
    scheduler.finished("a")
    second = scheduler.next()
    assert second is not None and second.message.request_id == "a2"


def test_lanes_take_turns_and_a_newcomer_waits_for_one_round_only() -> None:
    scheduler = LaneScheduler()
    for index in range(100):
        scheduler.add(turn("heavy", f"h{index}"))
    ran = []
    for step in range(6):
        if step == 2:
            scheduler.add(turn("newcomer", "n1"))
        current = scheduler.next()
        assert current is not None
        ran.append(current.message.request_id)
        scheduler.finished(current.lane)
    assert ran[:4] == ["h0", "h1", "h2", "n1"]  # behind the turn already taken, not the backlog


def test_a_lane_that_keeps_sending_gets_one_turn_per_round() -> None:
    scheduler = LaneScheduler()
    for user in range(50):
        scheduler.add(turn(f"u{user}", f"u{user}-1"))
    scheduler.add(turn("busy", "b0"))
    ran = []
    for index in range(51):
        scheduler.add(turn("busy", f"b{index + 1}"))  # it sends again before every turn
        current = scheduler.next()
        assert current is not None
        ran.append(current.lane)
        scheduler.finished(current.lane)
    assert ran.count("busy") == 1 and len(set(ran)) == 51


def test_a_lane_running_elsewhere_keeps_its_redelivered_head_waiting() -> None:
    scheduler = LaneScheduler()
    scheduler.add(turn("a", "a1", generation=1))
    running = scheduler.next()
    assert running is not None
    scheduler.drop(lambda _delivery: True)  # the connection was lost: everything went back
    scheduler.add(turn("a", "a1", generation=2))  # redelivered on the new connection
    assert scheduler.next() is None  # not beside the run still in its slot
    scheduler.finished("a")
    again = scheduler.next()
    assert again is not None and again.delivery.generation == 2


def test_dropping_a_partition_forgets_only_its_waiting_deliveries() -> None:
    scheduler = LaneScheduler()
    scheduler.add(turn("a", "a1", partition=1))
    scheduler.add(turn("b", "b1", partition=2))
    scheduler.drop(lambda delivery: delivery.partition == 1)
    only = scheduler.next()
    assert only is not None and only.lane == "b" and scheduler.next() is None
    assert scheduler.waiting() == 0


def test_a_partition_let_go_and_taken_again_gives_its_lane_one_place_in_the_round() -> None:
    scheduler = LaneScheduler()
    scheduler.add(turn("a", "a1", partition=1))
    scheduler.add(turn("b", "b1", partition=2))
    assert scheduler.drop_partition(1) == []  # nothing fetched from an overflow queue to give back
    assert scheduler.waiting() == 1
    scheduler.add(turn("a", "a1", partition=1, generation=2))  # taken again, redelivered
    ran = []
    while (current := scheduler.next()) is not None:
        ran.append(current.message.request_id)
    assert ran == ["b1", "a1"]  # once each: the dropped place in the round is void


def test_letting_go_200000_lanes_takes_under_50_ms() -> None:
    scheduler = LaneScheduler()
    for index in range(200_000):
        scheduler.add(turn(f"u{index}", f"r{index}", partition=index % 2))
    started = time.perf_counter()
    scheduler.drop_partition(0)
    elapsed = time.perf_counter() - started
    assert scheduler.waiting() == 100_000
    started = time.perf_counter()
    scheduler.drop_partition(1)
    elapsed += time.perf_counter() - started
    assert scheduler.waiting() == 0 and scheduler.next() is None
    assert elapsed < 0.05, f"{elapsed * 1000:.0f} ms"


def test_fetched_overflow_turns_are_given_back_when_their_partition_goes() -> None:
    scheduler = LaneScheduler()
    fetched = Turn("d", PartitionDelivery(3, 7, tag=1, body=b"", overflow=True), LaneMessage("d9", "d", "echo", "1"))
    scheduler.add(turn("a", "a1", partition=3))
    scheduler.add(fetched)
    assert scheduler.drop_partition(3) == [fetched]


def test_a_draining_partitions_lanes_are_not_started() -> None:
    scheduler = LaneScheduler()
    scheduler.add(turn("a", "a1"))
    scheduler.add(turn("b", "b1"))
    chosen = scheduler.next(lambda lane: lane != "a")
    assert chosen is not None and chosen.lane == "b"
    assert scheduler.next(lambda lane: lane != "a") is None
    later = scheduler.next()
    assert later is not None and later.lane == "a"


def test_the_ledger_counts_position_and_refuses_past_the_limit() -> None:
    ledger = LaneLedger(limit=2, verify=lambda _request: False)
    assert ledger.enter("u", "r1") == 0
    assert ledger.enter("u", "r2") == 1
    with pytest.raises(LaneFull):
        ledger.enter("u", "r3")
    assert ledger.enter("v", "s1") == 0  # lanes are counted apart
    ledger.on_settled_body(b'["r1"]')
    assert ledger.enter("u", "r3") == 1


def test_a_lost_settle_notice_is_repaired_before_refusing() -> None:
    settled = {"r1"}
    ledger = LaneLedger(limit=2, verify=lambda request: request in settled)
    ledger.enter("u", "r1")
    ledger.enter("u", "r2")
    assert ledger.enter("u", "r3") == 1  # r1's outcome is recorded: its entry goes
    with pytest.raises(LaneFull):
        ledger.enter("u", "r4")


def test_a_full_lane_costs_a_few_reads_a_second_however_often_it_is_refused() -> None:
    asked: list[str] = []
    ledger = LaneLedger(limit=10, verify=lambda request: asked.append(request) is not None)
    for index in range(10):
        ledger.enter("u", f"r{index}")
    for _ in range(50):
        with pytest.raises(LaneFull):
            ledger.enter("u", "more")
    assert asked == ["r0", "r1", "r2"]  # the oldest few, once


def test_bad_settle_notices_are_ignored() -> None:
    ledger = LaneLedger(limit=1, verify=lambda _request: False)
    ledger.enter("u", "r1")
    for body in (b"not json", b'{"r1": 1}', b'["unknown"]'):
        ledger.on_settled_body(body)
    with pytest.raises(LaneFull):
        ledger.enter("u", "r2")


def test_the_audit_drops_a_stale_lanes_settled_head_and_stops_at_its_first_open_request() -> None:
    # Given two lanes whose notices were lost: one settled up to r2, one entered just now
    settled = {"r1", "r2", "s1"}
    asked: list[str] = []
    ledger = LaneLedger(limit=10, verify=lambda request: asked.append(request) is None and request in settled)
    for request in ("r1", "r2", "r3", "r4"):
        ledger.enter("u", request)
    ledger.AUDIT_AFTER_SECONDS = 0.01
    time.sleep(0.02)
    ledger.enter("v", "s1")
    # When the audit runs
    ledger.audit()
    # Then the stale lane lost its settled head, read up to its first open request, and
    # the fresh lane was not read
    assert asked == ["r1", "r2", "r3"]
    assert ledger.enter("u", "r5") == 2
    assert ledger.enter("v", "s2") == 1


def test_settled_notices_go_in_one_batch_to_each_ledger() -> None:
    notices = SettledNotices()
    for request, ledger in (("a1", "A"), ("b1", "B"), ("a2", "A"), ("old", None)):
        notices.add(request, ledger)
    sent: list[tuple[bytes, str | None]] = []
    notices.flush(lambda body, ledger: sent.append((body, ledger)), force=True)
    assert sorted(sent, key=lambda item: str(item[1])) == [(b'["a1","a2"]', "A"), (b'["b1"]', "B"), (b'["old"]', None)]
    notices.flush(lambda body, ledger: sent.append((body, ledger)), force=True)
    assert len(sent) == 3  # nothing twice


def test_a_lane_always_hashes_to_the_same_partition() -> None:
    assert partition_of("user-1", 16) == partition_of("user-1", 16)
    assert {partition_of(f"user-{i}", 16) for i in range(1000)} == set(range(16))


def test_the_scheduler_counts_each_partitions_waiting_requests() -> None:
    scheduler = LaneScheduler()
    for request in ("a1", "a2", "b1"):
        scheduler.add(turn(request[0], request, partition=4))
    scheduler.add(turn("c", "c1", partition=5))
    assert (scheduler.waiting_in(4), scheduler.waiting_in(5), scheduler.waiting_in(6)) == (3, 1, 0)
    started = scheduler.next()
    assert started is not None and scheduler.waiting_in(started.delivery.partition) == (2 if started.lane != "c" else 0)
    scheduler.put_back(started)
    assert scheduler.waiting_in(4) + scheduler.waiting_in(5) == 4
    scheduler.drop(lambda delivery: delivery.partition == 4)
    assert scheduler.waiting_in(4) == 0
