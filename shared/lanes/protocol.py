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
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lanes.broker import (
    Channel,
    ChannelPool,
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

# How long a holder waits for a message the broker said is on its way before it looks again.
DELIVERY_WAIT_SECONDS = 1.0


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

    def publish(self, message: LaneMessage, accepted_at: float) -> int:
        """Put the request at the tail of its lane, durably; returns how many wait ahead of it.

        Raises LaneFull, or BrokerError when the message did not reach the broker's disk.
        A failure to wake the lane afterwards is logged, not raised: the request is
        durable, and the sweeper wakes a lane that has work and no token.
        """
        lane = self._names.lane(message.user_id)
        with self._pool.channel() as channel:
            # Declaring right before publishing restarts the lane's idle timer, so the
            # broker cannot expire the lane (and our message with it) under us.
            ahead = channel.declare(lane, lane_arguments(self._settings)).ready
            try:
                channel.publish(lane, message.body(), timestamp=accepted_at)
            except Refused:
                raise LaneFull from None
            except QueueMissing:  # deleted by hand between the two calls
                ahead = channel.declare(lane, lane_arguments(self._settings)).ready
                channel.publish(lane, message.body(), timestamp=accepted_at)
            try:
                self.wake(channel, message.user_id)
            except BrokerError as error:
                log.warning("waking lane failed: %r", error, extra={"user_id": message.user_id})
            return ahead

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
            channel.publish(self._names.ready, token_body(user_id))
        except BrokerError:
            try:
                channel.purge(self._names.bell(user_id))
            except BrokerError:
                pass  # the sweeper finds the lane: work, no holder, no progress
            raise


@dataclass
class Turn:
    """What a holder knows about its lane while it holds it."""

    user_id: str
    expected: int = 0  # messages the broker said are ready and will be delivered to us
    run: int = 0  # requests run since the turn began or was renewed


class LaneHolder:
    """The worker side: one slot's way of holding lanes, one lane at a time."""

    def __init__(self, session: Session, settings: Settings, names: QueueNames, stop: threading.Event) -> None:
        self._session = session
        self._settings = settings
        self._names = names
        self._stop = stop

    def take_turn(self, user_id: str, run_request: Callable[[LaneMessage], None]) -> None:
        """Hold the lane of a token just taken, run its requests in order, then let it go.

        `run_request` returns once the request is settled (its outcome recorded), or raises
        HandBack to put it back at the head of the lane; any other exception puts it back
        too and propagates (the slot then drops its connection)."""
        lane = self._names.lane(user_id)
        exclusive = self._names.queue_type == "classic"
        try:
            if not exclusive and self._session.channel.counts(lane).consumers > 0:
                # A quorum lane admits a second consumer (inactive): not joining is what keeps
                # a standby from taking over ahead of the head a dying holder returns.
                return
            self._session.hold(lane, exclusive=exclusive)
        except QueueInUse:
            return  # another slot holds the lane and looks at it again when it lets go
        except QueueMissing:
            self._let_go(user_id, more=False)  # expired empty: silence its bell
            return
        turn = Turn(user_id)
        more = False
        while not self._stop.is_set():
            try:
                delivery = self._next(lane, turn)
            except HeldElsewhere:
                self._session.release()  # the active consumer runs the lane and lets it go
                return
            if delivery is None:
                break
            if not self._run(delivery, run_request):
                more = True  # handed back at the head
                break
            turn.run += 1
            if turn.run >= self._settings.lane_quantum:
                if self._others_waiting():
                    more = True
                    break
                turn.run = 0  # nobody waits: keep the lane, no token round trip
        self._let_go(user_id, more=more or bool(self._session.lane_deliveries) or turn.expected > 0)

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

    def _next(self, lane: str, turn: Turn) -> Delivery | None:
        """The lane's next message, or None when the lane is empty (or held by another)."""
        session = self._session
        if not session.lane_deliveries and turn.expected > 0:
            session.wait(DELIVERY_WAIT_SECONDS, lambda: bool(session.lane_deliveries))
        if not session.lane_deliveries:
            # Ask the lane itself: its queue process answers after delivering what it had
            # for us, and the fence flushes our channel, so nothing is still on its way.
            turn.expected = session.channel.counts(lane).ready
            session.fence()
            if not session.lane_deliveries and turn.expected > 0:
                session.wait(DELIVERY_WAIT_SECONDS, lambda: bool(session.lane_deliveries))
                if not session.lane_deliveries:
                    # Work that is not delivered to us: another consumer is active
                    # (a quorum lane's single active consumer); it runs the lane.
                    raise HeldElsewhere
        if not session.lane_deliveries:
            return None
        turn.expected = max(0, turn.expected - 1)
        return session.lane_deliveries.popleft()

    def _others_waiting(self) -> bool:
        return self._session.channel.counts(self._names.ready).ready > 0

    def _let_go(self, user_id: str, more: bool) -> None:
        """Stop holding the lane and leave it so that exactly one token stands for its work."""
        session, names = self._session, self._names
        session.release()
        if more:
            # The bell stays rung: this token is the one it announces.
            session.channel.publish(names.ready, token_body(user_id))
            return
        try:
            session.channel.purge(names.bell(user_id))
        except QueueMissing:
            pass
        # Silenced first, looked at second: an enqueue whose ring was refused before the
        # purge published its request before ringing, so this look sees it.
        try:
            waiting = session.channel.counts(names.lane(user_id)).ready
        except QueueMissing:
            waiting = 0
        if waiting and ring(session.channel, names, self._settings, user_id):
            session.channel.publish(names.ready, token_body(user_id))


class HeldElsewhere(Exception):
    """Our consumer on the lane is a standby: another slot's consumer is the active one."""


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
