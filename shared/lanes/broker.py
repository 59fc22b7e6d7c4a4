"""RabbitMQ for Lanes: connections, queue names and arguments, and the few operations the
lane protocol needs. pika is imported here and nowhere else; its errors stop here.

Callers see plain values and four outcomes besides success: `QueueMissing` (404),
`QueueInUse` (another connection holds the queue exclusively), `Refused` (the broker
nacked a publish) and `BrokerError` (anything else: the connection is unusable). After
a 404, 403 or 405 the broker closes the channel; the `Channel` wrapper opens a fresh
one on the same connection, so the caller can go on.

pika's BlockingConnection must never be shared between threads or greenlets, so HTTP
functions borrow whole connections from a small pool, one borrower at a time, and a
worker process's one `PartitionSession` is used by its dispatcher thread alone.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from lanes.errors import BrokerError, retry_delay
from lanes.settings import Settings

# The heartbeat timeout pika asks for. RabbitMQ closes a connection it has heard nothing
# on for two to three of these: a worker frozen behind a relay, with 30 s, lost its
# partitions after 89 s (3.10.8).
HEARTBEAT_SECONDS = 30
# A worker's connection, whose partitions wait for it when it goes silent (20-30 s). Its
# fencing lease lapses well before (lanes.lane.fencing.LEASE_SILENCE_SECONDS).
WORKER_HEARTBEAT_SECONDS = 10
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
    """Another connection holds the queue exclusively (a partition's consumer: it is held)."""


class ArgumentsDiffer(BrokerError):
    """The queue exists with other arguments (settings changed since it was declared)."""


class Refused(Exception):
    """The broker nacked a publish (a queue at a length limit, or an internal failure)."""


@dataclass(frozen=True)
class QueueNames:
    """Every queue name in one place, all under the configured prefix."""

    prefix: str
    queue_type: str = "classic"

    @classmethod
    def of(cls, settings: Settings) -> QueueNames:
        return cls(settings.queue_prefix, settings.queue_type)

    @property
    def sweeper(self) -> str:
        """Whoever consumes this queue (exclusively) is the one sweeper of the deployment."""
        return f"{self.prefix}.sweeper"

    def partition(self, index: int) -> str:
        """One of the fixed queues every lane is hashed to (lanes.lane)."""
        return f"{self.prefix}.partition.{index}"

    @property
    def workers(self) -> str:
        """Every worker process consumes this empty queue: its consumer count is how many run."""
        return f"{self.prefix}.workers"

    @property
    def busy_workers(self) -> str:
        """Consumed by each worker process that holds work: the autoscaler sees it at once."""
        return f"{self.prefix}.workers.busy"

    @property
    def waiting_workers(self) -> str:
        """Consumed by each worker process in which lanes wait for a free slot."""
        return f"{self.prefix}.workers.waiting"

    @property
    def spare_workers(self) -> str:
        """Consumed by each worker process with a free slot and no lane waiting for one."""
        return f"{self.prefix}.workers.spare"

    @property
    def hungry_workers(self) -> str:
        """Consumed by each worker process with a free slot that holds less than its share."""
        return f"{self.prefix}.workers.hungry"

    @property
    def worker_states(self) -> tuple[str, ...]:
        """The queues a worker process shows its state on, as a consumer of each that holds."""
        return (self.busy_workers, self.waiting_workers, self.spare_workers, self.hungry_workers)

    @property
    def settled(self) -> str:
        """Fanout exchange: the request ids workers settled whose message names no ledger
        (published by an enqueue process of an earlier version), for every ledger."""
        return f"{self.prefix}.settled"

    @property
    def ledgers(self) -> str:
        """Direct exchange: the request ids workers settled, each batch routed to the one
        enqueue process whose ledger counts them (lanes.lane.admission)."""
        return f"{self.prefix}.ledgers"

    @property
    def undeliverable(self) -> str:
        """The exchange, and the queue bound to it, that partitions and overflow queues
        dead-letter to by a policy the broker's administrator sets (deploy.services): what
        the broker will not deliver again (a quorum queue's delivery limit) waits there for
        an operator, with an alert, instead of being dropped."""
        return f"{self.prefix}.undeliverable"

    @property
    def overflow_exchange(self) -> str:
        """Where a worker spills deep lanes' requests, routed by lane to their overflow
        queues: a worker may publish there and never into a partition."""
        return f"{self.prefix}.overflow"

    def overflow(self, lane: str) -> str:
        """A deep lane's requests beyond what its worker holds (lanes.lane.overflow)."""
        return f"{self.prefix}.overflow.{lane}"


@dataclass(frozen=True)
class Counts:
    """A queue's counts at one moment: messages ready for delivery, and consumers."""

    ready: int
    consumers: int


def connection_parameters(settings: Settings, heartbeat: int = HEARTBEAT_SECONDS) -> list[pika.URLParameters]:
    """One set per node RABBITMQ_URL names; pika tries them in turn until one connects.
    Each connection starts at a random node, so a fleet spreads over the cluster."""
    urls = settings.rabbitmq_urls
    start = random.randrange(len(urls))
    return [_parameters(url, heartbeat) for url in urls[start:] + urls[:start]]


def _parameters(url: str, heartbeat: int) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = 10
    params.connection_attempts = 1
    params.socket_timeout = 3
    params.stack_timeout = 5
    # Named with the process id, so that the management UI (and a test) can tell which
    # process holds a partition.
    params.client_properties = {"connection_name": f"lanes pid {os.getpid()}"}
    return params


def open_connection(settings: Settings, heartbeat: int = HEARTBEAT_SECONDS) -> pika.BlockingConnection:
    """A connection to the first node of RABBITMQ_URL's that answers (failover)."""
    try:
        return pika.BlockingConnection(connection_parameters(settings, heartbeat))
    except (pika.exceptions.AMQPError, OSError) as error:
        raise BrokerError(f"cannot connect to RabbitMQ: {error!r}") from None


def check_connection(settings: Settings) -> None:
    """Open and close a connection: the readiness probe's question."""
    open_connection(settings).close()


def partition_arguments(settings: Settings) -> dict[str, Any]:
    """A partition lives for ever (no expiry: it is one of a fixed few) and has no length
    limit: a lane's depth is counted per lane (lanes.lane.admission.LaneLedger).

    A quorum queue does not enforce exclusive consumers, so a quorum partition is a
    single-active-consumer queue: a worker that joins beside the holder receives nothing
    (docs/design.md §4.3)."""
    arguments: dict[str, Any] = {"x-queue-type": settings.queue_type}
    if settings.queue_type == "quorum":
        arguments["x-delivery-limit"] = QUORUM_DELIVERY_LIMIT
        arguments["x-single-active-consumer"] = True
    return arguments


def overflow_arguments(settings: Settings) -> dict[str, Any]:
    """A deep lane's overflow queue: a partition's type and delivery limit, but read only by
    its partition's holder, with `basic.get`, which a single-active-consumer quorum queue
    refuses (probed on 3.10.8: 405 RESOURCE_LOCKED)."""
    arguments = partition_arguments(settings)
    arguments.pop("x-single-active-consumer", None)
    return arguments


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("message body is not an object")
    return value


def _persistent(timestamp: float | None, headers: dict[str, str] | None = None) -> pika.BasicProperties:
    """Persistent; stamped with when the request was accepted, so RabbitMQ reports the age of
    each lane's head (`head_message_timestamp`) and the lane gauges need no database scan."""
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        content_type="application/json",
        timestamp=None if timestamp is None else int(timestamp),
        headers=headers,
    )


_TRANSIENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Transient)


class Channel:
    """A confirm-mode channel that survives the broker closing it after a refused operation."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self._connection = connection
        self._channel: BlockingChannel | None = None

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
        """Declare a durable queue and return its counts.

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

    def publish(
        self, queue_name: str, body: bytes, *, headers: dict[str, str] | None = None, timestamp: float | None = None
    ) -> None:
        """Publish persistently and wait for the broker's confirm: Refused (nacked) or
        QueueMissing (unroutable)."""
        with self._translated():
            self.raw.basic_publish("", queue_name, body, _persistent(timestamp, headers), mandatory=True)


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
    headers: dict[str, Any] | None = None
    timestamp: int | None = None
    overflow: bool = False  # fetched from a deep lane's overflow queue, not delivered by its partition


class PartitionSession:
    """A worker process's one connection: a channel per partition it holds, consuming with
    a prefetch window of `prefetch` messages, a channel for the requests fetched from deep
    lanes' overflow queues, plus the roster and the settled-feed channel.

    Used from one thread only (pika's rule); handler threads reach it through `wake`."""

    def __init__(
        self, settings: Settings, names: QueueNames, prefetch: int, on_heard: Callable[[], None] = _nothing
    ) -> None:
        self._settings = settings
        self._names = names
        self._prefetch = prefetch
        self._on_heard = on_heard
        self._connection = open_connection(settings, WORKER_HEARTBEAT_SECONDS)
        self._bytes_heard = 0
        self._exclusive = names.queue_type == "classic"
        self._partitions: dict[int, tuple[BlockingChannel, int]] = {}
        self.deliveries: deque[PartitionDelivery] = deque()
        self.control = Channel(self._connection)
        with self.control._translated():
            self.control.raw.exchange_declare(names.overflow_exchange, "direct", durable=True)
            self._feed = self._connection.channel()
            self._feed.exchange_declare(names.settled, "fanout", durable=True)
            self._feed.exchange_declare(names.ledgers, "direct", durable=True)
            roster = self._connection.channel()
            roster.queue_declare(names.workers, auto_delete=True, arguments={"x-queue-type": "classic"})
            roster.basic_consume(names.workers, lambda *_: None)
            self._signals = self._connection.channel()
            for name in names.worker_states:
                # Kept (not auto-deleted) so that showing a state never creates a queue.
                self._signals.queue_declare(name, arguments={"x-queue-type": "classic"})
        self._shown: dict[str, str] = {}  # signal queue -> consumer tag
        self._overflow: tuple[BlockingChannel, int] | None = None
        self._overflow_bound: set[str] = set()  # declared and bound by this session (spill)
        self._overflow_known: set[str] = set()  # declared by this session (fetch)
        self._spill_channel: BlockingChannel | None = None

    @property
    def held(self) -> list[int]:
        return sorted(self._partitions)

    def workers(self) -> int:
        """How many worker processes run now (each consumes the roster once)."""
        return max(1, self.control.counts(self._names.workers).consumers)

    def free(self, index: int) -> bool:
        """Whether no process consumes the partition (declaring it: a worker that starts
        before any enqueue holds its share; asking is cheaper than a refused consume)."""
        return self.control.declare(self._names.partition(index), partition_arguments(self._settings)).consumers == 0

    def take(self, index: int) -> bool:
        """Consume a free partition, exclusively; False when another process holds it.

        Quorum queues do not enforce exclusive consumers, so a quorum partition is only
        joined when it has no consumer at all (`free`); the broker removes a dead holder's
        consumer in the same step that returns its unacknowledged messages."""
        name = self._names.partition(index)
        generation = next(_GENERATIONS)
        try:
            with self.control._translated():
                channel = self._connection.channel()
                channel.basic_qos(prefetch_count=self._prefetch)
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

    def holds(self, delivery: PartitionDelivery) -> bool:
        """Whether the delivery's channel is still open and the one it came on: a message
        that arrived while its channel was being closed went back to its queue with it."""
        channel, generation = self._channel_of(delivery)
        return channel is not None and generation == delivery.generation and channel.is_open

    def _channel_of(self, delivery: PartitionDelivery) -> tuple[BlockingChannel | None, int]:
        if delivery.overflow:
            return self._overflow or (None, 0)
        return self._partitions.get(delivery.partition, (None, 0))

    def forget_closed(self) -> list[int]:
        """Generations of the channels the broker closed (it gave their messages back
        already); their partitions are no longer held."""
        closed = [index for index, (channel, _generation) in self._partitions.items() if channel.is_closed]
        generations = [self._partitions.pop(index)[1] for index in closed]
        if self._overflow is not None and self._overflow[0].is_closed:
            generations.append(self._overflow[1])
            self._overflow = None
        return generations

    def ack(self, delivery: PartitionDelivery) -> bool:
        """Acknowledge on the channel it came on; False if that channel is gone (the broker
        gave the message back, and its next holder finds the outcome recorded)."""
        channel, _generation = self._channel_of(delivery)
        if channel is None or not self.holds(delivery):
            return False
        with self.control._translated():
            channel.basic_ack(delivery.tag)
        return True

    # -- deep lanes (lanes.lane.overflow) ------------------------------------------------

    def spill(self, spilled: list[tuple[str, PartitionDelivery]]) -> None:
        """Move partition messages to the tails of their lanes' overflow queues: published
        there in one transaction, committed (on disk) before any is acknowledged in its
        partition. A crash in between leaves a copy in both, and the later one is found
        settled when its turn comes. One round trip for the whole batch."""
        exchange = self._names.overflow_exchange
        for lane, _delivery in spilled:
            queue_name = self._names.overflow(lane)
            if queue_name not in self._overflow_bound:
                # Declared and bound by this session first: a transaction's publish that
                # routes nowhere would be dropped, not refused.
                self.control.declare(queue_name, overflow_arguments(self._settings))
                with self.control._translated():
                    self.control.raw.queue_bind(queue_name, exchange, routing_key=lane)
                self._overflow_bound.add(queue_name)
                self._overflow_known.add(queue_name)
        with self.control._translated():
            if self._spill_channel is None or not self._spill_channel.is_open:
                self._spill_channel = self._connection.channel()
                self._spill_channel.tx_select()
            for lane, delivery in spilled:
                properties = _persistent(delivery.timestamp, delivery.headers)
                self._spill_channel.basic_publish(exchange, lane, delivery.body, properties)
            self._spill_channel.tx_commit()
        for _lane, delivery in spilled:
            self.ack(delivery)

    def fetch(self, lane: str, partition: int) -> PartitionDelivery | None:
        """The next request in the lane's overflow queue, unacknowledged; None when it is empty."""
        queue_name = self._names.overflow(lane)
        if queue_name not in self._overflow_known:
            # Declared, not asked: a 404 would close the channel and give back what it holds.
            # Once known it stays (only this holder deletes it), so a deep lane's later
            # requests cost one round trip each, not two.
            self.control.declare(queue_name, overflow_arguments(self._settings))
            self._overflow_known.add(queue_name)
        with self.control._translated():
            if self._overflow is None or not self._overflow[0].is_open:
                self._overflow = (self._connection.channel(), next(_GENERATIONS))
            channel, generation = self._overflow
            method, props, body = channel.basic_get(queue_name, auto_ack=False)
        if method is None:
            return None
        return PartitionDelivery(partition, generation, method.delivery_tag, body, props.headers, props.timestamp, True)

    def give_back(self, delivery: PartitionDelivery) -> None:
        """Return a fetched request, not started, to the head of its overflow queue."""
        if delivery.overflow and self.holds(delivery) and self._overflow is not None:
            with self.control._translated():
                self._overflow[0].basic_nack(delivery.tag, requeue=True)

    def drop_overflow(self, lane: str) -> bool:
        """Delete the lane's overflow queue, found empty by a fetch; False if it is not.

        Only the partition's holder spills into it, so nothing arrives in between. A quorum
        queue refuses `if-empty` (and closes the connection for asking), so there the
        emptiness is asked first."""
        queue_name = self._names.overflow(lane)
        quorum = self._names.queue_type == "quorum"
        if quorum and self.control.counts(queue_name).ready > 0:
            return False
        try:
            with self.control._translated():
                self.control.raw.queue_delete(queue_name, if_empty=not quorum)
        except ArgumentsDiffer:  # 406: not empty
            return False
        self._overflow_bound.discard(queue_name)
        self._overflow_known.discard(queue_name)
        return True

    def announce_settled(self, body: bytes, ledger: str | None) -> None:
        """A hint for the ledger of the enqueue process that accepted the requests (None:
        for every ledger): transient and unconfirmed."""
        with self.control._translated():
            if ledger is None:
                self._feed.basic_publish(self._names.settled, "", body, _TRANSIENT)
            else:
                self._feed.basic_publish(self._names.ledgers, ledger, body, _TRANSIENT)

    def show(self, busy: bool, waiting: bool, spare: bool = False, hungry: bool = False) -> None:
        """Let the autoscaler and the other workers see this process's state at once, over
        AMQP, as a consumer of each state's queue: the work a worker holds is
        unacknowledged, which the broker's counts show only through the management API,
        seconds late."""
        names = self._names
        wanted = {
            names.busy_workers: busy,
            names.waiting_workers: waiting,
            names.spare_workers: spare,
            names.hungry_workers: hungry,
        }
        with self.control._translated():
            for name, shown in wanted.items():
                if shown and name not in self._shown:
                    self._shown[name] = self._signals.basic_consume(name, lambda *_: None)
                elif not shown and name in self._shown:
                    self._signals.basic_cancel(self._shown.pop(name))

    def others_showing(self, state: str) -> int:
        """How many other worker processes show `state` (one of QueueNames.worker_states)."""
        return self.control.counts(state).consumers - (state in self._shown)

    def _on_message(self, index: int, generation: int, _channel: Any, method: Any, props: Any, body: bytes) -> None:
        delivery = PartitionDelivery(index, generation, method.delivery_tag, body, props.headers, props.timestamp)
        self.deliveries.append(delivery)

    def wait(self, seconds: float, until: Callable[[], bool]) -> None:
        """Serve the connection (heartbeats, deliveries) until `until()` or `seconds` pass.

        Nothing here polls: it blocks in pika's I/O loop until a frame arrives, the time
        is up, or another thread calls `wake` (a slot that settled a request)."""
        deadline = time.monotonic() + seconds
        with self.control._translated():
            self._connection.process_data_events(time_limit=0)
            self._note_heard()
            while not until() and (left := deadline - time.monotonic()) > 0:
                self._connection.process_data_events(time_limit=left)
                self._note_heard()

    def _note_heard(self) -> None:
        """Tell the fencing lease when the broker sent anything on a connection still open."""
        received = self._connection._impl.bytes_received
        if received != self._bytes_heard and self._connection.is_open:
            self._bytes_heard = received
            self._on_heard()

    def wake(self) -> None:
        """From any thread: make a `wait` in progress return and look at its condition."""
        try:
            self._connection.add_callback_threadsafe(_nothing)
        except Exception:  # noqa: BLE001 - a closed connection: the waiter finds out itself
            pass

    def close(self) -> None:
        _close_quietly(self._connection)


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


class Hints:
    """An exchange of transient hints: what is published reaches every process that
    listens at that moment (a fanout exchange; or, with a `routing_key` on a direct one,
    the process listening under that key), and nothing is kept for one that does not
    (each reader has a private auto-delete queue, read in a background thread or
    greenlet). A listener that (re)connects is told so through `on_connected`, after its
    queue is bound, so that it can catch up from where the facts are kept."""

    def __init__(
        self,
        settings: Settings,
        exchange: str,
        on_body: Callable[[bytes], None] = lambda _body: None,
        on_connected: Callable[[], None] = _nothing,
        durable: bool = False,
        routing_key: str | None = None,
    ) -> None:
        self._settings = settings
        self._exchange = exchange
        self._on_body = on_body
        self._on_connected = on_connected
        self._durable = durable  # as every process that declares the exchange has it
        self._kind = "fanout" if routing_key is None else "direct"
        self._routing_key = routing_key or ""

    def publish(self, body: bytes) -> None:
        """Publish once, on a connection of its own (hints are rare); BrokerError on failure."""
        connection = open_connection(self._settings)
        try:
            channel = connection.channel()
            channel.exchange_declare(self._exchange, self._kind, durable=self._durable)
            channel.basic_publish(self._exchange, self._routing_key, body, _TRANSIENT)
        except (pika.exceptions.AMQPError, OSError) as error:
            raise BrokerError(f"cannot publish on {self._exchange}: {error!r}") from None
        finally:
            _close_quietly(connection)

    def run(self, stop: threading.Event | None = None) -> None:
        """Listen for the life of the process, or until `stop` is set."""
        stop = stop or threading.Event()
        failures = 0
        while not stop.is_set():
            try:
                self._listen(stop)
            except Exception:  # noqa: BLE001 - any failure: reconnect after a pause
                failures += 1
                stop.wait(retry_delay(min(failures, 3)))  # back within a few seconds of the broker

    def _listen(self, stop: threading.Event) -> None:
        connection = open_connection(self._settings)
        try:
            channel = connection.channel()
            channel.exchange_declare(self._exchange, self._kind, durable=self._durable)
            queue_name = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue_name, self._exchange, self._routing_key)
            channel.basic_consume(queue_name, lambda _c, _m, _p, body: self._on_body(body), auto_ack=True)
            self._on_connected()
            while not stop.is_set():
                connection.process_data_events(time_limit=1.0)
        finally:
            _close_quietly(connection)
