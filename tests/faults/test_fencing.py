"""Fencing (docs/design.md §4.3, "Fencing"): a worker that lost its partitions, cut off from
the broker or paused, starts nothing more in their lanes, and what it was running never
overlaps what its successor runs.

Judged by the handler journal (tests/faults/journal.py): each run's begin and end as the
handler wrote them, with its process and fence. Request records are audited too, but they
are not the ground truth: they can look right while a lane ran twice at once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lanes.lane.fencing import LEASE_SILENCE_SECONDS
from tests.conftest import Workers
from tests.faults.journal import Verdict, judge, read_runs
from tests.faults.relay import Relay
from tests.faults.traffic import Audit, Lane, Traffic, audit, settle
from tests.support import Api, wait_until

USERS, PER_USER = 12, 25
HANDLER_SECONDS = 1.5
# Longer than the broker's heartbeat timeout (30 s), so the partitions change hands.
SILENCE_SECONDS = 90.0


def _traffic(api: Api, journal: Path) -> Traffic:
    return Traffic(
        lanes=[Lane(api.new_user("fence")) for _ in range(USERS)],
        per_user=PER_USER,
        action="journaled",
        data={"journal": str(journal), "seconds": HANDLER_SECONDS},
    )


def _running_in(journal: Path, pid: int) -> bool:
    """Whether the process has a run in progress: a begin with no end yet."""
    if not journal.exists():
        return False
    runs = [run for run in read_runs(journal) if run.pid == pid]
    return any(run.ended is None and run.fenced_at is None for run in runs)


def _finish(
    name: str, traffic: Traffic, journal: Path, database: Any, record: Callable[[Audit], None]
) -> tuple[Audit, Verdict]:
    traffic.join(timeout=120)
    result = audit(name, traffic, settle(traffic, timeout=240), database)
    verdict = judge(read_runs(journal), [lane.accepted for lane in traffic.lanes])
    record(result.with_journal(verdict))
    return result, verdict


def _assert_clean(result: Audit, verdict: Verdict) -> None:
    assert result.accepted == USERS * PER_USER
    assert (result.lost, result.double_outcomes, result.ordering_violations, result.server_errors) == (0, 0, 0, 0)
    assert verdict.clean(), verdict


def _lanes_taken_over(journal: Path, first: int, second: int, since: float) -> int:
    """Lanes that `first` ran before `since` and `second` ran after it."""
    runs = read_runs(journal)
    before = {run.lane for run in runs if run.pid == first and run.began < since}
    after = {run.lane for run in runs if run.pid == second and run.began > since}
    return len(before & after)


def test_a_worker_cut_off_from_the_broker_for_90s_never_runs_a_lane_twice_at_once(
    fault_api: Api,
    fault_workers: Workers,
    fault_env: dict[str, str],
    fault_database: Any,
    record_audit: Callable[[Audit], None],
    tmp_path: Path,
) -> None:
    # Given two workers, one of them reaching RabbitMQ through a relay, under steady traffic
    journal = tmp_path / "journal.jsonl"
    upstream = int(fault_env["RABBITMQ_URL"].rsplit(":", 1)[1].split("/", 1)[0])
    with Relay(upstream) as relay:
        (cut_off,) = fault_workers.start(1, RABBITMQ_URL=relay.url_for(fault_env["RABBITMQ_URL"]))
        (other,) = fault_workers.start(1)
        traffic = _traffic(fault_api, journal)
        traffic.start()
        wait_until(lambda: _running_in(journal, cut_off.pid), timeout=60, what="the relayed worker to run requests")
        # When the relay stops forwarding for 90 s, sockets open, the database reachable
        relay.freeze()
        frozen_at = time.time()
        time.sleep(SILENCE_SECONDS)
        relay.thaw()
        result, verdict = _finish("worker cut off from broker 90s", traffic, journal, fault_database, record_audit)
    # Then it started nothing once the broker had been silent for the lease's length, its
    # partitions went to the other worker, and no lane ever ran twice at once
    runs = read_runs(journal)
    silent_from, thawed_at = frozen_at + LEASE_SILENCE_SECONDS + 1, frozen_at + SILENCE_SECONDS
    assert not [run for run in runs if run.pid == cut_off.pid and silent_from < run.began < thawed_at]
    assert _lanes_taken_over(journal, cut_off.pid, other.pid, frozen_at + 1) > 0
    _assert_clean(result, verdict)


def test_a_worker_paused_for_90s_never_runs_a_lane_twice_at_once(
    fault_api: Api,
    fault_workers: Workers,
    fault_database: Any,
    record_audit: Callable[[Audit], None],
    tmp_path: Path,
) -> None:
    # Given two workers under steady traffic
    journal = tmp_path / "journal.jsonl"
    paused, other = fault_workers.start(2)
    traffic = _traffic(fault_api, journal)
    traffic.start()
    # When one of them is paused (SIGSTOP, as a long GC or VM pause would) mid-request for
    # 90 s, then resumed
    wait_until(lambda: _running_in(journal, paused.pid), timeout=60, what="the worker to run requests")
    paused.send_signal(signal.SIGSTOP)
    paused_at = time.time()
    try:
        time.sleep(SILENCE_SECONDS)
    finally:
        paused.send_signal(signal.SIGCONT)
    result, verdict = _finish("worker paused 90s (SIGSTOP)", traffic, journal, fault_database, record_audit)
    # Then the other worker went on with its lanes, and no lane ever ran twice at once: what
    # the paused worker was running never reached its end (interrupted at its time limit, or
    # its end refused past the deadline), and it ran nothing while its successor held them
    assert _lanes_taken_over(journal, paused.pid, other.pid, paused_at + 1) > 0
    cut = [run for run in read_runs(journal) if run.pid == paused.pid and run.began < paused_at and run.ended is None]
    assert cut, "the pause hit no running request"
    _assert_clean(result, verdict)
