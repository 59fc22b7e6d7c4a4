"""RabbitMQ connections and the queue names Lanes uses. pika errors stop here.

pika's BlockingConnection must never be shared between threads or greenlets, so
HTTP functions borrow whole connections from a small pool, one borrower at a time.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from lanes.errors import BrokerError
from lanes.settings import Settings

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json")
TRANSIENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Transient)


def persistent_since(accepted_at: float) -> pika.BasicProperties:
    """PERSISTENT, stamped with when the request was accepted: RabbitMQ then reports the age of
    each lane's head (`head_message_timestamp`), which the lane gauges read instead of the database."""
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json", timestamp=int(accepted_at)
    )


# Half the heartbeat interval: a pooled connection idle longer is replaced, not lent.
MAX_IDLE_SECONDS = 15.0

# AMQP reply codes that close a channel but leave the connection usable.
NOT_FOUND, RESOURCE_LOCKED, PRECONDITION_FAILED = 404, 405, 406

# A quorum queue returns a nacked or requeued message to its *back* unless the queue
# has a delivery limit (RabbitMQ's quorum queue guide, "Repeated Requeues"); with one
# it goes back near the head, which per-user FIFO needs (docs/design.md 4.3). The
# worker gives a request up after MAX_ATTEMPTS, so this limit is only a backstop
# against a broker-side drop: it must stay far above any real redelivery count.
QUORUM_DELIVERY_LIMIT = 10_000


@dataclass(frozen=True)
class QueueNames:
    """Every queue name in one place, all under the configured prefix."""

    prefix: str
    queue_type: str = "classic"

    @classmethod
    def of(cls, settings: Settings) -> QueueNames:
        return cls(settings.queue_prefix, settings.queue_type)

    @property
    def ready(self) -> str:
        """Wake-up tokens of lanes that have work and no active holder."""
        return f"{self.prefix}.ready"

    def lane(self, user_id: str) -> str:
        return f"{self.prefix}.lane.{user_id}"

    def bell(self, user_id: str) -> str:
        """A queue of at most one message: 'a wake-up token for this lane is on its way'."""
        return f"{self.prefix}.bell.{user_id}"

    def lock(self, user_id: str) -> str:
        """An exclusive queue whose existence means 'a worker is running this lane'."""
        return f"{self.prefix}.lock.{user_id}"

    def lane_owner(self, queue_name: str) -> str | None:
        start = f"{self.prefix}.lane."
        return queue_name[len(start) :] if queue_name.startswith(start) else None


def connection_parameters(settings: Settings) -> pika.URLParameters:
    params = pika.URLParameters(settings.rabbitmq_url)
    params.heartbeat = 30
    params.blocked_connection_timeout = 10
    params.connection_attempts = 1
    params.socket_timeout = 3
    params.stack_timeout = 5
    params.client_properties = {"connection_name": "lanes"}
    return params


def open_connection(settings: Settings) -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(connection_parameters(settings))
    except (pika.exceptions.AMQPError, OSError) as error:
        raise BrokerError(f"cannot connect to RabbitMQ: {error!r}") from None


def lane_arguments(settings: Settings) -> dict[str, Any]:
    """Lane queue arguments: RabbitMQ itself refuses publishes beyond the depth limit, and
    deletes a lane that nobody declared, consumed or read for the idle period."""
    arguments: dict[str, Any] = {
        "x-max-length": settings.lane_depth_limit,
        "x-overflow": "reject-publish",
        "x-expires": settings.lane_idle_seconds * 1000,
        "x-queue-type": settings.queue_type,
    }
    if settings.queue_type == "quorum":
        arguments["x-delivery-limit"] = QUORUM_DELIVERY_LIMIT
    return arguments


def bell_arguments(settings: Settings) -> dict[str, Any]:
    """A bell holds one ring; it is a hint (losing it costs a spare token), so it stays a
    light classic queue whatever QUEUE_TYPE is, and expires with its lane."""
    return {
        "x-max-length": 1,
        "x-overflow": "reject-publish",
        "x-expires": settings.lane_idle_seconds * 1000,
        "x-queue-type": "classic",
    }


def declare_ready_queue(channel: BlockingChannel, names: QueueNames) -> None:
    arguments: dict[str, Any] = {"x-queue-type": names.queue_type}
    if names.queue_type == "quorum":
        arguments["x-delivery-limit"] = QUORUM_DELIVERY_LIMIT
    channel.queue_declare(names.ready, durable=True, arguments=arguments)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("message body is not an object")
    return value


class ChannelPool:
    """Confirm-mode channels, each on its own connection, lent to one borrower at a time."""

    def __init__(self, settings: Settings, max_idle: int = 16) -> None:
        self._settings = settings
        self._idle: queue.LifoQueue[pika.BlockingConnection] = queue.LifoQueue(maxsize=max_idle)
        self._channels: dict[int, BlockingChannel] = {}
        self._returned_at: dict[int, float] = {}

    @contextmanager
    def channel(self) -> Iterator[BlockingChannel]:
        """Borrow a channel; a connection that failed is closed instead of returned."""
        connection = self._take()
        try:
            channel = self._channel_of(connection)
            yield channel
        except (pika.exceptions.AMQPError, OSError) as error:
            _close_quietly(connection)
            self._channels.pop(id(connection), None)
            raise BrokerError(f"RabbitMQ failed: {error!r}") from None
        except BaseException:
            _close_quietly(connection)
            self._channels.pop(id(connection), None)
            raise
        else:
            self._give_back(connection)

    def reopen(self, channel: BlockingChannel) -> BlockingChannel:
        """A fresh confirm channel on the same connection, after the broker closed one."""
        connection = channel.connection
        fresh = connection.channel()
        fresh.confirm_delivery()
        self._channels[id(connection)] = fresh
        return fresh

    def close(self) -> None:
        while True:
            try:
                _close_quietly(self._idle.get_nowait())
            except queue.Empty:
                return

    def _take(self) -> pika.BlockingConnection:
        while True:
            try:
                connection = self._idle.get_nowait()
            except queue.Empty:
                return open_connection(self._settings)
            idle = time.monotonic() - self._returned_at.pop(id(connection), 0.0)
            # An idle pooled connection answers no heartbeats, so the broker closes it
            # after two missed ones: never lend one that may be past that point.
            if idle < MAX_IDLE_SECONDS and self._alive(connection):
                return connection
            self._channels.pop(id(connection), None)
            _close_quietly(connection)

    @staticmethod
    def _alive(connection: pika.BlockingConnection) -> bool:
        try:
            connection.process_data_events(time_limit=0)
        except Exception:  # noqa: BLE001 - a dead connection fails in many ways (pika even raises ValueError)
            return False
        return bool(connection.is_open)

    def _channel_of(self, connection: pika.BlockingConnection) -> BlockingChannel:
        channel = self._channels.get(id(connection))
        if channel is None or not channel.is_open:
            channel = connection.channel()
            channel.confirm_delivery()
            self._channels[id(connection)] = channel
        return channel

    def _give_back(self, connection: pika.BlockingConnection) -> None:
        self._returned_at[id(connection)] = time.monotonic()
        try:
            self._idle.put_nowait(connection)
        except queue.Full:
            self._channels.pop(id(connection), None)
            self._returned_at.pop(id(connection), None)
            _close_quietly(connection)


def _close_quietly(connection: pika.BlockingConnection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail in many ways
        pass


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn pika's failures into BrokerError for code that holds its own connection."""
    try:
        yield
    except (pika.exceptions.AMQPError, OSError) as error:
        raise BrokerError(f"RabbitMQ failed: {error!r}") from None
