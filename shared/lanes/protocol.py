"""The lane protocol: how a request gets into its lane, how a lane gets a worker slot, and
how a slot holds a lane and lets it go. docs/design.md argues why it keeps every lane FIFO
and loses no wake-up; this module is that argument in code.

Per lane the broker keeps two queues:
- the **lane** `<prefix>.lane.<user>`: the user's requests, persistent, in order;
- the **bell** `<prefix>.bell.<user>`: at most one message, meaning "this lane has a
  wake-up token in `<prefix>.ready`, or a slot holding it".

Enqueue: publish the request (confirmed), then ring the bell; whoever rings an empty
bell publishes the lane's token. A slot that takes a token *holds* the lane by consuming
it exclusively (one unacknowledged message at a time) and keeps it while it has work
and no other lane waits. Letting go: stop consuming; with work left, send the token to
the back of the ready queue (the bell stays rung); with none, silence the bell, look at
the lane once more and ring again if something arrived meanwhile.

If a holder's connection dies, the broker removes its consumer and requeues its one
unacknowledged message at the head of the lane in one step of the lane's own queue
process (for quorum lanes, one Raft command), so no other slot can read past it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lanes.broker import (
    Channel,
    ChannelPool,
    Counts,
    Delivery,
    QueueInUse,
    QueueMissing,
    QueueNames,
    Refused,
    Session,
    bell_arguments,
    decode,
    encode,
    lane_arguments,
    ready_arguments,
)
from lanes.errors import BrokerError
from lanes.settings import Settings

log = logging.getLogger("lanes.protocol")

# Lanes whose last declaration a process remembers (a few MB at most).
MAX_REMEMBERED_LANES = 100_000

# How long a full slot keeps a quiet lane even while other lanes wait: long enough for
# a next message already on its way (sent after the last ack) or a client's next request
# to arrive, each of which would otherwise cost a token round trip. And how often a full
# slot asks whether other lanes wait.
DELIVERY_GRACE_SECONDS = 0.02
WAITING_CHECK_SECONDS = 0.05

# How often a slot with held lanes looks for lanes to let go, at the longest.
IDLE_CHECK_SECONDS = 0.5


class LaneFull(Exception):
    """The lane holds LANE_DEPTH_LIMIT requests already; the broker refused this one."""


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


def token_body(user_id: str) -> bytes:
    return encode({"user_id": user_id})


def send_token(channel: Channel, names: QueueNames, user_id: str) -> None:
    """Publish a lane's wake-up token to the back of the ready queue.

    Transient and unconfirmed: a persistent, confirmed message costs the broker about
    2.5x the CPU of a transient one (0.72 against 0.28 ms, measured), and a token is a
    hint. A token lost with the broker (a restart drops tokens and rings together) or
    on the way leaves a lane with work and no token; new enqueues into a silent bell
    wake their lanes, and the sweeper wakes the others."""
    channel.send(names.ready, token_body(user_id))


def token_owner(body: bytes) -> str:
    """The user whose lane a token wakes; ValueError for a malformed token."""
    try:
        return str(decode(body)["user_id"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a token: {error!r}") from None


def ring(channel: Channel, names: QueueNames, settings: Settings, user_id: str) -> bool:
    """Ring the lane's bell; True when it was silent (so the caller must send a token)."""
    bell = names.bell(user_id)
    try:
        channel.publish(bell, b"", persistent=False)
    except Refused:
        return False
    except QueueMissing:
        channel.declare(bell, bell_arguments(settings))
        try:
            channel.publish(bell, b"", persistent=False)
        except Refused:
            return False
    return True


class LanePublisher:
    """The enqueue side: puts requests into lanes and wakes lanes; one per process."""

    def __init__(self, settings: Settings, pool: ChannelPool) -> None:
        self._settings = settings
        self._pool = pool
        self._names = QueueNames.of(settings)
        self._ready_declared = False
        self._declared: dict[str, float] = {}  # lane -> when this process last declared it

    def publish(self, message: LaneMessage, accepted_at: float) -> int:
        """Put the request at the tail of its lane, durably; returns how many wait ahead of it.

        Raises LaneFull, or BrokerError when the message did not reach the broker's disk.
        A failure to wake the lane afterwards is logged, not raised: the request is
        durable, and the sweeper wakes a lane that has work and no token.
        """
        lane = self._names.lane(message.user_id)
        with self._pool.channel() as channel:
            if self._needs_declaring(lane):
                # Declaring restarts the lane's idle timer, so the broker cannot expire the
                # lane (and our message with it) under us; a declaration this process made
                # less than half an idle period ago still guarantees that.
                self._declare(channel, lane)
            try:
                try:
                    channel.publish(lane, message.body(), timestamp=accepted_at)
                except QueueMissing:  # expired or deleted since this process declared it
                    self._declare(channel, lane)
                    channel.publish(lane, message.body(), timestamp=accepted_at)
            except Refused:
                raise LaneFull from None
            try:
                after = self._declare(channel, lane)
            except BrokerError as error:
                # The request is durable already: accept it, and leave waking to the sweeper.
                log.warning("looking at the lane failed: %r", error, extra={"user_id": message.user_id})
                return 0
            if after.consumers == 0:
                # Nobody holds the lane now, after our message is in it. A holder seen here
                # looks at the lane when it lets go (or runs our message before).
                try:
                    self.wake(channel, message.user_id)
                except BrokerError as error:
                    log.warning("waking lane failed: %r", error, extra={"user_id": message.user_id})
            return max(0, after.ready - 1)

    def _needs_declaring(self, lane: str) -> bool:
        declared = self._declared.get(lane)
        return declared is None or time.monotonic() - declared > self._settings.lane_idle_seconds / 2

    def _declare(self, channel: Channel, lane: str) -> Counts:
        counts = channel.declare(lane, lane_arguments(self._settings))
        if len(self._declared) >= MAX_REMEMBERED_LANES:
            self._declared.clear()
        self._declared[lane] = time.monotonic()
        return counts

    def wake(self, channel: Channel, user_id: str) -> None:
        """Ring the bell and, if it was silent, send the lane's token.

        If the token cannot be sent after a ring was accepted, the ring is taken back, so
        that the next enqueue sends one (else the bell would claim a token that is not there).
        """
        if not ring(channel, self._names, self._settings, user_id):
            return
        try:
            if not self._ready_declared:
                channel.declare(self._names.ready, ready_arguments(self._names))
                self._ready_declared = True
            send_token(channel, self._names, user_id)
        except BrokerError:
            try:
                channel.purge(self._names.bell(user_id))
            except BrokerError:
                pass  # the sweeper finds the lane: work, no holder, no progress
            raise


@dataclass
class HeldLane:
    """A lane a slot holds: its consumer's channel, the token that woke it, its turn so far."""

    user_id: str
    place: int
    token: Delivery
    run: int = 0  # requests run since the hold began or was renewed
    idle_since: float = field(default_factory=time.monotonic)


class LaneHolder:
    """The worker side: one slot's lanes, up to LANES_PER_SLOT at a time.

    Each held lane has one consumer with one unacknowledged message, so the slot's
    deliveries come one per lane, and taking them oldest first runs the held lanes
    round-robin. A lane that runs dry is kept for LANE_LINGER_SECONDS (an enqueue
    into a held lane is delivered straight to its holder, with no token), unless the
    slot is full and other lanes wait for a slot."""

    def __init__(
        self,
        session: Session,
        settings: Settings,
        names: QueueNames,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._settings = settings
        self._names = names
        self._clock = clock
        self._exclusive = names.queue_type == "classic"
        self._held: dict[int, HeldLane] = {}
        self._waiting_checked_at = float("-inf")
        self._others_were_waiting = False

    def take(self, token: Delivery) -> None:
        """Hold the lane a token wakes; its token is acknowledged when the lane is let go."""
        session = self._session
        try:
            user_id = token_owner(token.body)
        except ValueError:
            log.warning("dropping a malformed token %r", token.body[:100])
            session.ack_token(token)
            return
        if any(held.user_id == user_id for held in self._held.values()):
            session.ack_token(token)  # a spare token of a lane held here
            return
        place = next(i for i in range(len(self._held) + 1) if i not in self._held)
        lane = self._names.lane(user_id)
        try:
            if not self._exclusive and session.channel.counts(lane).consumers > 0:
                # A quorum lane admits a second consumer (inactive): not joining is what keeps
                # a standby from taking over ahead of the head a dying holder returns.
                session.ack_token(token)
                return
            session.hold(place, lane, exclusive=self._exclusive)
        except QueueInUse:
            session.ack_token(token)  # its holder looks at the lane when it lets go
            return
        except QueueMissing:
            self._silence_or_ring(user_id)  # expired empty
            session.ack_token(token)
            return
        self._held[place] = HeldLane(user_id, place, token, idle_since=self._clock())

    def next_delivery(self) -> Delivery | None:
        """The oldest delivery of any held lane."""
        deliveries = self._session.lane_deliveries
        return deliveries.popleft() if deliveries else None

    def run(self, delivery: Delivery, run_request: Callable[[LaneMessage], None]) -> None:
        """Run one delivery and acknowledge it; let its lane go when its quantum is up and
        another lane waits, or when the request was handed back."""
        held = self._held[delivery.place]
        handed_back = not self._run(delivery, run_request)
        held.idle_since = self._clock()
        held.run += 1
        if handed_back:
            self.let_go(held, more=True)
        elif held.run >= self._settings.lane_quantum:
            if self._others_waiting():
                self.let_go(held, more=True)
            else:
                held.run = 0  # nobody waits: keep the lane, no token round trip

    def let_go_idle(self) -> float:
        """Let go of lanes that have nothing to run; returns how long until the next may be.

        A quiet lane is kept for LANE_LINGER_SECONDS, so that an enqueue into it goes
        straight to this slot. A full slot (it can take no token) keeps one only while no
        other lane waits for a slot, asking the ready queue at most every
        WAITING_CHECK_SECONDS, and never before DELIVERY_GRACE_SECONDS have passed."""
        now = self._clock()
        full = len(self._held) >= self._settings.lanes_per_slot
        busy = {delivery.place for delivery in self._session.lane_deliveries}
        next_check = IDLE_CHECK_SECONDS
        for held in list(self._held.values()):
            if held.place in busy:
                continue
            quiet = now - held.idle_since
            lingered = quiet >= self._settings.lane_linger_seconds
            if lingered or (full and quiet >= DELIVERY_GRACE_SECONDS and self._others_waiting_lately(now)):
                self.let_go(held, more=False)
            else:
                until = self._settings.lane_linger_seconds - quiet
                if full:
                    until = min(until, max(DELIVERY_GRACE_SECONDS - quiet, WAITING_CHECK_SECONDS))
                next_check = min(next_check, until)
        return max(0.001, next_check)

    def _others_waiting_lately(self, now: float) -> bool:
        """Whether lanes wait for a slot, asked of the broker at most every WAITING_CHECK_SECONDS."""
        if now - self._waiting_checked_at >= WAITING_CHECK_SECONDS:
            self._waiting_checked_at = now
            self._others_were_waiting = self._others_waiting()
        return self._others_were_waiting

    def let_go_all(self) -> None:
        for held in list(self._held.values()):
            self.let_go(held, more=False)

    def let_go(self, held: HeldLane, more: bool) -> None:
        """Stop holding the lane and leave it so that exactly one token stands for its work.

        `more`: the lane is known to hold work: its token goes to the back of the ready
        queue and the bell stays rung. Otherwise the bell is silenced and the lane looked
        at once more, which is right whatever the lane holds."""
        session = self._session
        session.release(held.place)
        if more:
            send_token(session.channel, self._names, held.user_id)
        else:
            self._silence_or_ring(held.user_id)
        session.ack_token(held.token)
        del self._held[held.place]

    def _silence_or_ring(self, user_id: str) -> None:
        """Silence the lane's bell, then look: work that arrived meanwhile gets a token."""
        channel, names = self._session.channel, self._names
        try:
            channel.purge(names.bell(user_id))
        except QueueMissing:
            pass
        # Silenced first, looked at second: an enqueue whose ring was refused before the
        # purge published its request before ringing, so this look sees it.
        try:
            waiting = channel.counts(names.lane(user_id)).ready
        except QueueMissing:
            waiting = 0
        if waiting and ring(channel, names, self._settings, user_id):
            send_token(channel, names, user_id)

    def _run(self, delivery: Delivery, run_request: Callable[[LaneMessage], None]) -> bool:
        """Run one delivery; False when it was handed back to the head of the lane."""
        try:
            message = LaneMessage.parse(delivery.body)
        except ValueError as error:
            log.warning("dropping a malformed lane message: %s", error)
            self._session.ack(delivery)
            return True
        try:
            run_request(message)
        except HandBack:
            self._session.nack(delivery)
            return False
        except BaseException:
            try:
                self._session.nack(delivery)
            except BrokerError:
                pass  # the connection is gone: the broker requeues it by itself
            raise
        self._session.ack(delivery)
        return True

    def _others_waiting(self) -> bool:
        return self._session.channel.counts(self._names.ready).ready > 0


class HandBack(Exception):
    """The worker is stopping between two attempts of a request: return it to its lane."""


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
