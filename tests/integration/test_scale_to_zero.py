"""The local runner scales the worker 0 -> N -> 0 on lane backlog, and users leave no queue behind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import Api, wait_until
from tests.support_stack import Stack, isolated_stack

IDLE_SECONDS = 3  # the worker's scale-down idle period in this stack
# Locally the target is ~2 s; the bound leaves room for a loaded 2-core CI machine.
COLD_START_BOUND = 6.0
# Idle period + the management API's stats interval (5 s) + a graceful exit + slack.
IDLE_TO_ZERO_BOUND = IDLE_SECONDS + 5 + 2 + 5


@pytest.fixture(scope="module")
def stack(running_services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory.mktemp("scale"),
        ["--workers", "auto", "--idle-seconds", str(IDLE_SECONDS)],
        WORKER_SLOTS="2",
    ) as running:
        yield running


def _cold_start(stack: Stack, user: Api) -> float:
    assert stack.worker_pids() == []
    started = time.monotonic()
    (record,) = user.wait_terminal([user.enqueue("echo", {"n": 1})], timeout=30)
    assert record["status"] == "done"
    return time.monotonic() - started


def test_no_worker_runs_without_work_and_one_starts_promptly_on_new_work(stack: Stack) -> None:
    # Given a stack that has had no work
    user = stack.api.new_user("cold")
    time.sleep(1)
    assert stack.worker_pids() == []

    # When a request arrives, a worker starts and finishes it within the cold-start bound
    first = _cold_start(stack, user)
    assert first < COLD_START_BOUND, f"cold start took {first:.2f}s"

    # Then with every lane empty the workers are gone after the idle period
    idle_from = time.monotonic()
    wait_until(lambda: stack.worker_pids() == [], timeout=IDLE_TO_ZERO_BOUND, what="the workers to stop", interval=0.2)
    to_zero = time.monotonic() - idle_from
    assert to_zero >= IDLE_SECONDS - 0.5, f"workers stopped after {to_zero:.1f}s, before the idle period"

    # And new work after zero starts a worker again
    second = _cold_start(stack, user)
    assert second < COLD_START_BOUND, f"second cold start took {second:.2f}s"
    print(f"\ncold start {first:.2f}s and {second:.2f}s; idle to zero {to_zero:.1f}s (idle period {IDLE_SECONDS}s)")


def test_workers_grow_with_busy_lanes_but_never_past_them_or_max(stack: Stack) -> None:
    # Given three users, each with one slow request (2 slots per worker)
    users = [stack.api.new_user(f"busy{i}") for i in range(3)]
    seen: list[int] = []

    # When their lanes are busy together
    with ThreadPoolExecutor(max_workers=3) as pool:
        lanes = list(pool.map(lambda u: [u.enqueue("sleep", {"ms": 4000})], users))
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        seen.append(len(stack.worker_pids()))
        time.sleep(0.1)

    # Then two workers run them (ceil(3 lanes / 2 slots)), never more
    assert max(seen) == 2, f"worker counts seen: {sorted(set(seen))}"
    for user, ids in zip(users, lanes, strict=True):
        assert [r["status"] for r in user.wait_terminal(ids, timeout=60)] == ["done"]


def test_many_busy_lanes_grow_the_workers_to_the_templates_max(stack: Stack) -> None:
    users = [stack.api.new_user(f"many{i}") for i in range(10)]
    with ThreadPoolExecutor(max_workers=5) as pool:
        lanes = list(pool.map(lambda u: [u.enqueue("sleep", {"ms": 4000})], users))
    # 10 lanes / 2 slots would want 5 workers; template.yaml allows 4. Work a worker already
    # holds reaches the autoscaler through the management API's figures (refreshed every
    # second, read every second) or the workers' waiting signal (one more every 2.5 s).
    wait_until(lambda: len(stack.worker_pids()) == 4, timeout=20, what="four workers")
    # and never more, while the rest of the work runs (it may shrink again as lanes finish)
    seen = []
    for _ in range(10):
        seen.append(len(stack.worker_pids()))
        time.sleep(0.1)
    assert max(seen) <= 4, seen
    for user, ids in zip(users, lanes, strict=True):
        user.wait_terminal(ids, timeout=60)


def test_after_everyone_finished_no_per_user_queue_and_no_open_request_remain(stack: Stack) -> None:
    # Given users who enqueued, some with several requests
    users = [stack.api.new_user(f"gone{i}") for i in range(4)]
    lanes = [[user.enqueue("echo", {"n": n}) for n in range(i + 1)] for i, user in enumerate(users)]
    for user, ids in zip(users, lanes, strict=True):
        user.wait_terminal(ids, timeout=60)
    prefix = stack.env.get("QUEUE_PREFIX", "lanes")
    partitions = {f"{prefix}.partition.{k}" for k in range(16)}
    # The shared queues: the partitions, the workers' roster and state signals, the
    # sweeper's election, what the broker would not deliver again, and each enqueue
    # process's private settled feed (named by the broker, gone with it). No deep lane's
    # overflow queue outlives its backlog.
    workers = {f"{prefix}.workers"} | {f"{prefix}.workers.{state}" for state in ("busy", "waiting", "spare", "hungry")}
    shared = partitions | workers | {f"{prefix}.sweeper", f"{prefix}.undeliverable"}

    # Then the broker holds no queue of a user, the partitions are empty (their stats lag
    # by up to 5 s), and no request is left open
    def only_shared_and_empty() -> bool:
        queues = {q["name"]: q.get("messages", 0) for q in stack.queues()}
        own = {name for name in queues if not name.startswith("amq.gen-")}
        return own <= shared and partitions <= own and not any(queues.values())

    wait_until(only_shared_and_empty, timeout=15, what="only the shared queues, empty")
    # A request is open until its outcome is recorded.
    finished = {o["_id"] for o in stack.database.outcomes.find({}, {"_id": 1})}
    assert [r["_id"] for r in stack.database.requests.find({}, {"_id": 1}) if r["_id"] not in finished] == []
    wait_until(lambda: stack.worker_pids() == [], timeout=IDLE_TO_ZERO_BOUND, what="the workers to stop")


def test_the_tests_read_worker_processes_from_proc(stack: Stack) -> None:
    # The other tests trust worker_pids(); it must see real workers, not only report none.
    user = stack.api.new_user("probe")
    user.enqueue("sleep", {"ms": 1500})
    pids = wait_until(stack.worker_pids, timeout=10, what="a worker process")
    assert all(Path(f"/proc/{pid}").exists() for pid in pids)
