"""One request's life in a worker slot: claim it, attempt it with retries, record its outcome.

A slot calls `RequestRunner.run` for the request its dispatcher handed it, and the
message is acknowledged once `run` returns; by then the request's one outcome is in
the database (or was already: a redelivered copy is never run again).

Retries: a failed attempt is tried again after RETRY_BACKOFF_SECONDS * 2^(attempt-1),
up to MAX_ATTEMPTS, while the lane waits (as an SQS FIFO group does); then the request
is `failed` and a dead letter is kept. Attempts never overlap: a timed-out handler is
interrupted, and the next attempt starts only once its thread has ended.
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lanes import metrics
from lanes.actions import ActionContext, ActionFailed, Registry
from lanes.db import now
from lanes.lane.attempts import Attempts
from lanes.lane.fencing import Fence, HandBack, Superseded, attempt_deadline
from lanes.lane.messages import LaneMessage, as_record
from lanes.requests import Claim, Outcome, Requests, accepted_at, stored_value
from lanes.settings import Settings

log = logging.getLogger("lanes.worker")

# How often a holder waiting out an earlier holder's attempt looks for its outcome.
TAKE_OVER_POLL_SECONDS = 0.5


class AttemptTimedOut(BaseException):
    """Raised inside a handler's thread when its attempt ran past REQUEST_TIMEOUT_SECONDS.

    A BaseException, so a handler's `except Exception` does not swallow it."""


@dataclass(frozen=True)
class Waiting:
    """How a slot waits while a handler runs or a retry backs off: `wait(seconds, until)`
    returns when `until()` holds or the time is up, and `wake()` (from any thread)
    makes it look at `until()` at once."""

    wait: Callable[[float, Callable[[], bool]], None]
    wake: Callable[[], None]


class RequestRunner:
    """Runs requests for one slot; its handler thread is the slot's own."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        requests: Requests,
        attempts: Attempts,
        stop: threading.Event,
        waiting: Waiting,
        lease: Callable[[], bool] = lambda: True,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._requests = requests
        self._attempts = attempts
        self._stop = stop
        self._waiting = waiting
        self._lease = lease
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lanes-handler")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def run(self, message: LaneMessage, epoch: int) -> None:
        """Settle the request at the head of the lane, as holder `epoch` of its partition:
        returns once its outcome is recorded. Raises HandBack (stopping, or the broker lease
        lapsed: nothing started) or Superseded (a later holder has the request)."""
        self._hold_lease()
        record = as_record(message)
        record["created_at"] = datetime.fromtimestamp(accepted_at(message.request_id), UTC)
        claim = self._requests.claim(message.request_id, epoch, self._deadline())
        if claim.by == "refused":
            return  # its enqueue answered 503: it never runs
        if claim.by != "worker":
            # Cancelled before its turn; the canceller may have died before recording it.
            self._requests.finish(message.request_id, message.user_id, Outcome("cancelled"), 0, message.action)
            metrics.request_settled(record, "cancelled")
            return
        record.update(started_at=claim.at, attempts=claim.attempts)
        if claim.fresh:
            metrics.request_started(record)
            fence: Fence | None = Fence(epoch, 1, claim.deadline or self._deadline())
        else:  # an earlier holder started it, or this is a copy
            if self._requests.recorded_outcome(message.request_id) is not None:
                return  # finished already: a finished request never runs again
            metrics.request_redelivered(record)
            fence = self._take_over(record, claim, epoch)
        if fence is not None:
            self._attempt_until_settled(record, fence)

    def _take_over(self, record: dict[str, Any], claim: Claim, epoch: int) -> Fence | None:
        """Go on with a request an earlier holder started: wait out its live attempt's
        deadline (this lane only), then start the next attempt; None when it is settled."""
        while True:
            latest = self._attempts.latest(record["_id"], claim)
            if max(claim.epoch, latest.epoch) > epoch:
                raise Superseded
            # This holding's own attempt is over: a lane runs in one slot of a process at a time,
            # and this slot is that one (it is here again after a database failure).
            over = latest.ended or latest.epoch == epoch
            if not over and latest.deadline is not None and self._wait_out(record, latest.deadline):
                return None  # its holder finished it meanwhile
            record["attempts"] = latest.number
            if latest.number >= self._settings.max_attempts:
                self._give_up(record, "the worker stopped during every attempt")
                return None
            fence = self._start_attempt(record, latest.number + 1, epoch)
            if fence is not None:
                return fence
            claim = self._requests.claim(record["_id"], epoch, self._deadline())  # someone started it: look again

    def _wait_out(self, record: dict[str, Any], deadline: datetime) -> bool:
        """Wait until the deadline passes or an outcome is recorded (True)."""
        while (left := (deadline - datetime.now(UTC)).total_seconds()) > 0:
            if self._requests.recorded_outcome(record["_id"]) is not None:
                return True
            self._waiting.wait(min(left, TAKE_OVER_POLL_SECONDS), self._stop.is_set)
            if self._stop.is_set():
                raise HandBack
        return self._requests.recorded_outcome(record["_id"]) is not None

    def _start_attempt(self, record: dict[str, Any], number: int, epoch: int) -> Fence | None:
        """Write attempt `number` down under this holder's fence; None if another started it."""
        self._hold_lease()
        deadline = self._deadline()
        if not self._attempts.start(record["_id"], number, epoch, deadline):
            return None
        record["attempts"] = number
        return Fence(epoch, number, deadline)

    def _attempt_until_settled(self, record: dict[str, Any], fence: Fence) -> None:
        settings = self._settings
        while True:
            self._hold_lease()
            started = time.monotonic()
            ok, value = self._execute(record, fence)
            duration = time.monotonic() - started
            if not fence.valid():
                # Past its deadline (the process was paused, or the handler ignored its time
                # limit): a later holder may be running it now, so nothing of it is recorded.
                ok, value = False, "the attempt ran past its deadline"
            metrics.attempt_finished(record, ok, duration)
            if ok:
                self._finish(record, Outcome(status="done", result=value))
                metrics.request_settled(record, "done")
                log.info("request done", extra=_fields(record, "done", fence.attempt, duration))
                return
            if fence.attempt >= settings.max_attempts:
                if fence.valid():
                    self._give_up(record, str(value))
                    return
                raise Superseded  # its next holder decides, after the deadline
            metrics.request_retried(record)
            log.info("request retrying", extra=_fields(record, "retrying", fence.attempt, duration))
            # The lane waits for its head to settle, as an SQS FIFO group does.
            backoff = settings.retry_backoff_seconds * 2 ** (fence.attempt - 1)
            self._waiting.wait(backoff, self._stop.is_set)
            if self._stop.is_set():
                self._attempts.end(record["_id"], fence.attempt)
                raise HandBack  # the partition's next holder goes on with the next attempt
            next_fence = self._start_attempt(record, fence.attempt + 1, fence.epoch)
            if next_fence is None:
                raise Superseded
            fence = next_fence

    def _hold_lease(self) -> None:
        if self._stop.is_set() or not self._lease():
            raise HandBack

    def _deadline(self) -> datetime:
        return attempt_deadline(now(), self._settings.request_timeout_seconds, self._settings.fence_grace_seconds)

    def _finish(self, record: dict[str, Any], outcome: Outcome) -> None:
        self._requests.finish(
            record["_id"], record["user_id"], outcome, record["attempts"], record["action"], record.get("started_at")
        )
        if record["attempts"] > 1:
            self._attempts.forget(record["_id"], record["attempts"])

    def _give_up(self, record: dict[str, Any], error: str) -> None:
        self._finish(record, Outcome(status="failed", error=error))
        self._requests.record_dead_letter(record, error, record["attempts"])
        metrics.request_settled(record, "failed")
        metrics.request_dead_lettered(record)
        log.info("request failed", extra=_fields(record, "failed", record["attempts"]))

    def _execute(self, record: dict[str, Any], fence: Fence) -> tuple[bool, Any]:
        """Run the action in the handler thread; the slot waits for it and
        is woken the moment the handler returns."""
        handler = self._registry.get(record["action"])
        if handler is None:
            return False, f"unknown action {record['action']!r}"
        context = ActionContext(
            request_id=record["_id"],
            user_id=record["user_id"],
            attempt=fence.attempt,
            settings=self._settings,
            fence=fence,
        )
        thread_ident: list[int] = []

        def call() -> Any:
            thread_ident.append(threading.get_ident())
            return handler(stored_value(record.get("data_json")), context)

        future = self._executor.submit(call)
        future.add_done_callback(lambda _: self._waiting.wake())
        self._waiting.wait(self._settings.request_timeout_seconds, future.done)
        if future.done():
            return _settle(future, record)
        self._interrupt(future, thread_ident)
        return False, f"timed out after {self._settings.request_timeout_seconds:g}s"

    def _interrupt(self, future: Future[Any], thread_ident: list[int]) -> None:
        """Stop a timed-out handler and wait until its thread has ended, however long that takes:
        the next attempt (or the lane's next request) must not run beside it."""
        if thread_ident:
            # What Dramatiq's time limits do: raise in the handler's thread at its next bytecode.
            interrupt = ctypes.py_object(AttemptTimedOut)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_ident[0]), interrupt)
        while not future.done():
            self._waiting.wait(self._settings.request_timeout_seconds, future.done)
            if not future.done():
                log.warning("a timed-out handler has not returned yet; its lane waits for it")
        # Should the handler have returned just before the interruption, the exception lands
        # in the pool's own loop and ends its thread: the next attempt gets a fresh one.
        self._executor.shutdown(wait=False)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lanes-handler")


def _settle(future: Future[Any], record: dict[str, Any]) -> tuple[bool, Any]:
    try:
        value = future.result()
    except ActionFailed as error:
        return False, str(error)  # meant for the client
    except AttemptTimedOut:
        return False, "timed out"
    except Exception:  # a user's handler may raise anything
        # Its text may hold what the client must not see (paths, queries, other users'
        # data): the client gets a generic error, the log the traceback, the same id in both.
        reference = record.get("correlation_id") or record["_id"]
        log.exception("the handler raised", extra=_fields(record, "attempt_failed", record.get("attempts", 0)))
        return False, f"the action failed unexpectedly (reference {reference})"
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
