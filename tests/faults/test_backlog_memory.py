"""The backlog that crash-looped the fleet (docs/design.md §4.5.1): a worker started with
300,000 requests waiting, inside the template's memory limit, as a container runtime
would hold it. Before windows and deep lanes a worker took every waiting request of its
partitions, ~2.9 KB of memory for each 1 KB request, and died at ~170,000 of them in
512 MiB; the broker gave everything to the next worker, which died the same way.

Required: the worker is never OOM-killed, it serves its lanes in order while it holds
the backlog, and every request is either settled or still waiting, none dropped on the way
through the overflow queues.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pymongo
import pytest

from deploy import template
from deploy.services import FerretDB, RabbitMQ
from lanes.broker import QueueNames, partition_arguments
from lanes.lane.messages import LaneMessage, partition_of
from lanes.requests import new_request_id
from lanes.settings import Settings
from tests.conftest import WORKER_MAIN
from tests.faults.memory_limit import MemoryLimit
from tests.faults.traffic import Audit

WAITING = 300_000
PER_LANE = 1000  # the default LANE_DEPTH_LIMIT
DATA = json.dumps({"ms": 1000, "pad": "x" * 1000}, separators=(",", ":"))  # 1 KB, 1 s handlers
WATCH_SECONDS = 45
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _template_worker_limit() -> int:
    limit = template.load().worker.resources["limits"]["memory"]
    return int(limit[:-2]) * UNITS[limit[-2:]]


@pytest.fixture
def backlog_env(fault_env: dict[str, str], private_services: tuple[RabbitMQ, FerretDB]) -> Iterator[dict[str, str]]:
    """A prefix and database of the scenario's own; its queues are deleted afterwards."""
    prefix = f"oom{uuid.uuid4().hex[:6]}"
    _, database = private_services
    env = {**fault_env, "QUEUE_PREFIX": prefix, "MONGO_URI": database.uri + f"lanes_{prefix}", "WORKER_SLOTS": "4"}
    yield env
    broker, _ = private_services
    names = [q["name"] for q in broker.management("GET", "/api/queues?columns=name") if q["name"].startswith(prefix)]
    connection = pika.BlockingConnection(pika.URLParameters(env["RABBITMQ_URL"]))
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(name)
    finally:
        connection.close()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(env["MONGO_URI"])
    client.drop_database(f"lanes_{prefix}")
    client.close()


def _publish(settings: Settings, count: int) -> dict[str, list[str]]:
    """`count` requests in lanes of PER_LANE, interleaved, straight to their partitions (as
    the enqueue function publishes them), in transactions of 1,000; the ids by lane."""
    names = QueueNames.of(settings)
    lanes: dict[str, list[str]] = {uuid.uuid4().hex: [] for _ in range(count // PER_LANE)}
    users = list(lanes)
    connection = pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url))
    try:
        channel = connection.channel()
        for index in range(settings.lane_partitions):
            channel.queue_declare(names.partition(index), durable=True, arguments=partition_arguments(settings))
        channel.tx_select()
        for n in range(count):
            user = users[n % len(users)]
            message = LaneMessage(new_request_id(), user, "sleep", DATA)
            lanes[user].append(message.request_id)
            properties = pika.BasicProperties(delivery_mode=2, headers=message.headers(), timestamp=int(time.time()))
            partition = names.partition(partition_of(user, settings.lane_partitions))
            channel.basic_publish("", partition, message.body(), properties)
            if n % 1000 == 999:
                channel.tx_commit()
        channel.tx_commit()
    finally:
        connection.close()
    return lanes


def _waiting(settings: Settings, lanes: dict[str, list[str]]) -> int:
    """Messages in the partitions and the lanes' overflow queues (no consumer left: all ready)."""
    names = QueueNames.of(settings)
    queues = [names.partition(i) for i in range(settings.lane_partitions)] + [names.overflow(u) for u in lanes]
    connection = pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url))
    waiting = 0
    try:
        for name in queues:
            channel = connection.channel()
            try:
                waiting += channel.queue_declare(name, passive=True).method.message_count
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:  # 404: a lane that never went deep, or drained
                pass
    finally:
        connection.close()
    return waiting


def _out_of_order(lanes: dict[str, list[str]], settled: set[str]) -> int:
    """Requests settled behind one of their lane's that was not: a lane runs as a prefix."""
    out = 0
    for ids in lanes.values():
        done = [request_id in settled for request_id in ids]
        first_open = done.index(False) if False in done else len(done)
        out += sum(done[first_open:])
    return out


def test_a_worker_at_its_memory_limit_survives_300000_waiting_requests(
    backlog_env: dict[str, str], record_audit: Callable[[Audit], None]
) -> None:
    if why := MemoryLimit.available():
        pytest.skip(why)
    settings = Settings.from_env(backlog_env)
    # Given 300,000 requests of 1 KB waiting in 300 lanes, and no worker
    lanes = _publish(settings, WAITING)
    limit = MemoryLimit("lanes-worker", _template_worker_limit())
    try:
        # When one worker starts inside the template's memory limit, as after a crash or from zero
        worker = subprocess.Popen(
            limit.command([sys.executable, str(WORKER_MAIN)]), env=backlog_env, cwd=WORKER_MAIN.parent
        )
        try:
            deadline = time.monotonic() + WATCH_SECONDS
            while time.monotonic() < deadline and worker.poll() is None:
                time.sleep(0.5)
            alive = worker.poll() is None
        finally:
            worker.terminate()  # it finishes what its slots run; the rest goes back to the broker
            worker.wait(timeout=60)
        oom_kills, peak = limit.oom_kills(), limit.peak_bytes()
    finally:
        limit.remove()

    # Then it was never killed, and stayed well inside the limit
    assert alive, f"the worker exited with {worker.returncode} while the backlog waited"
    assert oom_kills == 0
    assert 0 < peak < limit.limit_bytes / 2, f"peak {peak / 2**20:.0f} MiB of {limit.limit_bytes / 2**20:.0f}"
    # And it worked through its lanes in order, each request settled or still waiting
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(settings.mongo_uri)
    try:
        database = client.get_default_database()
        settled = {outcome["_id"] for outcome in database.outcomes.find({}, {"_id": 1})}
        deep = database.deep_lanes.count_documents({})
    finally:
        client.close()
    waiting = _waiting(settings, lanes)
    result = Audit(
        "backlog 300,000 at the memory limit",
        accepted=WAITING,
        lost=WAITING - len(settled) - waiting,
        double_outcomes=0,  # an outcome's _id is the request's: one per request by construction
        ordering_violations=_out_of_order(lanes, settled),
        server_errors=0,  # no HTTP in this scenario
    )
    record_audit(result)
    print(f"\npeak {peak / 2**20:.0f} MiB, {len(settled)} settled, {waiting} waiting, {deep} deep lanes")
    assert len(settled) >= 4 * 10, "the worker ran too little to show it served its lanes"
    assert deep > 0, "no lane went deep: the backlog never reached the worker"
    assert result.ordering_violations == 0
    # Each running request settled before the graceful stop, so none is counted twice either.
    assert waiting + len(settled) == WAITING, f"{result.lost} lost"
