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
from lanes.lane.dispatcher import HandBack
from lanes.lane.messages import LaneMessage, as_record
from lanes.requests import Outcome, Requests, accepted_at, stored_value
from lanes.settings import Settings

log = logging.getLogger("lanes.worker")


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
        self, settings: Settings, registry: Registry, requests: Requests, stop: threading.Event, waiting: Waiting
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._requests = requests
        self._stop = stop
        self._waiting = waiting
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lanes-handler")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def run(self, message: LaneMessage) -> None:
        """Settle the request at the head of the lane: returns once its outcome is recorded."""
        record = as_record(message)
        record["created_at"] = datetime.fromtimestamp(accepted_at(message.request_id), UTC)
        claim = self._requests.claim(message.request_id)
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
        else:  # redelivered: an earlier holder started it and died, or this is a copy
            if self._requests.recorded_outcome(message.request_id) is not None:
                return  # finished already: a finished request never runs again
            metrics.request_redelivered(record)
            if claim.attempts >= self._settings.max_attempts:
                self._give_up(record, "the worker stopped during every attempt")
                return
            record["attempts"] = claim.attempts + 1
            self._requests.count_attempt(message.request_id, record["attempts"])
        self._attempt_until_settled(record)

    def _attempt_until_settled(self, record: dict[str, Any]) -> None:
        settings = self._settings
        while True:
            attempt = record["attempts"]
            started = time.monotonic()
            ok, value = self._execute(record, attempt)
            duration = time.monotonic() - started
            metrics.attempt_finished(record, ok, duration)
            if ok:
                self._finish(record, Outcome(status="done", result=value))
                metrics.request_settled(record, "done")
                log.info("request done", extra=_fields(record, "done", attempt, duration))
                return
            if attempt >= settings.max_attempts:
                self._give_up(record, str(value))
                return
            metrics.request_retried(record)
            log.info("request retrying", extra=_fields(record, "retrying", attempt, duration))
            # The lane waits for its head to settle, as an SQS FIFO group does.
            backoff = settings.retry_backoff_seconds * 2 ** (attempt - 1)
            self._waiting.wait(backoff, self._stop.is_set)
            if self._stop.is_set():
                raise HandBack  # the partition's next holder goes on with the next attempt
            record["attempts"] = attempt + 1
            self._requests.count_attempt(record["_id"], record["attempts"])

    def _finish(self, record: dict[str, Any], outcome: Outcome) -> None:
        self._requests.finish(
            record["_id"], record["user_id"], outcome, record["attempts"], record["action"], record.get("started_at")
        )

    def _give_up(self, record: dict[str, Any], error: str) -> None:
        self._finish(record, Outcome(status="failed", error=error))
        self._requests.record_dead_letter(record, error, record["attempts"])
        metrics.request_settled(record, "failed")
        metrics.request_dead_lettered(record)
        log.info("request failed", extra=_fields(record, "failed", record["attempts"]))

    def _execute(self, record: dict[str, Any], attempt: int) -> tuple[bool, Any]:
        """Run the action in the handler thread; the slot waits for it and
        is woken the moment the handler returns."""
        handler = self._registry.get(record["action"])
        if handler is None:
            return False, f"unknown action {record['action']!r}"
        context = ActionContext(
            request_id=record["_id"], user_id=record["user_id"], attempt=attempt, settings=self._settings
        )
        thread_ident: list[int] = []

        def call() -> Any:
            thread_ident.append(threading.get_ident())
            return handler(stored_value(record.get("data_json")), context)

        future = self._executor.submit(call)
        future.add_done_callback(lambda _: self._waiting.wake())
        self._waiting.wait(self._settings.request_timeout_seconds, future.done)
        if future.done():
            return _settle(future)
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


def _settle(future: Future[Any]) -> tuple[bool, Any]:
    try:
        value = future.result()
    except ActionFailed as error:
        return False, str(error)
    except AttemptTimedOut:
        return False, "timed out"
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
