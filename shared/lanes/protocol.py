"""The lane protocol: every lane is hashed to one of LANE_PARTITIONS durable queues, a
partition is consumed by one worker process at a time, and that process runs the lanes
it sees one request per lane at a time, taking turns. docs/design.md argues why this
keeps every lane FIFO; this module is that argument in code.

Enqueue: one confirmed publish to the lane's partition. Its depth and `position` come
from the process's ledger of the requests it accepted and has not heard settled.

Worker: the partitions it holds are consumed with an exclusive consumer and no prefetch
limit, so every waiting request is in the process's scheduler. A lane's next request
starts only once the one before it is acknowledged, and the acknowledgement follows
the outcome's write. When the process dies, or lets a partition go, the broker puts
every unacknowledged message of the partition back at its head, in order, in the same
step that frees the partition for the next holder.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lanes.broker import (
    ChannelPool,
    PartitionDelivery,
    PartitionSession,
    QueueMissing,
    QueueNames,
    Refused,
    SettledFeed,
    decode,
    encode,
    partition_arguments,
)
from lanes.errors import BrokerError, DatabaseError, retry_delay
from lanes.settings import Settings

if TYPE_CHECKING:
    from lanes.requests import Requests

log = logging.getLogger("lanes.protocol")

# How often a worker process looks at how many processes share the partitions.
BALANCE_SECONDS = 1.0
# How long an idle slot waits for a turn before it looks whether the worker stops.
IDLE_SECONDS = 0.5
# The settled feed is sent at most this often, and at once past this many ids.
SETTLED_FLUSH_SECONDS = 0.02
SETTLED_FLUSH_IDS = 500


def partition_of(user_id: str, partitions: int) -> int:
    return zlib.crc32(user_id.encode()) % partitions


class LaneFull(Exception):
    """The lane holds LANE_DEPTH_LIMIT requests already (as this process's ledger counts)."""


@dataclass(frozen=True)
class LaneMessage:
    """A request as it travels in its lane: everything the worker needs to run it, so the
    worker never has to read the record (and a missing record never loses a request)."""

    request_id: str
    user_id: str
    action: str
    data_json: str
    correlation_id: str | None = None

    def body(self) -> bytes:
        fields = {"request_id": self.request_id, "user_id": self.user_id, "action": self.action}
        fields["data_json"] = self.data_json
        if self.correlation_id is not None:
            fields["correlation_id"] = self.correlation_id
        return encode(fields)

    @classmethod
    def parse(cls, body: bytes) -> LaneMessage:
        """ValueError for a body that is not a request message."""
        try:
            fields = decode(body)
            return cls(
                request_id=str(fields["request_id"]),
                user_id=str(fields["user_id"]),
                action=str(fields["action"]),
                data_json=str(fields["data_json"]),
                correlation_id=fields.get("correlation_id"),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a request message: {error!r}") from None


class HandBack(Exception):
    """The worker is stopping between two attempts of a request: return it to its lane."""


class LaneLedger:
    """Per user, the requests this process accepted and has not heard settled: the lane's
    depth (LANE_DEPTH_LIMIT) and each new request's `position`.

    A request is entered before its publish, so two concurrent enqueues of one user
    cannot both pass the limit. Settles arrive on the settled feed; one lost there (a
    worker killed before it sent it) leaves an entry behind, so a lane that looks full
    is confirmed first: `verify` (a read by `_id`) drops its oldest entries whose outcome
    is recorded — a few, at most once a second per lane, so that a client hammering a
    full lane does not turn each refusal into database reads."""

    VERIFIED_PER_LOOK = 3
    LOOK_EVERY_SECONDS = 1.0

    def __init__(self, limit: int, verify: Callable[[str], bool]) -> None:
        self._limit = limit
        self._verify = verify
        self._open: dict[str, OrderedDict[str, None]] = {}
        self._owner: dict[str, str] = {}
        self._looked_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def enter(self, user_id: str, request_id: str) -> int:
        """Count the request in its lane; returns how many of the lane's are ahead of it."""
        with self._lock:
            lane = self._open.setdefault(user_id, OrderedDict())
            look = len(lane) >= self._limit and self._may_look(user_id)
            oldest = list(itertools.islice(lane, self.VERIFIED_PER_LOOK)) if look else []
        if oldest:
            self.settle([request for request in oldest if self._verify(request)])  # reads outside the lock
        with self._lock:
            lane = self._open.setdefault(user_id, OrderedDict())
            if len(lane) >= self._limit:
                raise LaneFull
            lane[request_id] = None
            self._owner[request_id] = user_id
            return len(lane) - 1

    def _may_look(self, user_id: str) -> bool:
        now = time.monotonic()
        if now - self._looked_at.get(user_id, float("-inf")) < self.LOOK_EVERY_SECONDS:
            return False
        if len(self._looked_at) > 10_000:
            self._looked_at.clear()
        self._looked_at[user_id] = now
        return True

    def settle(self, request_ids: Iterable[str]) -> None:
        with self._lock:
            for request_id in request_ids:
                user_id = self._owner.pop(request_id, None)
                if user_id is None:
                    continue
                lane = self._open.get(user_id)
                if lane is not None:
                    lane.pop(request_id, None)
                    if not lane:
                        del self._open[user_id]

    def on_settled_body(self, body: bytes) -> None:
        try:
            request_ids = json.loads(body)
        except ValueError:
            return
        if isinstance(request_ids, list):
            self.settle(str(request_id) for request_id in request_ids)


class PartitionPublisher:
    """The enqueue side: one confirmed publish per request; one per process."""

    def __init__(self, settings: Settings, pool: ChannelPool, ledger: LaneLedger) -> None:
        self._settings = settings
        self._pool = pool
        self._names = QueueNames.of(settings)
        self._ledger = ledger
        self._declared = False

    def publish(self, message: LaneMessage, accepted_at: float) -> int:
        """Put the request at the tail of its lane, durably; returns how many wait ahead of it.

        Raises LaneFull, or BrokerError when the message did not reach the broker's disk."""
        position = self._ledger.enter(message.user_id, message.request_id)
        partition = self._names.partition(partition_of(message.user_id, self._settings.lane_partitions))
        try:
            with self._pool.channel() as channel:
                if not self._declared:
                    for index in range(self._settings.lane_partitions):
                        channel.declare(self._names.partition(index), partition_arguments(self._settings))
                    self._declared = True
                try:
                    channel.publish(partition, message.body(), timestamp=accepted_at)
                except Refused:  # a partition has no length limit: the broker is in trouble
                    raise BrokerError("RabbitMQ refused the request") from None
                except QueueMissing:  # deleted by hand since this process declared it
                    self._declared = False
                    raise BrokerError("the lane's partition is missing") from None
        except BaseException:
            self._ledger.settle([message.request_id])
            raise
        return position


def partition_publisher(settings: Settings, pool: ChannelPool, requests: Requests) -> PartitionPublisher:
    """The enqueue process's publisher, with its ledger fed by the settled feed."""

    def settled(request_id: str) -> bool:
        try:
            return requests.recorded_outcome(request_id) is not None
        except DatabaseError:
            return False  # cannot tell: the lane stays as full as it looks

    ledger = LaneLedger(settings.lane_depth_limit, settled)
    feed = SettledFeed(settings, QueueNames.of(settings), ledger.on_settled_body)
    threading.Thread(target=feed.run, name="lanes-settled-feed", daemon=True).start()
    return PartitionPublisher(settings, pool, ledger)


@dataclass(frozen=True)
class Turn:
    """One request of one lane, handed to a slot."""

    lane: str
    delivery: PartitionDelivery
    message: LaneMessage


class LaneScheduler:
    """The lanes a worker process sees, each a FIFO of deliveries, taking turns: a lane
    runs one request at a time and goes to the back of the round after each."""

    def __init__(self) -> None:
        self._lanes: dict[str, deque[Turn]] = {}
        self._round: deque[str] = deque()  # lanes with work and no request running
        self.running: set[str] = set()

    def add(self, turn: Turn) -> None:
        lane = self._lanes.get(turn.lane)
        if lane is None:
            lane = self._lanes[turn.lane] = deque()
            if turn.lane not in self.running:
                self._round.append(turn.lane)
        lane.append(turn)

    def next(self, eligible: Callable[[str], bool] = lambda _lane: True) -> Turn | None:
        """The head of the first lane in the round that may run now; its lane is running."""
        for _ in range(len(self._round)):
            name = self._round.popleft()
            if not eligible(name):
                self._round.append(name)
                continue
            lane = self._lanes[name]
            turn = lane.popleft()
            if not lane:
                del self._lanes[name]
            self.running.add(name)
            return turn
        return None

    def finished(self, name: str) -> None:
        """The lane's running request is settled: it takes its next turn at the back."""
        self.running.discard(name)
        if name in self._lanes:
            self._round.append(name)

    def drop(self, lost: Callable[[PartitionDelivery], bool]) -> None:
        """Forget the waiting deliveries of a partition let go (the broker has them back)."""
        for name in list(self._lanes):
            lane = deque(turn for turn in self._lanes[name] if not lost(turn.delivery))
            if lane:
                self._lanes[name] = lane
            else:
                del self._lanes[name]
                if name in self._round:
                    self._round.remove(name)

    def waiting(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def summary(self) -> LanesSeen:
        depths = [len(self._lanes.get(name, ())) + (name in self.running) for name in self._lanes.keys() | self.running]
        lanes_waiting = sum(1 for name in self._lanes if name not in self.running)
        return LanesSeen(len(depths), lanes_waiting, self.waiting(), max(depths, default=0))


@dataclass(frozen=True)
class LanesSeen:
    """What a worker's lanes look like: lanes with work, of those the ones waiting for a
    slot, requests not started, and the deepest lane's requests (lanes.metrics.lanes_seen)."""

    lanes_with_work: int
    lanes_waiting: int
    waiting_requests: int
    deepest_lane: int


@dataclass(frozen=True)
class Settled:
    """What a slot reports for a turn: settled (ack it) or handed back (leave it unacked)."""

    turn: Turn
    settled: bool


class Dispatcher:
    """A worker process's broker side, in a thread of its own (the only one that touches
    the connection): holds partitions, feeds the scheduler, hands turns to idle slots,
    acknowledges what they settle, and announces it."""

    def __init__(
        self,
        settings: Settings,
        stop: threading.Event,
        slots: int,
        report_lanes: Callable[[LanesSeen], None] = lambda _seen: None,
    ) -> None:
        self._settings = settings
        self._report_lanes = report_lanes
        self._names = QueueNames.of(settings)
        self._stop = stop
        self._session: PartitionSession = _NotConnected()  # type: ignore[assignment]
        self._scheduler = LaneScheduler()
        self._idle = slots
        self._draining: set[int] = set()
        self._handed_back: set[str] = set()
        self._waiting_shown = False
        self._balanced_at = float("-inf")
        self._announce: list[str] = []
        self._announce_since = 0.0
        self.turns: deque[Turn] = deque()  # handed to slots, taken by `take_turn`
        self._turns_ready = threading.Condition()
        self.reports: deque[Settled] = deque()

    # -- called from slot threads ---------------------------------------------------------

    def take_turn(self, timeout: float) -> Turn | None:
        with self._turns_ready:
            if not self.turns:
                self._turns_ready.wait(timeout)
            return self.turns.popleft() if self.turns else None

    def report(self, settled: Settled) -> None:
        self.reports.append(settled)
        self._session.wake()

    # -- the main loop --------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped and every running request has settled or been handed back.

        A lost connection costs the process its partitions (the broker gives their messages
        back); it reconnects, and a lane whose request still runs in a slot stays running,
        so its redelivered head waits behind it and is then found settled."""
        failures = 0
        while True:
            try:
                self._session = PartitionSession(self._settings, self._names)
                self._balanced_at = float("-inf")
                self._serve()
                return
            except BrokerError as error:
                failures += 1
                log.warning("worker lost the broker: %r; reconnecting", error)
            self._session.close()
            self._scheduler.drop(lambda _delivery: True)
            self._draining.clear()
            if self._stop.is_set():
                self._take_back_undelivered_turns()
                # Nothing can be acknowledged now: the broker has every message back, and
                # a settled one is found settled by its next holder.
                while self._scheduler.running:
                    time.sleep(0.05)
                    while self.reports:
                        self._idle += 1
                        self._scheduler.finished(self.reports.popleft().turn.lane)
                return
            self._stop.wait(retry_delay(failures) * random.uniform(0.5, 1.0))

    def _serve(self) -> None:
        try:
            while not self._stop.is_set() or self._scheduler.running:
                self._session.wait(self._wait_seconds(), self._has_news)
                self._settle_reports()
                self._take_deliveries()
                self._forget_lost()
                if self._stop.is_set():
                    self._take_back_undelivered_turns()
                else:
                    self._balance()
                    self._dispatch()
                self._flush_announcements()
        finally:
            self._flush_announcements(force=True)
            self._session.close()  # every unacknowledged message goes back to its partition

    def _take_back_undelivered_turns(self) -> None:
        with self._turns_ready:
            while self.turns:
                turn = self.turns.popleft()
                self._scheduler.running.discard(turn.lane)
                self._idle += 1

    def _has_news(self) -> bool:
        session = self._session
        return bool(self.reports or session.deliveries) or (self._stop.is_set() and not self._scheduler.running)

    def _wait_seconds(self) -> float:
        """Until the next balance (at once after connecting) or the settled feed's flush."""
        wait = max(0.0, self._balanced_at + BALANCE_SECONDS - time.monotonic())
        if self._announce:
            wait = min(wait, max(0.0, self._announce_since + SETTLED_FLUSH_SECONDS - time.monotonic()))
        return wait

    def _take_deliveries(self) -> None:
        deliveries = self._session.deliveries
        if deliveries:
            # Busy at once (the next balance may be a second away): an autoscaler about to
            # stop this idle-looking worker must see the work it was just given.
            self._session.show(busy=True, waiting=self._waiting_shown)
        while deliveries:
            delivery = deliveries.popleft()
            if not self._session.holds(delivery):
                # Delivered on a channel closed since (a partition let go or lost): the
                # broker has it back, and running this copy would run it ahead of its lane.
                continue
            try:
                message = LaneMessage.parse(delivery.body)
            except ValueError as error:
                log.warning("dropping a malformed lane message: %s", error)
                self._session.ack(delivery)
                continue
            self._scheduler.add(Turn(message.user_id, delivery, message))

    def _settle_reports(self) -> None:
        while self.reports:
            report = self.reports.popleft()
            self._idle += 1
            if not report.settled:
                # Stopping between two attempts: its message goes back when we close, and
                # none of its lane's runs here meanwhile.
                self._handed_back.add(report.turn.lane)
                self._scheduler.finished(report.turn.lane)
                continue
            # Settled first: should the ack fail with the connection, the broker gives the
            # message back and its next delivery is found settled.
            self._scheduler.finished(report.turn.lane)
            self._session.ack(report.turn.delivery)
            if not self._announce:
                self._announce_since = time.monotonic()
            self._announce.append(report.turn.message.request_id)
            partition = report.turn.delivery.partition
            if partition in self._draining and not self._running_in(partition):
                self._let_go(partition)

    def _forget_lost(self) -> None:
        for partition, generation in self._session.forget_closed():
            log.warning("the broker closed partition %d's channel; its messages went back", partition)
            self._scheduler.drop(_of_incarnation(partition, generation))

    def _dispatch(self) -> None:
        handed = False
        while self._idle > 0:
            turn = self._scheduler.next(self._may_run)
            if turn is None:
                break
            self._idle -= 1
            with self._turns_ready:
                self.turns.append(turn)
                self._turns_ready.notify()
            handed = True
        if handed:
            self._session.wake()

    def _may_run(self, lane: str) -> bool:
        partition = partition_of(lane, self._settings.lane_partitions)
        return partition not in self._draining and lane not in self._handed_back

    def _running_in(self, partition: int) -> bool:
        count = self._settings.lane_partitions
        return any(partition_of(lane, count) == partition for lane in self._scheduler.running)

    # -- holding partitions ---------------------------------------------------------------

    def _balance(self) -> None:
        """Hold a fair share of the partitions: take free ones up to it, let extra ones go."""
        now = time.monotonic()
        if now - self._balanced_at < BALANCE_SECONDS:
            return
        self._balanced_at = now
        seen = self._scheduler.summary()
        self._report_lanes(seen)
        self._waiting_shown = seen.lanes_waiting > 0
        self._session.show(busy=seen.lanes_with_work > 0, waiting=self._waiting_shown)
        count = self._settings.lane_partitions
        share = math.ceil(count / self._session.workers())
        held = [p for p in self._session.held if p not in self._draining]
        if len(held) < share:
            start = random.randrange(count)
            for index in [(start + i) % count for i in range(count)]:
                if len(held) >= share:
                    break
                if index not in self._session.held and self._session.take(index):
                    held.append(index)
        elif len(held) > share:
            for index in held[share:]:
                self._draining.add(index)
                if not self._running_in(index):
                    self._let_go(index)

    def _let_go(self, partition: int) -> None:
        self._draining.discard(partition)
        self._session.let_go(partition)
        self._scheduler.drop(lambda d: d.partition == partition)

    def _flush_announcements(self, force: bool = False) -> None:
        if not self._announce:
            return
        due = time.monotonic() - self._announce_since >= SETTLED_FLUSH_SECONDS
        if force or due or len(self._announce) >= SETTLED_FLUSH_IDS:
            body = json.dumps(self._announce, separators=(",", ":")).encode()
            self._announce = []
            try:
                self._session.announce_settled(body)
            except Exception as error:  # noqa: BLE001 - a hint: the ledgers verify before refusing
                log.warning("could not announce settled requests: %r", error)


def _of_incarnation(partition: int, generation: int) -> Callable[[PartitionDelivery], bool]:
    return lambda delivery: delivery.partition == partition and delivery.generation == generation


class _NotConnected:
    """The session before the first connection: waking it does nothing."""

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass


def as_record(message: LaneMessage) -> dict[str, Any]:
    """The fields of a request that its message carries, shaped like a record."""
    record: dict[str, Any] = {
        "_id": message.request_id,
        "user_id": message.user_id,
        "action": message.action,
        "data_json": message.data_json,
    }
    if message.correlation_id is not None:
        record["correlation_id"] = message.correlation_id
    return record
