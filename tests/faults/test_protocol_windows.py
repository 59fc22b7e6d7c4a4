"""The crash windows of the first lane protocols, each driven on purpose against the
partitions protocol (docs/design.md §4): where it removes a window, the scenario still
has to hold.

1. a holder killed mid-request while other workers take its partitions over: no reorder;
2. requests in a partition whose enqueue died before the record, with no worker
   running: the autoscaler starts one and they run;
3. (tests/faults/test_outages.py) requests queued while no worker runs keep their order;
4. a user enqueueing without pause gets one turn per round, no spare ones;
5. a message whose record was never stored still runs, and is readable;
6. a timed-out attempt never runs beside the next one.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
import pytest

from lanes.broker import QueueNames, partition_arguments
from lanes.lane.messages import LaneMessage, partition_of
from lanes.requests import new_request_id
from lanes.settings import Settings
from tests.conftest import ROOT, Workers
from tests.faults.traffic import Audit
from tests.support import TERMINAL, Api, management_api, wait_until
from tests.support_lanes import ordering_violations, outcome_counts
from tests.support_stack import Stack, isolated_stack

KILLS = 50


def _user_id(database: Any, request_id: str) -> str:
    return str(database.requests.find_one({"_id": request_id})["user_id"])


def _holder(env: dict[str, str], partition: str, workers: Workers) -> subprocess.Popen[bytes]:
    """The worker process that consumes the partition, as the broker last reported it (its
    connections are named with their process id); the oldest worker if none is reported."""
    vhost = quote(Settings.from_env(env).rabbitmq_vhost, safe="")
    consumers = management_api("GET", f"/api/queues/{vhost}/{quote(partition, safe='')}").get("consumer_details") or []
    # (a consumer the broker has no channel details for yet reports them as an empty list)
    details = [consumer.get("channel_details") for consumer in consumers]
    names = {d["connection_name"] for d in details if isinstance(d, dict) and "connection_name" in d}
    connections = management_api("GET", "/api/connections?columns=name,client_properties")
    pids = {
        int(str(c["client_properties"]["connection_name"]).rsplit(" ", 1)[1])
        for c in connections
        if c["name"] in names and str(c.get("client_properties", {}).get("connection_name", "")).startswith("lanes pid")
    }
    alive = [p for p in workers.processes if p.poll() is None]
    return next((p for p in alive if p.pid in pids), alive[0])


def _kill_holders_repeatedly(user: Api, workers: Workers, database: Any, env: dict[str, str], name: str) -> Audit:
    # Given one lane of short requests and two worker processes of two slots each, so that
    # every kill hands the lane's partition to the survivor and the newcomer takes a share
    ids = [user.enqueue("sleep", {"ms": 120}) for _ in range(KILLS + 10)]
    settings = Settings.from_env(env)
    partition = QueueNames.of(settings).partition(partition_of(_user_id(database, ids[0]), settings.lane_partitions))
    # Attempts enough that no request fails for being killed three times in a row (a
    # loaded machine starts workers slowly, and the oldest is the next one killed): this
    # scenario is about order; a request that kills every worker is test_worker_crash's.
    # A short time limit: a killed holder's running request waits out its deadline
    # (lanes.lane.fencing) before the next holder runs it, and many kills hit one.
    patient = {
        "WORKER_SLOTS": "2",
        "MAX_ATTEMPTS": str(KILLS),
        "REQUEST_TIMEOUT_SECONDS": "1",
        "FENCE_GRACE_SECONDS": "0.5",
    }
    workers.start(2, **patient)
    # When the lane's holder is SIGKILLed 50 times, mid-request more often than not, and replaced
    for _ in range(KILLS):
        time.sleep(0.3)
        victim = _holder(env, partition, workers)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        workers.start(1, **patient)
    records = user.wait_terminal(ids, timeout=180)
    # Then every request ended once, and none started before the one sent before it ended
    assert [r["status"] for r in records] == ["done"] * len(ids)
    assert sum(r["attempts"] for r in records) > len(ids), "no kill hit a running request"
    return Audit(
        scenario=name,
        accepted=len(ids),
        lost=sum(r["status"] != "done" for r in records),
        double_outcomes=sum(n > 1 for n in outcome_counts(database, ids).values()),
        ordering_violations=len(ordering_violations(records)),
        server_errors=0,  # every enqueue above asserted its 202
    )


def test_window1_killing_the_holder_never_reorders_a_classic_lane(
    api: Api, workers: Workers, database: Any, lanes_env: dict[str, str], record_audit: Callable[[Audit], None]
) -> None:
    result = _kill_holders_repeatedly(
        api.new_user("kill-classic"), workers, database, lanes_env, f"holder SIGKILL x{KILLS}, classic"
    )
    record_audit(result)
    assert (result.lost, result.double_outcomes, result.ordering_violations) == (0, 0, 0)


@pytest.fixture(scope="module")
def quorum_stack(running_services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(tmp_path_factory.mktemp("quorum-windows"), ["--workers", "0"], QUEUE_TYPE="quorum") as stack:
        yield stack


def test_window1_killing_the_holder_never_reorders_a_quorum_lane(
    quorum_stack: Stack, record_audit: Callable[[Audit], None]
) -> None:
    workers = Workers(quorum_stack.env)
    try:
        result = _kill_holders_repeatedly(
            quorum_stack.api.new_user("kill-quorum"),
            workers,
            quorum_stack.database,
            quorum_stack.env,
            f"holder SIGKILL x{KILLS}, quorum",
        )
    finally:
        workers.stop_all()
    record_audit(result)
    assert (result.lost, result.double_outcomes, result.ordering_violations) == (0, 0, 0)


@pytest.fixture(scope="module")
def scaled_stack(running_services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Autoscaled from zero, with a short idle period."""
    with isolated_stack(
        tmp_path_factory.mktemp("windows-scaled"),
        ["--workers", "auto", "--idle-seconds", "3"],
        SWEEP_INTERVAL_SECONDS="1",
        WORKER_SLOTS="2",
    ) as stack:
        yield stack


def _strand(stack: Stack, user_id: str) -> str:
    """What an enqueue that died after its publish leaves: the message in the lane's
    partition, no record, nothing else."""
    settings = Settings.from_env(stack.env)
    message = LaneMessage(new_request_id(), user_id, "echo", json.dumps({"stranded": True}))
    partition = QueueNames.of(settings).partition(partition_of(user_id, settings.lane_partitions))
    connection = pika.BlockingConnection(pika.URLParameters(stack.env["RABBITMQ_URL"]))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(partition, durable=True, arguments=partition_arguments(settings))
    channel.basic_publish(
        "", partition, message.body(), pika.BasicProperties(delivery_mode=2, headers=message.headers())
    )
    connection.close()
    return message.request_id


def test_window2_and_5_work_with_no_worker_and_no_record_runs(scaled_stack: Stack) -> None:
    # Given no worker, and two lanes whose enqueue died after publishing, before any record
    users = [scaled_stack.api.new_user(f"stranded{i}") for i in range(2)]
    user_ids = [_owner(scaled_stack, user) for user in users]
    wait_until(lambda: scaled_stack.worker_pids() == [], timeout=60, what="no worker")
    stranded = [_strand(scaled_stack, user_id) for user_id in user_ids]
    started = time.monotonic()
    # When the autoscaler sees the work (nothing has to be woken: it is in a partition)
    records = [
        wait_until(lambda u=user, i=request_id: _finished(u, i), timeout=60, what="the stranded request")
        for user, request_id in zip(users, stranded, strict=True)
    ]
    # Then both run, promptly, and are readable by their owners
    assert [r["status"] for r in records] == ["done", "done"]
    assert [r["result"] for r in records] == [{"stranded": True}] * 2
    assert time.monotonic() - started < 30


def _finished(user: Api, request_id: str) -> dict[str, Any] | None:
    """The request once it has an outcome; until then it has no record, so it answers 404."""
    response = user.call("GET", f"/requests/{request_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    record = dict(response.json())
    return record if record["status"] in TERMINAL else None


def _owner(stack: Stack, user: Api) -> str:
    """The user id behind a client: from the record of a request it enqueues and waits for."""
    request_id = user.enqueue("echo", None)
    user.wait_terminal([request_id], timeout=60)
    return str(stack.database.requests.find_one({"_id": request_id})["user_id"])


def test_window4_a_user_enqueueing_without_pause_gets_one_turn_per_round(api: Api, workers: Workers) -> None:
    # Given one slot holding one lane at a time, turns of one request, and a heavy user
    # with a backlog who keeps enqueueing while thirty light users send one request each
    heavy = api.new_user("heavy")
    heavy_ids = [heavy.enqueue("sleep", {"ms": 20}) for _ in range(20)]
    workers.start(1, WORKER_SLOTS="1")
    wait_until(lambda: heavy.request(heavy_ids[0])["status"] != "queued", timeout=30, what="the heavy lane")
    stop = threading.Event()

    def keep_enqueueing() -> None:
        while not stop.wait(0.01):
            heavy_ids.append(heavy.enqueue("sleep", {"ms": 20}))

    feeder = threading.Thread(target=keep_enqueueing, daemon=True)
    feeder.start()
    lights = [api.new_user(f"light{i}") for i in range(30)]
    light_ids = [(light, light.enqueue("echo", {"n": i})) for i, light in enumerate(lights)]
    light_records = [light.wait_terminal([request_id], timeout=120)[0] for light, request_id in light_ids]
    stop.set()
    feeder.join(timeout=10)
    # Then between two turns of the heavy user, every light request that was accepted
    # before the first of them started ran before the second
    heavy_runs = sorted(
        (r["started_at"], r["finished_at"])
        for r in (heavy.request(i) for i in heavy_ids)
        if r["started_at"] is not None
    )
    overtaken = [
        (first, second, light["request_id"])
        for (first, _), (second, _) in itertools.pairwise(heavy_runs)
        for light in light_records
        if light["created_at"] < first and light["started_at"] > second
    ]
    assert overtaken == []
    heavy.wait_terminal(heavy_ids, timeout=120)


@pytest.fixture(scope="module")
def overrun_stack(running_services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack that knows the `overrun` action, whose attempts time out after 0.5 s."""
    with isolated_stack(
        tmp_path_factory.mktemp("overrun"),
        ["--workers", "0"],
        ACTIONS_MODULE="tests.faults.slow_actions",
        PYTHONPATH=str(ROOT),
        REQUEST_TIMEOUT_SECONDS="0.5",
        MAX_ATTEMPTS="2",
        RETRY_BACKOFF_SECONDS="0",
    ) as stack:
        yield stack


def test_window6_a_timed_out_attempt_never_overlaps_the_next(overrun_stack: Stack, tmp_path: Path) -> None:
    # Given a handler that runs for 3 s where attempts time out after 0.5 s, two attempts
    journal = tmp_path / "attempts.jsonl"
    user = overrun_stack.api.new_user("overrun")
    workers = Workers(overrun_stack.env)
    try:
        workers.start(1)
        # When it runs
        request_id = user.enqueue("overrun", {"journal": str(journal), "seconds": 3})
        (record,) = user.wait_terminal([request_id], timeout=60)
    finally:
        workers.stop_all()
    # Then both attempts timed out, and the second began only after the first had ended
    assert record["status"] == "failed" and record["attempts"] == 2 and "timed out" in record["error"]
    attempts = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert attempts[0]["ended"] - attempts[0]["began"] < 2, "the first attempt was not interrupted"
    assert attempts[1]["began"] >= attempts[0]["ended"]
