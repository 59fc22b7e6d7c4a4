"""Quorum-queue lanes keep the per-user FIFO that docs/design.md 4.3 argues for classic ones."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from deploy import services
from lanes.broker import lane_arguments
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
    """Consume the lane as a holder does (one unacknowledged message); deliveries land in the list."""
    deliveries: list[tuple[int, bytes]] = []
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(
        "lane", lambda _c, method, _p, body: deliveries.append((method.delivery_tag, body)), exclusive=exclusive
    )
    return deliveries


def _next(connection: pika.BlockingConnection, deliveries: list[tuple[int, bytes]]) -> tuple[int, bytes]:
    wait_until(lambda: connection.process_data_events(0.1) or deliveries, timeout=10, what="a delivery")
    return deliveries.pop(0)


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_requeued_or_abandoned_head_comes_back_first(vhost: str, queue_type: str) -> None:
    # Given a lane declared as Lanes declares it, holding A, B, C, and a holder consuming it
    arguments = lane_arguments(Settings.from_env({"QUEUE_TYPE": queue_type}))
    exclusive = queue_type == "classic"
    connection, channel = _channel(vhost)
    channel.queue_declare("lane", durable=True, arguments=arguments)
    for body in (b"A", b"B", b"C"):
        channel.basic_publish("", "lane", body, mandatory=True)
    deliveries = _hold(channel, exclusive)

    # When the holder nacks the head back (what the worker does on a database error)
    tag, body = _next(connection, deliveries)
    assert body == b"A"
    channel.basic_nack(tag, requeue=True)
    # Then A is still the head
    _, body = _next(connection, deliveries)
    assert body == b"A"

    # And while the holder lives nobody else gets the lane: on a classic lane a second
    # exclusive consumer is refused; on a quorum lane (single active consumer) it is
    # accepted but receives nothing
    other_connection, other_channel = _channel(vhost)
    if exclusive:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            _hold(other_channel, exclusive)
    else:
        standby = _hold(other_channel, exclusive)
        other_connection.process_data_events(0.5)
        assert standby == [], "a second consumer of a quorum lane must stay inactive"
    other_connection.close()

    # And when the holder dies with A unacknowledged, the next holder sees A first
    connection.close()
    connection, channel = _channel(vhost)
    _, body = _next(connection, _hold(channel, exclusive))
    assert body == b"A"
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
        types = {q["name"]: q.get("type") for q in quorum_stack.queues()}
        assert "quorum" == types["lanes.ready"] == next(t for n, t in types.items() if n.startswith("lanes.lane."))
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
