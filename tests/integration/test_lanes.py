"""Per-user FIFO, no head-of-line blocking and fair turns, with several worker processes."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.conftest import Workers
from tests.support import Api
from tests.support_lanes import ordering_violations, outcome_counts


def _enqueue_in_order(user: Api, count: int, rng: random.Random) -> list[str]:
    """Each request is sent only after the previous one got its 202."""
    ids = []
    for n in range(count):
        if rng.random() < 0.3:
            ids.append(user.enqueue("echo", {"n": n}))
        else:
            ids.append(user.enqueue("sleep", {"ms": rng.randint(1, 40), "n": n}))
    return ids


def test_each_lane_runs_strictly_in_order_with_three_workers(api: Api, workers: Workers, database: Any) -> None:
    # Given three worker processes and twenty users enqueueing concurrently
    workers.start(3)
    users = [api.new_user(f"fifo{i}") for i in range(20)]
    rng = random.Random(7)
    seeds = [random.Random(rng.random()) for _ in users]
    with ThreadPoolExecutor(max_workers=10) as pool:
        lanes = list(pool.map(lambda pair: _enqueue_in_order(pair[0], 10, pair[1]), zip(users, seeds, strict=True)))

    # When every request has settled
    records = [user.wait_terminal(ids, timeout=120) for user, ids in zip(users, lanes, strict=True)]

    # Then each ran once, and none started before its predecessor finished
    assert all(r["status"] == "done" and r["attempts"] == 1 for lane in records for r in lane)
    violations = [v for lane in records for v in ordering_violations(lane)]
    assert violations == []
    all_ids = [i for lane in lanes for i in lane]
    assert set(outcome_counts(database, all_ids).values()) == {1}


def test_a_slow_lane_does_not_block_another_users_request(api: Api, workers: Workers) -> None:
    workers.start(2, WORKER_SLOTS="2")
    slow, quick = api.new_user("slow"), api.new_user("quick")
    slow_ids = [slow.enqueue("sleep", {"ms": 1000}) for _ in range(6)]
    time.sleep(0.3)

    started = time.monotonic()
    (record,) = quick.wait_terminal([quick.enqueue("echo", {"hi": 1})], timeout=10)
    waited = time.monotonic() - started

    assert record["status"] == "done"
    assert waited < 2.0, f"the quick request waited {waited:.2f}s behind a slow lane"
    assert sum(slow.request(i)["status"] == "queued" for i in slow_ids) >= 3


def test_busy_lanes_take_turns_with_a_newcomer(api: Api, workers: Workers) -> None:
    # Given one slot and a heavy user with a long backlog
    heavy = api.new_user("heavy")
    heavy_ids = [heavy.enqueue("sleep", {"ms": 20}) for _ in range(60)]
    workers.start(1, WORKER_SLOTS="1")
    time.sleep(0.3)

    # When newcomers arrive behind that backlog
    newcomers = [api.new_user(f"newcomer{i}") for i in range(3)]
    newcomer_records = [user.wait_terminal([user.enqueue("echo")], timeout=30)[0] for user in newcomers]

    # Then each waited a turn or two, not for the whole backlog
    heavy_records = heavy.wait_terminal(heavy_ids, timeout=60)
    last_newcomer = max(r["finished_at"] for r in newcomer_records)
    finished_before = sum(r["finished_at"] < last_newcomer for r in heavy_records)
    assert finished_before < 40, f"newcomers waited behind {finished_before} of the heavy user's requests"
    assert ordering_violations(heavy_records) == []


def test_concurrent_enqueues_into_an_idle_lane_all_wake_it(api: Api, workers: Workers) -> None:
    # Given a running worker and an idle lane
    workers.start(1)
    user = api.new_user("burst")
    user.wait_terminal([user.enqueue("echo")], timeout=30)

    # When eight enqueues for the same user arrive at once, several times over
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = list(pool.map(lambda n: user.enqueue("echo", {"n": n}), range(8)))
        # Then the lane is woken at once: done long before the sweeper would notice
        started = time.monotonic()
        records = user.wait_terminal(ids, timeout=20)
        assert time.monotonic() - started < 10
        assert all(r["status"] == "done" for r in records)
