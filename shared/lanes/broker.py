"""RabbitMQ for Lanes: connections, queue names and arguments, and the few operations the
lane protocol needs. pika is imported here and nowhere else; its errors stop here.

Callers see plain values and four outcomes besides success: `QueueMissing` (404),
`QueueInUse` (another connection holds the queue exclusively), `Refused` (the broker
nacked a publish: a full queue) and `BrokerError` (anything else: the connection is
unusable). After a 404, 403 or 405 the broker closes the channel; the `Channel`
wrapper opens a fresh one on the same connection, so the caller can go on.

pika's BlockingConnection must never be shared between threads or greenlets, so HTTP
functions borrow whole connections from a small pool, one borrower at a time, and each
worker slot owns its own `Session`.
"""

from __future__ import annotations

import functools
import itertools
import json
import queue
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from lanes.errors import BrokerError
from lanes.settings import Settings

# Half the heartbeat interval: a pooled connection idle longer is replaced, not lent.
MAX_IDLE_SECONDS = 15.0

# AMQP reply codes that close a channel but leave the connection usable.
ACCESS_REFUSED, NOT_FOUND, RESOURCE_LOCKED, PRECONDITION_FAILED = 403, 404, 405, 406

# A quorum queue returns a nacked or requeued message to its *back* unless the queue
# has a delivery limit (RabbitMQ's quorum queue guide, "Repeated Requeues"); with one
# it goes back to the head, which per-user FIFO needs (docs/design.md). The worker
# gives a request up after MAX_ATTEMPTS, so this limit is only a backstop against a
# broker-side drop: it must stay far above any real redelivery count.
QUORUM_DELIVERY_LIMIT = 10_000


class QueueMissing(BrokerError):
    """The queue does not exist (expired, or never declared)."""


class QueueInUse(BrokerError):
    """Another connection holds the queue exclusively (a lane's consumer: the lane is held)."""


class ArgumentsDiffer(BrokerError):
    """The queue exists with other arguments (settings changed since it was declared)."""


class Refused(Exception):
    """The broker refused a publish (`reject-publish`: the queue is at its length limit)."""


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
        """Wake-up tokens: one per lane that has work (waiting for a slot, or held by one)."""
        return f"{self.prefix}.ready"

    @property
    def sweeper(self) -> str:
        """Whoever consumes this queue (exclusively) is the one sweeper of the deployment."""
        return f"{self.prefix}.sweeper"

    def lane(self, user_id: str) -> str:
        return f"{self.prefix}.lane.{user_id}"

    def bell(self, user_id: str) -> str:
        """A queue of at most one message: 'this lane has a token or a holder'."""
        return f"{self.prefix}.bell.{user_id}"

    def lane_owner(self, queue_name: str) -> str | None:
        start = f"{self.prefix}.lane."
        return queue_name[len(start) :] if queue_name.startswith(start) else None

    def partition(self, index: int) -> str:
        """One of the fixed queues every lane is hashed to (lanes.partitions)."""
        return f"{self.prefix}.partition.{index}"

    @property
    def workers(self) -> str:
        """Every worker process consumes this empty queue: its consumer count is how many run."""
        return f"{self.prefix}.workers"

    @property
    def settled(self) -> str:
        """Fanout exchange: the request ids workers settled, for the enqueue processes' ledgers."""
        return f"{self.prefix}.settled"


@dataclass(frozen=True)
class Counts:
    """A queue's counts at one moment: messages ready for delivery, and consumers."""

    ready: int
    consumers: int


@dataclass(frozen=True)
class Delivery:
    """A message delivered to a consumer, waiting for its ack or nack."""

    tag: int
    body: bytes
    place: int = 0  # which of a slot's lane channels it came on


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


def check_connection(settings: Settings) -> None:
    """Open and close a connection: the readiness probe's question."""
    open_connection(settings).close()


def lane_arguments(settings: Settings) -> dict[str, Any]:
    """Lane queue arguments: RabbitMQ itself refuses publishes beyond the depth limit, and
    deletes a lane that nobody declared, consumed or read for the idle period.

    A quorum queue does not enforce exclusive consumers, so a quorum lane is a
    single-active-consumer queue instead: a second consumer waits inactive and
    the holder notices it (docs/design.md, "Holding a lane")."""
    arguments: dict[str, Any] = {
        "x-max-length": settings.lane_depth_limit,
        "x-overflow": "reject-publish",
        "x-expires": settings.lane_idle_seconds * 1000,
        "x-queue-type": settings.queue_type,
    }
    if settings.queue_type == "quorum":
        arguments["x-delivery-limit"] = QUORUM_DELIVERY_LIMIT
        arguments["x-single-active-consumer"] = True
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


def partition_arguments(settings: Settings) -> dict[str, Any]:
    """A partition lives for ever (no expiry: it is one of a fixed few) and has no length
    limit: a lane's depth is counted per lane (lanes.partitions.LaneLedger)."""
    arguments: dict[str, Any] = {"x-queue-type": settings.queue_type}
    if settings.queue_type == "quorum":
        arguments["x-delivery-limit"] = QUORUM_DELIVERY_LIMIT
    return arguments


def ready_arguments(names: QueueNames) -> dict[str, Any]:
    arguments: dict[str, Any] = {"x-queue-type": names.queue_type}
    if names.queue_type == "quorum":
        arguments["x-delivery-limit"] = QUORUM_DELIVERY_LIMIT
    return arguments


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("message body is not an object")
    return value


def _persistent(timestamp: float | None) -> pika.BasicProperties:
    """Persistent; stamped with when the request was accepted, so RabbitMQ reports the age of
    each lane's head (`head_message_timestamp`) and the lane gauges need no database scan."""
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        content_type="application/json",
        timestamp=None if timestamp is None else int(timestamp),
    )


_TRANSIENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Transient)


class Channel:
    """A confirm-mode channel that survives the broker closing it after a refused operation."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self._connection = connection
        self._channel: BlockingChannel | None = None
        self._unconfirmed: BlockingChannel | None = None

    @property
    def raw(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except pika.exceptions.ChannelClosedByBroker as error:
            self._channel = None
            if error.reply_code == NOT_FOUND:
                raise QueueMissing(error.reply_text) from None
            if error.reply_code in (ACCESS_REFUSED, RESOURCE_LOCKED):
                raise QueueInUse(error.reply_text) from None
            if error.reply_code == PRECONDITION_FAILED:
                raise ArgumentsDiffer(error.reply_text) from None
            raise BrokerError(f"RabbitMQ closed a channel: {error!r}") from None
        except pika.exceptions.NackError:
            raise Refused from None
        except pika.exceptions.UnroutableError:
            raise QueueMissing("unroutable: the queue does not exist") from None
        except (pika.exceptions.AMQPError, OSError) as error:
            raise BrokerError(f"RabbitMQ failed: {error!r}") from None

    def declare(self, name: str, arguments: dict[str, Any]) -> Counts:
        """Declare a durable queue (restarting its idle timer) and return its counts.

        A queue that exists with other arguments (settings changed since) is used as it is."""
        try:
            with self._translated():
                return _counts(self.raw.queue_declare(name, durable=True, arguments=arguments))
        except ArgumentsDiffer:
            return self.counts(name)

    def counts(self, name: str) -> Counts:
        """A queue's counts (a passive declare); QueueMissing when it does not exist."""
        with self._translated():
            return _counts(self.raw.queue_declare(name, passive=True))

    def publish(self, queue_name: str, body: bytes, *, persistent: bool = True, timestamp: float | None = None) -> None:
        """Publish and wait for the broker's confirm: Refused (full) or QueueMissing (unroutable)."""
        properties = _persistent(timestamp) if persistent else _TRANSIENT
        with self._translated():
            self.raw.basic_publish("", queue_name, body, properties, mandatory=True)

    def send(self, queue_name: str, body: bytes) -> None:
        """Publish a transient hint without waiting for the broker: no confirm, no return.
        A hint lost this way must be one that something else repairs."""
        with self._translated():
            if self._unconfirmed is None or not self._unconfirmed.is_open:
                self._unconfirmed = self._connection.channel()
            self._unconfirmed.basic_publish("", queue_name, body, _TRANSIENT)

    def purge(self, name: str) -> None:
        with self._translated():
            self.raw.queue_purge(name)


def _counts(declared: Any) -> Counts:
    return Counts(ready=int(declared.method.message_count), consumers=int(declared.method.consumer_count))


class ChannelPool:
    """Confirm-mode channels, each on its own connection, lent to one borrower at a time.

    `max_idle` must cover the borrowers a process serves at once: a connection given back
    to a full pool is closed, and opening one costs the broker and this process several
    milliseconds of CPU (with 16, an enqueue process serving 32 clients opened a
    connection every 13 requests)."""

    def __init__(self, settings: Settings, max_idle: int = 64) -> None:
        self._settings = settings
        self._idle: queue.LifoQueue[tuple[pika.BlockingConnection, Channel, float]] = queue.LifoQueue(maxsize=max_idle)

    @contextmanager
    def channel(self) -> Iterator[Channel]:
        """Borrow a channel; a connection that failed is closed instead of returned."""
        connection, channel = self._take()
        try:
            yield channel
        except (QueueMissing, QueueInUse, ArgumentsDiffer, Refused):
            self._give_back(connection, channel)  # only a channel was closed, and Channel reopens it
            raise
        except BaseException:
            _close_quietly(connection)
            raise
        self._give_back(connection, channel)

    def close(self) -> None:
        while True:
            try:
                _close_quietly(self._idle.get_nowait()[0])
            except queue.Empty:
                return

    def _take(self) -> tuple[pika.BlockingConnection, Channel]:
        while True:
            try:
                connection, channel, returned_at = self._idle.get_nowait()
            except queue.Empty:
                connection = open_connection(self._settings)
                return connection, Channel(connection)
            # An idle pooled connection answers no heartbeats, so the broker closes it
            # after two missed ones: never lend one that may be past that point.
            if time.monotonic() - returned_at < MAX_IDLE_SECONDS and _alive(connection):
                return connection, channel
            _close_quietly(connection)

    def _give_back(self, connection: pika.BlockingConnection, channel: Channel) -> None:
        try:
            self._idle.put_nowait((connection, channel, time.monotonic()))
        except queue.Full:
            _close_quietly(connection)


def _alive(connection: pika.BlockingConnection) -> bool:
    try:
        connection.process_data_events(time_limit=0)
    except Exception:  # noqa: BLE001 - a dead connection fails in many ways (pika even raises ValueError)
        return False
    return bool(connection.is_open)


def _close_quietly(connection: pika.BlockingConnection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail in many ways
        pass


class Session:
    """One worker slot's connection: a channel that takes wake-up tokens, a control channel
    (tokens out, bells, counts), and one channel per lane the slot holds, with every
    delivery buffered until the slot asks for it.

    A lane has a channel of its own because a refused exclusive consume closes the
    channel it was tried on, and with it every other consumer of that channel.

    Nothing here polls: `wait` blocks in pika's I/O loop until a frame arrives, the
    time is up, or another thread calls `wake` (a handler that finished)."""

    def __init__(self, settings: Settings, names: QueueNames) -> None:
        self._connection = open_connection(settings)
        self._names = names
        self.tokens: deque[Delivery] = deque()
        self.lane_deliveries: deque[Delivery] = deque()
        self.channel = Channel(self._connection)
        self._lanes: dict[int, BlockingChannel] = {}
        self._consumers: dict[int, str] = {}
        with self.channel._translated():
            self._token_channel = self._connection.channel()
            self._token_channel.queue_declare(names.ready, durable=True, arguments=ready_arguments(names))

    # -- tokens -------------------------------------------------------------------

    def listen_for_tokens(self, prefetch: int) -> None:
        """Take up to `prefetch` tokens at a time: as many lanes as the slot may hold."""
        with self.channel._translated():
            self._token_channel.basic_qos(prefetch_count=prefetch)
            self._token_channel.basic_consume(self._names.ready, self._on_token)

    def stop_listening_for_tokens(self) -> None:
        """Cancel the token consumer; tokens delivered but not yet taken go back to the queue."""
        with self.channel._translated():
            for tag in list(self._token_channel.consumer_tags):
                self._token_channel.basic_cancel(tag)
            while self.tokens:
                self._token_channel.basic_nack(self.tokens.popleft().tag, requeue=True)

    def ack_token(self, token: Delivery) -> None:
        with self.channel._translated():
            self._token_channel.basic_ack(token.tag)

    def _on_token(self, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        self.tokens.append(Delivery(method.delivery_tag, body))

    # -- holding lanes -------------------------------------------------------------

    def hold(self, place: int, lane: str, exclusive: bool) -> None:
        """Consume the lane on channel `place`, one unacknowledged message at a time.

        `exclusive`: the broker refuses a second consumer (QueueInUse). Without it
        (quorum lanes, single active consumer) a second consumer is accepted but
        receives nothing while the first lives."""
        with self._lane_translated(place):
            channel = self._lane_channel(place)
            self._consumers[place] = channel.basic_consume(
                lane, functools.partial(self._on_lane_message, place), exclusive=exclusive
            )

    def release(self, place: int) -> None:
        """Stop consuming the lane held on `place`; a message delivered but not run goes back
        to the head of its lane."""
        with self._lane_translated(place):
            channel = self._lane_channel(place)
            tag = self._consumers.pop(place, None)
            if tag is not None:
                channel.basic_cancel(tag)
            for delivery in [d for d in self.lane_deliveries if d.place == place]:
                self.lane_deliveries.remove(delivery)
                channel.basic_nack(delivery.tag, requeue=True)

    def ack(self, delivery: Delivery) -> None:
        with self._lane_translated(delivery.place):
            self._lane_channel(delivery.place).basic_ack(delivery.tag)

    def nack(self, delivery: Delivery) -> None:
        """Put a message back at the head of its lane."""
        with self._lane_translated(delivery.place):
            self._lane_channel(delivery.place).basic_nack(delivery.tag, requeue=True)

    def _lane_channel(self, place: int) -> BlockingChannel:
        channel = self._lanes.get(place)
        if channel is None or not channel.is_open:
            channel = self._connection.channel()
            channel.basic_qos(prefetch_count=1)
            self._lanes[place] = channel
        return channel

    @contextmanager
    def _lane_translated(self, place: int) -> Iterator[None]:
        try:
            with self.channel._translated():
                yield
        except (QueueMissing, QueueInUse, ArgumentsDiffer):
            self._lanes.pop(place, None)  # the broker closed that channel
            self._consumers.pop(place, None)
            raise

    def _on_lane_message(self, place: int, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        self.lane_deliveries.append(Delivery(method.delivery_tag, body, place))

    # -- the I/O loop -------------------------------------------------------------------

    def wait(self, seconds: float, until: Callable[[], bool]) -> None:
        """Serve the connection (heartbeats, deliveries) until `until()` or `seconds` pass."""
        deadline = time.monotonic() + seconds
        with self.channel._translated():
            self._connection.process_data_events(time_limit=0)  # dispatch what arrived meanwhile
            while not until() and (left := deadline - time.monotonic()) > 0:
                self._connection.process_data_events(time_limit=left)

    def wake(self) -> None:
        """From any thread: make a `wait` in progress return and look at its condition."""
        try:
            self._connection.add_callback_threadsafe(_nothing)
        except Exception:  # noqa: BLE001 - a closed connection: the waiter finds out itself
            pass

    def close(self) -> None:
        _close_quietly(self._connection)


def _nothing() -> None:
    pass


# Channel incarnations, unique in the process: a tag is only acknowledged on its own.
_GENERATIONS = itertools.count(1)


@dataclass(frozen=True)
class PartitionDelivery:
    """A message of a partition, delivered on one incarnation of that partition's channel:
    its tag means nothing on any other (a partition let go and taken again)."""

    partition: int
    generation: int
    tag: int
    body: bytes


class PartitionSession:
    """A worker process's one connection: a channel per partition it holds, consuming with
    no prefetch limit (every lane in the partition is visible, so a newcomer behind a deep
    lane is seen at once), plus the roster and the settled-feed channel.

    Used from one thread only (pika's rule); handler threads reach it through `wake`."""

    def __init__(self, settings: Settings, names: QueueNames) -> None:
        self._settings = settings
        self._names = names
        self._connection = open_connection(settings)
        self._exclusive = names.queue_type == "classic"
        self._partitions: dict[int, tuple[BlockingChannel, int]] = {}
        self.deliveries: deque[PartitionDelivery] = deque()
        self.control = Channel(self._connection)
        with self.control._translated():
            self._feed = self._connection.channel()
            self._feed.exchange_declare(names.settled, "fanout", durable=True)
            roster = self._connection.channel()
            roster.queue_declare(names.workers, auto_delete=True, arguments={"x-queue-type": "classic"})
            roster.basic_consume(names.workers, lambda *_: None)

    @property
    def held(self) -> list[int]:
        return sorted(self._partitions)

    def workers(self) -> int:
        """How many worker processes run now (each consumes the roster once)."""
        return max(1, self.control.counts(self._names.workers).consumers)

    def take(self, index: int) -> bool:
        """Consume a partition, exclusively; False when another process holds it.

        Quorum queues do not enforce exclusive consumers, so a quorum partition is only
        joined when it has no consumer at all; the broker removes a dead holder's consumer
        in the same step that returns its unacknowledged messages."""
        name = self._names.partition(index)
        try:
            if self.control.counts(name).consumers > 0:
                return False  # asking is cheaper than a refused consume, which costs a channel
        except QueueMissing:
            pass
        generation = next(_GENERATIONS)
        try:
            with self.control._translated():
                channel = self._connection.channel()
                channel.queue_declare(name, durable=True, arguments=partition_arguments(self._settings))
                channel.basic_qos(prefetch_count=0)
                channel.basic_consume(
                    name, functools.partial(self._on_message, index, generation), exclusive=self._exclusive
                )
        except QueueInUse:
            return False
        self._partitions[index] = (channel, generation)
        return True

    def let_go(self, index: int) -> None:
        """Close the partition's channel: the broker puts every message delivered on it and
        not acknowledged back at the head, in order, and frees the partition, in one step."""
        channel, _generation = self._partitions.pop(index, (None, 0))
        if channel is not None and channel.is_open:
            with self.control._translated():
                channel.close()

    def forget_closed(self) -> list[tuple[int, int]]:
        """Partitions whose channel the broker closed (it gave their messages back already),
        as (partition, generation); they are no longer held."""
        closed = [(index, generation) for index, (channel, generation) in self._partitions.items() if channel.is_closed]
        for index, _generation in closed:
            del self._partitions[index]
        return closed

    def ack(self, delivery: PartitionDelivery) -> bool:
        """Acknowledge on the channel it came on; False if that channel is gone (the broker
        gave the message back, and its next holder finds the outcome recorded)."""
        channel, generation = self._partitions.get(delivery.partition, (None, 0))
        if channel is None or generation != delivery.generation or not channel.is_open:
            return False
        with self.control._translated():
            channel.basic_ack(delivery.tag)
        return True

    def announce_settled(self, body: bytes) -> None:
        """A hint for the enqueue processes' ledgers: transient and unconfirmed."""
        with self.control._translated():
            self._feed.basic_publish(self._names.settled, "", body, _TRANSIENT)

    def _on_message(self, index: int, generation: int, _channel: Any, method: Any, _props: Any, body: bytes) -> None:
        self.deliveries.append(PartitionDelivery(index, generation, method.delivery_tag, body))

    def wait(self, seconds: float, until: Callable[[], bool]) -> None:
        """Serve the connection until `until()` or `seconds` pass (see Session.wait)."""
        deadline = time.monotonic() + seconds
        with self.control._translated():
            self._connection.process_data_events(time_limit=0)
            while not until() and (left := deadline - time.monotonic()) > 0:
                self._connection.process_data_events(time_limit=left)

    def wake(self) -> None:
        try:
            self._connection.add_callback_threadsafe(_nothing)
        except Exception:  # noqa: BLE001 - a closed connection: the waiter finds out itself
            pass

    def close(self) -> None:
        _close_quietly(self._connection)


class SettledFeed:
    """The enqueue side of the settled feed: a private queue bound to the fanout, read in a
    background thread (a greenlet under gevent) that hands each body to `on_body`."""

    def __init__(self, settings: Settings, names: QueueNames, on_body: Callable[[bytes], None]) -> None:
        self._settings = settings
        self._names = names
        self._on_body = on_body
        self._stop = False

    def run(self) -> None:
        failures = 0
        while not self._stop:
            try:
                self._listen()
            except Exception:  # noqa: BLE001 - any failure: reconnect after a pause
                failures += 1
                time.sleep(min(10.0, 0.25 * 2 ** min(failures, 6)))

    def _listen(self) -> None:
        connection = open_connection(self._settings)
        try:
            channel = connection.channel()
            channel.exchange_declare(self._names.settled, "fanout", durable=True)
            queue_name = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue_name, self._names.settled)
            channel.basic_consume(queue_name, lambda _c, _m, _p, body: self._on_body(body), auto_ack=True)
            while not self._stop:
                connection.process_data_events(time_limit=1.0)
        finally:
            _close_quietly(connection)

    def stop(self) -> None:
        self._stop = True


class Leadership:
    """Leader election by exclusive consumer: of all the processes that try, the broker lets
    one consume `queue_name`, and hands it to the next one when that connection dies."""

    def __init__(self, settings: Settings, queue_name: str) -> None:
        self._settings = settings
        self._queue = queue_name
        self._connection: pika.BlockingConnection | None = None

    def held(self) -> bool:
        """True while this process leads; tries to become the leader when it does not."""
        try:
            if self._connection is not None and self._connection.is_open:
                self._connection.process_data_events(time_limit=0)  # heartbeats
                return True
            self._connection = open_connection(self._settings)
            channel = self._connection.channel()
            # Gone with the last candidate: it holds nothing, it only elects.
            channel.queue_declare(self._queue, auto_delete=True, arguments={"x-queue-type": "classic"})
            channel.basic_consume(self._queue, lambda *_: None, exclusive=True)
            return True
        except (BrokerError, pika.exceptions.AMQPError, OSError):
            self.resign()
            return False

    def resign(self) -> None:
        if self._connection is not None:
            _close_quietly(self._connection)
        self._connection = None
