"""The worker: slots that take turns on lanes, one lane per slot, one request at a time.

A slot takes a lane's wake-up token from the shared ready queue, locks the lane by
declaring its exclusive lock queue (RabbitMQ refuses a second holder and drops the
lock by itself when the holder's connection dies), runs up to LANE_QUANTUM requests
from the lane's head, unlocks, and sends the token to the back of the ready queue
if the lane still has work. docs/design.md argues why this keeps every lane FIFO.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from lanes import metrics
from lanes.actions import ActionContext, ActionFailed, Registry, build_registry
from lanes.broker import (
    NOT_FOUND,
    PERSISTENT,
    RESOURCE_LOCKED,
    ChannelPool,
    QueueNames,
    declare_ready_queue,
    decode,
    encode,
    open_connection,
    translate_errors,
)
from lanes.db import connect, ensure_indexes, now
from lanes.errors import BrokerError, DatabaseError
from lanes.queueing import LaneFull, LanePublisher
from lanes.requests import TERMINAL, Outcome, Requests, request_data
from lanes.settings import Settings

log = logging.getLogger("lanes.worker")


@dataclass
class WorkerState:
    """What a running worker shares between its threads."""

    settings: Settings
    registry: Registry
    requests: Requests
    names: QueueNames
    stop: threading.Event = field(default_factory=threading.Event)
    busy: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def slot_busy(self, delta: int) -> None:
        with self.lock:
            self.busy += delta
        metrics.slot_busy(delta)


class AbandonRequest(Exception):
    """The slot lost its broker connection mid-request: the broker has already put the
    request back at the head of its lane, so recording an outcome now could race the
    next holder."""


class HandBack(Exception):
    """The worker is stopping between two attempts of a request: return it to its lane."""


class Slot:
    """One execution slot: its own broker connection, one lane at a time."""

    def __init__(self, index: int, state: WorkerState) -> None:
        self.index = index
        self.state = state
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"slot{index}-handler")
        self._connection: pika.BlockingConnection | None = None
        self._lane_channel: BlockingChannel | None = None

    # -- the outer loop: connect, take tokens, reconnect after failures --------------

    def run(self) -> None:
        failures = 0
        while not self.state.stop.is_set():
            try:
                self._serve()
                failures = 0
            except (AbandonRequest, BrokerError, DatabaseError, pika.exceptions.AMQPError, OSError) as error:
                failures += 1
                log.warning("slot %d: %r; reconnecting", self.index, error)
                self._back_off(failures)
            except Exception:
                # A bug must not leave this slot's connection open: that would keep the
                # lane locked and its token unacknowledged for as long as the process lives.
                failures += 1
                log.exception("slot %d: unexpected error; reconnecting", self.index)
                self._back_off(failures)
        self._close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _back_off(self, failures: int) -> None:
        """Drop the connection (the broker then requeues the token and any request) and wait."""
        self._close()
        self.state.stop.wait(min(10.0, 0.25 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0))

    def _serve(self) -> None:
        with translate_errors():
            self._connection = open_connection(self.state.settings)
            tokens = self._connection.channel()
            tokens.basic_qos(prefetch_count=1)
            declare_ready_queue(tokens, self.state.names)
            self._lane_channel = self._connection.channel()
            self._lane_channel.confirm_delivery()
            for method, _props, body in tokens.consume(self.state.names.ready, inactivity_timeout=0.5):
                if self.state.stop.is_set():
                    break
                if method is None:
                    continue
                self._take_turn(body)
                tokens.basic_ack(method.delivery_tag)
            tokens.cancel()

    def _close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
        self._connection = None

    # -- one turn on one lane ---------------------------------------------------------

    def _take_turn(self, token_body: bytes) -> None:
        try:
            user_id = str(decode(token_body)["user_id"])
        except (ValueError, KeyError):
            log.warning("slot %d: dropping malformed token %r", self.index, token_body[:100])
            return
        self._silence_bell(user_id)
        if not self._lock(user_id):
            return  # another slot runs this lane and looks at it again when it unlocks
        self.state.slot_busy(+1)
        try:
            self._run_lane(user_id)
        finally:
            self.state.slot_busy(-1)
            self._unlock_and_requeue(user_id)

    def _silence_bell(self, user_id: str) -> None:
        """Empty the lane's bell: from now on the next enqueue rings it and sends a token."""
        try:
            self._channel().queue_purge(self.state.names.bell(user_id))
        except pika.exceptions.ChannelClosedByBroker as error:
            self._lane_channel = None
            if error.reply_code != NOT_FOUND:
                raise

    def _lock(self, user_id: str) -> bool:
        try:
            self._channel().queue_declare(self.state.names.lock(user_id), exclusive=True, auto_delete=True)
            return True
        except pika.exceptions.ChannelClosedByBroker as error:
            self._lane_channel = None
            if error.reply_code == RESOURCE_LOCKED:
                return False
            raise

    def _run_lane(self, user_id: str) -> None:
        lane = self.state.names.lane(user_id)
        for _ in range(self.state.settings.lane_quantum):
            if self.state.stop.is_set():
                return
            try:
                method, _props, body = self._channel().basic_get(lane)
            except pika.exceptions.ChannelClosedByBroker as error:
                self._lane_channel = None
                if error.reply_code == NOT_FOUND:
                    return  # the lane expired: nothing left in it
                raise
            if method is None:
                return
            try:
                self._run_request(body)
            except HandBack:
                # Stopping between attempts: the request goes back to the head of its
                # lane, `processing` with its attempts counted, for the next holder.
                self._channel().basic_nack(method.delivery_tag, requeue=True)
                return
            except DatabaseError:
                # Put the request back at the head; the lane is retried from its token.
                self._channel().basic_nack(method.delivery_tag, requeue=True)
                raise
            self._channel().basic_ack(method.delivery_tag)

    def _unlock_and_requeue(self, user_id: str) -> None:
        """Unlock, then look at the lane: work that arrived meanwhile gets a token at the back.

        Looking *after* unlocking closes the lost wake-up race: an enqueue that saw the
        lane locked published no token, but its message is in the lane before we look.
        """
        channel = self._channel()
        channel.queue_delete(self.state.names.lock(user_id))
        try:
            ready = channel.queue_declare(self.state.names.lane(user_id), passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker as error:
            self._lane_channel = None
            if error.reply_code != NOT_FOUND:
                raise
            ready = 0
        if ready > 0:
            self._channel().basic_publish(
                "", self.state.names.ready, encode({"user_id": user_id}), PERSISTENT, mandatory=True
            )

    def _channel(self) -> BlockingChannel:
        if self._lane_channel is None or not self._lane_channel.is_open:
            assert self._connection is not None
            self._lane_channel = self._connection.channel()
            self._lane_channel.confirm_delivery()
        return self._lane_channel

    # -- one request ------------------------------------------------------------------

    def _run_request(self, body: bytes) -> None:
        try:
            request_id = str(decode(body)["request_id"])
        except (ValueError, KeyError):
            log.warning("slot %d: dropping malformed message %r", self.index, body[:100])
            return
        requests = self.state.requests
        record = requests.get(request_id)
        if record is None or record["status"] in TERMINAL:
            if record is not None and record["status"] == "cancelled":
                metrics.request_settled(record, "cancelled")  # its turn came; the lane moves past it
            return  # never accepted, cancelled, or a redelivered copy of a finished request
        if record["status"] == "processing":  # redelivered: the last holder died mid-request
            metrics.request_redelivered(record)
            earlier = requests.recorded_outcome(request_id)
            if earlier is not None:  # the last holder died between recording and applying
                requests.apply_outcome(earlier)
                return
            if record.get("attempts", 0) >= self.state.settings.max_attempts:
                self._give_up(record, "the worker stopped during every attempt")
                return
        claimed = requests.claim(request_id)
        if claimed is None:
            requests.finish(request_id, Outcome(status="cancelled"), attempts=record.get("attempts", 0))
            metrics.request_settled(record, "cancelled")
            return
        metrics.request_started(claimed)
        self._attempt_until_settled(claimed)

    def _attempt_until_settled(self, record: dict[str, Any]) -> None:
        settings, requests = self.state.settings, self.state.requests
        while True:
            attempt = record["attempts"]
            started = time.monotonic()
            ok, value = self._execute(record, attempt)
            duration = time.monotonic() - started
            metrics.attempt_finished(record, ok, duration)
            if ok:
                self._ensure_connected()
                requests.finish(record["_id"], Outcome(status="done", result=value), attempts=attempt)
                metrics.request_settled(record, "done")
                log.info("request done", extra=_fields(record, "done", attempt, duration))
                return
            if attempt >= settings.max_attempts:
                self._give_up(record, str(value))
                return
            metrics.request_retried(record)
            log.info("request retrying", extra=_fields(record, "retrying", attempt, duration))
            # The lane waits for its head to settle, as an SQS FIFO group does.
            self._pump_for(settings.retry_backoff_seconds * 2 ** (attempt - 1))
            if self.state.stop.is_set():
                raise HandBack
            claimed = requests.claim(record["_id"])
            if claimed is None:
                requests.finish(record["_id"], Outcome(status="cancelled"), attempts=attempt)
                metrics.request_settled(record, "cancelled")
                return
            record = claimed

    def _give_up(self, record: dict[str, Any], error: str) -> None:
        self._ensure_connected()
        attempts = record.get("attempts", 0)
        self.state.requests.finish(record["_id"], Outcome(status="failed", error=error), attempts=attempts)
        self.state.requests.record_dead_letter(record, error)
        metrics.request_settled(record, "failed")
        metrics.request_dead_lettered(record)
        log.info("request failed", extra=_fields(record, "failed", attempts))

    def _execute(self, record: dict[str, Any], attempt: int) -> tuple[bool, Any]:
        """Run the action in the slot's handler thread while keeping the broker connection alive."""
        handler = self.state.registry.get(record["action"])
        if handler is None:
            return False, f"unknown action {record['action']!r}"
        context = ActionContext(
            request_id=record["_id"], user_id=record["user_id"], attempt=attempt, settings=self.state.settings
        )
        future = self._executor.submit(handler, request_data(record), context)
        deadline = time.monotonic() + self.state.settings.request_timeout_seconds
        while not future.done():
            if time.monotonic() > deadline:
                # A thread cannot be killed: let it finish on its own and give this slot a new one.
                self._executor.shutdown(wait=False)
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"slot{self.index}-handler")
                return False, f"timed out after {self.state.settings.request_timeout_seconds:g}s"
            self._pump(0.05)
        return _settle(future)

    def _pump(self, seconds: float) -> None:
        """Serve the broker connection (heartbeats) for a while; AbandonRequest if it died."""
        try:
            assert self._connection is not None
            self._connection.process_data_events(time_limit=seconds)
        except (pika.exceptions.AMQPError, OSError):
            raise AbandonRequest from None

    def _pump_for(self, seconds: float) -> None:
        """Wait between attempts, keeping the connection alive; cut short by a stop."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self.state.stop.is_set():
            self._pump(min(left, 0.25))

    def _ensure_connected(self) -> None:
        self._pump(0)


def _settle(future: Future[Any]) -> tuple[bool, Any]:
    try:
        value = future.result()
    except ActionFailed as error:
        return False, str(error)
    except Exception as error:  # noqa: BLE001 - a user's handler may raise anything
        return False, f"{type(error).__name__}: {error}"
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False, "the action's result is not JSON-serialisable"
    return True, value


def _fields(record: dict[str, Any], status: str, attempt: int, duration: float | None = None) -> dict[str, Any]:
    fields = {
        "request_id": record["_id"],
        "user_id": record["user_id"],
        "action": record["action"],
        "status": status,
        "attempt": attempt,
        "correlation_id": record.get("correlation_id"),
    }
    if duration is not None:
        fields["duration_ms"] = round(duration * 1000, 2)
    return fields


class Sweeper:
    """Repairs what a crash between two systems can leave behind.

    A lane whose oldest queued request made no progress over a whole sweep gets a
    fresh wake-up token (duplicates are harmless: a second token finds the lane
    locked or empty). A record that never reached the broker is published again.
    """

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self._oldest_seen: dict[str, str] = {}
        self._pool = ChannelPool(state.settings, max_idle=1)
        self._publisher = LanePublisher(state.settings, self._pool)

    def run(self) -> None:
        interval = self.state.settings.sweep_interval_seconds
        while not self.state.stop.wait(interval * random.uniform(0.8, 1.2)):
            try:
                self.sweep()
            except (BrokerError, DatabaseError, pika.exceptions.AMQPError, OSError) as error:
                log.warning("sweep failed: %s", error)

    def sweep(self) -> None:
        pending: dict[str, list[str]] = {}
        for record in self.state.requests.pending_records():
            pending.setdefault(record["user_id"], []).append(record["_id"])
        stalled = [user for user, ids in pending.items() if self._oldest_seen.get(user) == ids[0]]
        self._oldest_seen = {user: ids[0] for user, ids in pending.items()}
        republished = self._publish_stranded()
        if stalled:
            republished += self._restore_lost(stalled, pending)
            self._wake(stalled)
        if stalled or republished:
            log.info("sweep woke %d lanes and published %d stranded requests", len(stalled), republished)

    def _restore_lost(self, stalled: list[str], pending: dict[str, list[str]]) -> int:
        """Publish again the pending requests of stalled lanes whose queue lost them.

        A lane expires with its messages if nobody read it for LANE_IDLE_SECONDS (every
        worker down that long). A stalled lane with no ready message and no holder has
        lost what its records say is pending; publishing them again, oldest first,
        restores it (a copy of a request that finished after all is skipped).
        """
        lost = [user for user in stalled if self._lane_lost(user)]
        for user in lost:
            for request_id in pending[user]:
                self._publisher.publish(user, request_id)
        return sum(len(pending[user]) for user in lost)

    def _lane_lost(self, user_id: str) -> bool:
        with translate_errors():
            connection = open_connection(self.state.settings)
            try:
                return _queue_state(connection, self.state.names.lane(user_id)) in ("missing", "empty") and (
                    _queue_state(connection, self.state.names.lock(user_id)) == "missing"
                )
            finally:
                connection.close()

    def _publish_stranded(self) -> int:
        """Publish requests whose enqueue stopped between storing and the broker's confirm."""
        cutoff = now() - timedelta(seconds=self.state.settings.sweep_interval_seconds)
        count = 0
        for marker in self.state.requests.unpublished_before(cutoff):
            record = self.state.requests.get(marker["_id"])
            if record is not None and record["status"] == "queued":
                try:
                    self._publisher.publish(record["user_id"], record["_id"])
                except LaneFull:
                    continue  # tried again at the next sweep, once the lane has room
                count += 1
            self.state.requests.published(marker["_id"])
        return count

    def _wake(self, user_ids: list[str]) -> None:
        with self._pool.channel() as channel:
            for user_id in user_ids:
                token = encode({"user_id": user_id})
                channel.basic_publish("", self.state.names.ready, token, PERSISTENT)


def _queue_state(connection: pika.BlockingConnection, queue: str) -> str:
    """'missing', 'empty', 'ready' (has messages), or 'locked' (exclusive to another connection)."""
    channel = connection.channel()
    try:
        ready = channel.queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == NOT_FOUND:
            return "missing"
        if error.reply_code == RESOURCE_LOCKED:
            return "locked"
        raise
    channel.close()
    return "ready" if ready else "empty"


def create_worker(settings: Settings) -> tuple[WorkerState, list[Callable[[], None]]]:
    """The worker's shared state and the loops to run in threads; tests use this door too."""
    db = connect(settings)
    try:
        ensure_indexes(db)
    except DatabaseError:
        log.warning("database unavailable at start; indexes are created by the next process that reaches it")
    state = WorkerState(
        settings=settings,
        registry=build_registry(settings),
        requests=Requests(db),
        names=QueueNames.of(settings),
    )
    loops: list[Callable[[], None]] = [Slot(i, state).run for i in range(settings.worker_slots)]
    loops.append(Sweeper(state).run)
    return state, loops


def run(settings: Settings) -> None:
    """Run a worker until SIGTERM or SIGINT; each slot finishes its current request first."""
    state, loops = create_worker(settings)

    def request_stop(signum: int, _frame: object) -> None:
        log.info("stopping on signal %d", signum)
        state.stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    threads = [threading.Thread(target=loop, name=f"lanes-{i}", daemon=True) for i, loop in enumerate(loops)]
    for thread in threads:
        thread.start()
    log.info("worker started with %d slots", settings.worker_slots)
    while any(thread.is_alive() for thread in threads[:-1]):
        for thread in threads:
            thread.join(timeout=0.5)
    state.stop.set()
