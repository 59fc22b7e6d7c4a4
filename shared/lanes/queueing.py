"""Accepting a request into its user's lane: stored, published, and its lane woken.

The order of steps is the durability argument (docs/design.md):
1. the record is inserted in MongoDB (status `queued`, marked unpublished);
2. the request's message is published to the lane queue with a publisher confirm,
   so it is on the broker's disk before we go on;
3. the lane's bell is rung; the enqueue that finds it empty publishes a wake-up
   token to the ready queue (a refused ring means a token is already on its way);
4. the unpublished marker is removed, and the client gets 202.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from lanes.broker import (
    PERSISTENT,
    PRECONDITION_FAILED,
    TRANSIENT,
    ChannelPool,
    QueueNames,
    bell_arguments,
    declare_ready_queue,
    encode,
    lane_arguments,
    persistent_since,
)
from lanes.errors import BrokerError, DatabaseError, TooManyRequests, Unavailable
from lanes.faults import maybe_crash
from lanes.requests import Requests, accepted_at, body_fingerprint, new_request_id
from lanes.settings import Settings
from lanes.validation import EnqueueBody

log = logging.getLogger("lanes.enqueue")


@dataclass(frozen=True)
class Accepted:
    record: dict[str, Any]
    position: int
    created: bool


class LaneFull(Exception):
    pass


class LanePublisher:
    """Publishes requests into lane queues and wakes lanes; one per process."""

    def __init__(self, settings: Settings, pool: ChannelPool) -> None:
        self._settings = settings
        self._pool = pool
        self._names = QueueNames.of(settings)
        self._ready_declared = False

    def publish(self, user_id: str, request_id: str) -> int:
        """Put the request at the tail of its lane; returns how many ready requests are ahead.

        Raises LaneFull, or BrokerError when the message did not reach the broker's disk.
        """
        lane = self._names.lane(user_id)
        message = encode({"request_id": request_id, "user_id": user_id})
        properties = persistent_since(accepted_at(request_id))
        with self._pool.channel() as channel:
            # Declaring right before publishing restarts the lane's idle timer, so the
            # broker cannot expire the lane (and our message with it) under us.
            channel, ahead = self._declare_lane(channel, lane)
            try:
                channel.basic_publish("", lane, message, properties, mandatory=True)
            except pika.exceptions.NackError:
                raise LaneFull from None
            except pika.exceptions.UnroutableError:
                channel, ahead = self._declare_lane(channel, lane)
                channel.basic_publish("", lane, message, properties, mandatory=True)
            try:
                self._wake(channel, user_id)
            except (pika.exceptions.AMQPError, OSError) as error:
                # The request is durable already; a lost wake-up is repaired by the
                # worker's sweeper, so the client still gets its 202.
                log.warning("waking lane failed: %r", error, extra={"user_id": user_id, "request_id": request_id})
            return ahead

    def _wake(self, channel: BlockingChannel, user_id: str) -> None:
        """Ring the lane's bell; whoever rings an empty bell publishes the wake-up token.

        The bell holds at most one message (RabbitMQ refuses a second), and a worker
        empties it when it takes a token. So a refused ring means a token is already
        on its way and will reach a worker that then looks at this lane; a burst of
        enqueues adds one token, not one per request (docs/design.md §4.4).
        """
        bell = self._names.bell(user_id)
        try:
            channel.basic_publish("", bell, b"", TRANSIENT, mandatory=True)
        except pika.exceptions.NackError:
            return
        except pika.exceptions.UnroutableError:
            channel.queue_declare(bell, durable=True, arguments=bell_arguments(self._settings))
            try:
                channel.basic_publish("", bell, b"", TRANSIENT, mandatory=True)
            except pika.exceptions.NackError:
                return
        if not self._ready_declared:
            declare_ready_queue(channel, self._names)
            self._ready_declared = True
        token = encode({"user_id": user_id})
        channel.basic_publish("", self._names.ready, token, PERSISTENT, mandatory=True)

    def _declare_lane(self, channel: BlockingChannel, lane: str) -> tuple[BlockingChannel, int]:
        """Declare the lane; returns the channel to go on with and the requests waiting in it."""
        try:
            declared = channel.queue_declare(lane, durable=True, arguments=lane_arguments(self._settings))
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code != PRECONDITION_FAILED:
                raise
            # The lane exists with other arguments (settings changed since): use it as is.
            channel = self._pool.reopen(channel)
            declared = channel.queue_declare(lane, passive=True)
        return channel, int(declared.method.message_count)


class Enqueuer:
    def __init__(self, settings: Settings, requests: Requests, publisher: LanePublisher) -> None:
        self._settings = settings
        self._requests = requests
        self._publisher = publisher

    def enqueue(
        self, user_id: str, body: EnqueueBody, idempotency_key: str | None, correlation_id: str | None = None
    ) -> Accepted:
        fingerprint = body_fingerprint(body.action, body.data)
        request_id = new_request_id()
        try:
            if idempotency_key is not None:
                binding = self._requests.reserve_key(user_id, idempotency_key, request_id, fingerprint)
                if binding is not None:
                    earlier = self._requests.get(binding["request_id"])
                    if earlier is not None:
                        self._finish_publishing(earlier, idempotency_key)
                        return Accepted(record=earlier, position=0, created=False)
                    # An earlier attempt bound the key and died before storing: finish its job.
                    request_id = binding["request_id"]
            record = self._requests.create(request_id, user_id, body.action, body.data, fingerprint, correlation_id)
        except DatabaseError:
            raise self._unavailable("The database is unavailable.") from None
        maybe_crash("after_store", self._settings.fault_crash_after_store)
        try:
            position = self._publisher.publish(user_id, request_id)
        except LaneFull:
            self._forget(request_id, user_id, idempotency_key)
            raise TooManyRequests(
                f"Your lane holds {self._settings.lane_depth_limit} requests already.",
                retry_after=self._settings.retry_after_seconds,
                code="lane_full",
            ) from None
        except BrokerError:
            self._forget(request_id, user_id, idempotency_key)
            raise self._unavailable("The message broker is unavailable.") from None
        try:
            self._requests.published(request_id)
        except DatabaseError:
            # The message is on the broker's disk and will run; a marker left
            # behind only makes the sweeper publish a duplicate, which is skipped.
            pass
        return Accepted(record=record, position=position, created=True)

    def _finish_publishing(self, record: dict[str, Any], idempotency_key: str) -> None:
        """A retry of a request whose first attempt died before its publish was confirmed
        publishes it now, instead of leaving it to the sweeper."""
        if record["status"] != "queued" or not self._requests.is_unpublished(record["_id"]):
            return
        try:
            self._publisher.publish(record["user_id"], record["_id"])
        except LaneFull:
            # Refused, so not accepted after all: keep nothing the sweeper could run later.
            self._forget(record["_id"], record["user_id"], idempotency_key)
            raise TooManyRequests(
                "Your lane is full.", retry_after=self._settings.retry_after_seconds, code="lane_full"
            ) from None
        except BrokerError:
            raise self._unavailable("The message broker is unavailable.") from None
        self._requests.published(record["_id"])

    def _forget(self, request_id: str, user_id: str, idempotency_key: str | None) -> None:
        """Undo the record of a request that was refused, so nothing is half-stored."""
        try:
            self._requests.discard(request_id)
            if idempotency_key is not None:
                self._requests.release_key(user_id, idempotency_key)
        except DatabaseError:
            pass

    def _unavailable(self, message: str) -> Unavailable:
        return Unavailable(message, retry_after=self._settings.retry_after_seconds)
