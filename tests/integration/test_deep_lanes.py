"""Deep lanes against the real broker and database (lanes.lane.overflow): a worker holds a
window of each partition, a lane deeper than LANE_WINDOW waits in an overflow queue of its
own, and neither a newcomer behind it nor its own order suffers."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from lanes.lane.messages import partition_of
from tests.conftest import Workers
from tests.support import Api
from tests.support_lanes import ordering_violations
from tests.support_stack import Stack, isolated_stack

PARTITIONS = 2
DEPTH = 60


@pytest.fixture(scope="module", params=["classic", "quorum"])
def deep_stack(
    request: pytest.FixtureRequest, running_services: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Two partitions delivering 16 messages ahead each, lanes keeping 3 of them; classic and
    quorum queues (a quorum overflow queue takes no single active consumer and no if-empty)."""
    with isolated_stack(
        tmp_path_factory.mktemp("deep"),
        ["--workers", "0"],
        QUEUE_TYPE=request.param,
        LANE_PARTITIONS=str(PARTITIONS),
        WORKER_HELD_REQUESTS="32",
        LANE_WINDOW="3",
        WORKER_SLOTS="2",
    ) as stack:
        yield stack


def _user_id(user: Api) -> str:
    assert user.token is not None
    return str(jwt.decode(user.token, options={"verify_signature": False})["sub"])


def _users_in_one_partition(api: Api) -> tuple[Api, Api]:
    deep = api.new_user("deep")
    partition = partition_of(_user_id(deep), PARTITIONS)
    while True:
        newcomer = api.new_user("newcomer")
        if partition_of(_user_id(newcomer), PARTITIONS) == partition:
            return deep, newcomer


def _overflow_queues(stack: Stack) -> list[str]:
    return [q["name"] for q in stack.queues() if ".overflow." in q["name"]]


def _started(record: dict[str, Any]) -> str:
    return str(record["started_at"])


def test_a_newcomer_behind_a_deep_lane_runs_at_once_and_the_deep_lane_keeps_its_order(deep_stack: Stack) -> None:
    # Given a lane 60 deep, then a newcomer's request in the same partition, before any worker
    deep, newcomer = _users_in_one_partition(deep_stack.api)
    deep_ids = [deep.enqueue("sleep", {"ms": 30, "n": n}) for n in range(DEPTH)]
    newcomer_id = newcomer.enqueue("echo", {"hello": True})
    workers = Workers(deep_stack.env)
    try:
        # When one worker (two slots) serves them
        workers.start(1)
        deep_records = deep.wait_terminal(deep_ids, timeout=60)
        first = newcomer.wait_terminal([newcomer_id], timeout=5)[0]
    finally:
        workers.stop_all()
    # Then the newcomer did not wait for the backlog ahead of it in the partition (a window
    # of 16 would have shown it only after 44 of the deep lane's requests)
    assert first["status"] == "done"
    assert first["finished_at"] < _started(deep_records[10])
    # and the deep lane ran every request once, in order
    assert [r["status"] for r in deep_records] == ["done"] * DEPTH
    assert [r["attempts"] for r in deep_records] == [1] * DEPTH
    assert ordering_violations(deep_records) == []
    # and once it drained, its overflow queue and its entry are gone: an empty lane costs nothing
    assert _overflow_queues(deep_stack) == []
    assert deep_stack.database.deep_lanes.count_documents({}) == 0


def test_a_deep_lane_keeps_its_order_when_its_worker_is_killed_mid_spill(deep_stack: Stack) -> None:
    # Given a deep lane being spilled and run by one worker
    deep = deep_stack.api.new_user("deep")
    deep_ids = [deep.enqueue("sleep", {"ms": 40, "n": n}) for n in range(DEPTH)]
    workers = Workers(deep_stack.env)
    try:
        (victim,) = workers.start(1)
        deadline = time.monotonic() + 30
        while not _overflow_queues(deep_stack) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _overflow_queues(deep_stack), "the lane never went deep"
        # When that worker is SIGKILLed, more requests arrive, and another worker takes over
        time.sleep(0.5)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        later_ids = [deep.enqueue("sleep", {"ms": 10, "n": DEPTH + n}) for n in range(5)]
        workers.start(1)
        records = deep.wait_terminal(deep_ids + later_ids, timeout=90)
    finally:
        workers.stop_all()
    # Then every request ran to one outcome, in order, and the lane drained away
    assert [r["status"] for r in records] == ["done"] * (DEPTH + 5)
    assert ordering_violations(records) == []
    outcomes = deep_stack.database.outcomes.count_documents({"_id": {"$in": deep_ids + later_ids}})
    assert outcomes == DEPTH + 5
    assert _overflow_queues(deep_stack) == []


def test_a_newcomer_behind_many_lanes_each_within_its_window_is_not_held_up(deep_stack: Stack) -> None:
    # Given eight lanes of four slow requests in one partition (each within its window of 3
    # and a running one, together twice the partition's window of 16), then a newcomer there
    users = [deep_stack.api.new_user("crowd")]
    partition = partition_of(_user_id(users[0]), PARTITIONS)
    while len(users) < 9:
        user = deep_stack.api.new_user("crowd")
        if partition_of(_user_id(user), PARTITIONS) == partition:
            users.append(user)
    *crowd, newcomer = users
    lanes = [[user.enqueue("sleep", {"ms": 500, "n": n}) for n in range(4)] for user in crowd]
    newcomer_id = newcomer.enqueue("echo", {"hello": True})
    workers = Workers(deep_stack.env)
    try:
        # When one worker of two slots serves them
        workers.start(1)
        first = newcomer.wait_terminal([newcomer_id], timeout=30)[0]
        records = [user.wait_terminal(ids, timeout=60) for user, ids in zip(crowd, lanes, strict=True)]
    finally:
        workers.stop_all()
    # Then the newcomer took its turn in the first rounds, before any lane's third request
    # (held back until the crowd drained, it would come after 16 of their requests)
    third_starts = sorted(_started(lane[2]) for lane in records)
    assert first["finished_at"] < third_starts[0]
    assert all(ordering_violations(lane) == [] for lane in records)
