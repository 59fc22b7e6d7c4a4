"""SIGKILL a worker in the middle of a request: redelivered, one outcome, order kept."""

from __future__ import annotations

import random
import signal
import time
from typing import Any

from tests.conftest import Workers
from tests.support import Api, wait_until
from tests.support_lanes import ordering_violations, outcome_counts


def test_request_killed_mid_run_is_redelivered_once_and_the_lane_keeps_its_order(
    api: Api, workers: Workers, database: Any
) -> None:
    # Given a lane whose head is a long request, running on the only worker
    user = api.new_user("crash")
    ids = [user.enqueue("sleep", {"ms": 2500})] + [user.enqueue("echo", {"n": n}) for n in range(3)]
    (victim,) = workers.start(1, WORKER_SLOTS="1")
    wait_until(lambda: user.request(ids[0])["status"] == "processing", timeout=30, what="the head to start")

    # When the worker is killed mid-request and another takes over
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert user.request(ids[0])["status"] == "processing"
    workers.start(1, WORKER_SLOTS="1")

    # Then the head runs again and ends once, and the rest follow in order
    records = user.wait_terminal(ids, timeout=60)
    assert [r["status"] for r in records] == ["done"] * 4
    assert records[0]["attempts"] == 2
    assert [r["attempts"] for r in records[1:]] == [1, 1, 1]
    assert ordering_violations(records) == []
    assert set(outcome_counts(database, ids).values()) == {1}


def test_repeated_kills_under_load_lose_nothing_and_keep_every_lane_in_order(
    api: Api, workers: Workers, database: Any
) -> None:
    # Given twelve users with short sleeps queued, served by three workers
    rng = random.Random(11)
    users = [api.new_user(f"kill{i}") for i in range(12)]
    lanes = [[user.enqueue("sleep", {"ms": rng.randint(20, 120)}) for _ in range(8)] for user in users]
    workers.start(3, WORKER_SLOTS="2")

    # When a worker is SIGKILLed three times while requests run, each replaced at once
    for _ in range(3):
        time.sleep(0.8)
        alive = [p for p in workers.processes if p.poll() is None]
        victim = rng.choice(alive)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        workers.start(1, WORKER_SLOTS="2")

    # Then every request ends exactly once, and no lane ran out of order
    records = [user.wait_terminal(ids, timeout=90) for user, ids in zip(users, lanes, strict=True)]
    assert all(r["status"] == "done" for lane in records for r in lane)
    assert [v for lane in records for v in ordering_violations(lane)] == []
    all_ids = [i for lane in lanes for i in lane]
    assert set(outcome_counts(database, all_ids).values()) == {1}
