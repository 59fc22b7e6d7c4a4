"""Quorum-queue partitions keep the per-user FIFO that docs/design.md §4 argues for classic ones."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from deploy import services
from lanes.broker import partition_arguments
from lanes.settings import Settings
from tests.conftest import Workers
from tests.support import management_api, open_vhost, wait_until
from tests.support_lanes import ordering_violations, outcome_counts
from tests.support_stack import Stack, isolated_stack


@pytest.fixture
def vhost(running_services: None) -> Iterator[str]:
    name = f"lanes-test-{uuid.uuid4().hex[:10]}"
    open_vhost(name)
    yield name
    management_api("DELETE", f"/api/vhosts/{name}")


def _channel(vhost: str) -> tuple[pika.BlockingConnection, Any]:
    connection = pika.BlockingConnection(pika.URLParameters(services.local_broker().amqp_url(vhost)))
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


def _hold(channel: Any, exclusive: bool) -> list[tuple[int, bytes]]:
    """Consume the partition with no prefetch limit (every message at once, the hardest case for
    the hand-over order); deliveries land in the list."""
    deliveries: list[tuple[int, bytes]] = []
    channel.basic_qos(prefetch_count=0)
    channel.basic_consume(
        "partition", lambda _c, method, _p, body: deliveries.append((method.delivery_tag, body)), exclusive=exclusive
    )
    return deliveries


def _take(connection: pika.BlockingConnection, deliveries: list[tuple[int, bytes]], count: int) -> list[bytes]:
    wait_until(lambda: connection.process_data_events(0.1) or len(deliveries) >= count, timeout=10, what="deliveries")
    return [body for _tag, body in deliveries[:count]]


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_what_a_dead_holder_left_unacknowledged_comes_back_first_and_in_order(vhost: str, queue_type: str) -> None:
    # Given a partition declared as Lanes declares it, holding lane a's a1, a2 and lane
    # b's b1 between them, and a holder that has them all
    arguments = partition_arguments(Settings.from_env({"QUEUE_TYPE": queue_type}))
    exclusive = queue_type == "classic"
    connection, channel = _channel(vhost)
    channel.queue_declare("partition", durable=True, arguments=arguments)
    for body in (b"a1", b"b1", b"a2"):
        channel.basic_publish("", "partition", body, mandatory=True)
    deliveries = _hold(channel, exclusive)
    assert _take(connection, deliveries, 3) == [b"a1", b"b1", b"a2"]

    # When lane b's request settles (acknowledged out of the partition's order)
    channel.basic_ack(deliveries[1][0])

    # Then while the holder lives nobody else gets the partition: a second exclusive
    # consumer of a classic queue is refused; a quorum queue does not enforce exclusive
    # consumers, which is why a worker joins one only when it has no consumer at all
    other_connection, other_channel = _channel(vhost)
    declared = other_channel.queue_declare("partition", passive=True).method
    assert declared.consumer_count == 1
    if exclusive:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            _hold(other_channel, exclusive)
    other_connection.close()

    # And when the holder dies with a1 and a2 unacknowledged and a3 arrives meanwhile,
    # the next holder sees a1, a2, a3, in that order
    connection.close()
    connection, channel = _channel(vhost)
    channel.basic_publish("", "partition", b"a3", mandatory=True)
    wait_until(
        lambda: channel.queue_declare("partition", passive=True).method.consumer_count == 0,
        timeout=10,
        what="the dead holder's consumer to go",
    )
    assert _take(connection, _hold(channel, exclusive), 3) == [b"a1", b"a2", b"a3"]
    connection.close()


@pytest.fixture(scope="module")
def quorum_stack(running_services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(tmp_path_factory.mktemp("quorum"), ["--workers", "0"], QUEUE_TYPE="quorum") as stack:
        yield stack


def test_quorum_lanes_run_in_order_and_survive_a_killed_worker(quorum_stack: Stack) -> None:
    workers = Workers(quorum_stack.env)
    try:
        # Given a quorum lane whose head is running on the only worker
        user = quorum_stack.api.new_user("quorum")
        ids = [user.enqueue("sleep", {"ms": 2000})] + [user.enqueue("echo", {"n": n}) for n in range(3)]
        types = {q["name"]: q.get("type") for q in quorum_stack.queues() if q["name"].startswith("lanes.partition.")}
        assert set(types.values()) == {"quorum"} and len(types) == Settings().lane_partitions
        (victim,) = workers.start(1, WORKER_SLOTS="1")
        wait_until(lambda: user.request(ids[0])["status"] == "processing", timeout=30, what="the head to start")

        # When the worker is killed mid-request and another takes over
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        workers.start(1, WORKER_SLOTS="1")

        # Then the head runs again first, once, and the rest follow in order
        records = user.wait_terminal(ids, timeout=60)
        assert [r["status"] for r in records] == ["done"] * 4
        assert [r["attempts"] for r in records] == [2, 1, 1, 1]
        assert ordering_violations(records) == []
        assert set(outcome_counts(quorum_stack.database, ids).values()) == {1}
    finally:
        workers.stop_all()
