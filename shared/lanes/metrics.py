"""The worker's metrics, and the small calls the worker makes to keep them.

Every name starts with `lanes_`, and no label names a user or a request: `action`
is bounded by the action registry (anything else is counted as `other`) and
`outcome` by this module. docs/metrics.md documents each one.

Import this module only after `lanes.multiproc.use_metrics_dir` (the worker's main
does): with PROMETHEUS_MULTIPROC_DIR set, each process writes its values to files
that lanes.exposition merges, so several worker processes add up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lanes import multiproc

# Only for a worker without a multiprocess directory (an in-process test): the files
# are what counts otherwise, whatever registry a metric is attached to.
REGISTRY = CollectorRegistry()

OUTCOMES = ("done", "failed", "cancelled")
ATTEMPT_OUTCOMES = ("ok", "error")
OTHER_ACTION = "other"

PROCESSED = Counter(
    "lanes_requests_processed",
    "Requests a worker brought to their one outcome (done, failed or cancelled).",
    ["action", "outcome"],
    registry=REGISTRY,
)
ATTEMPTS = Counter(
    "lanes_request_attempts",
    "Handler runs, by whether the run succeeded (ok) or raised, timed out or was unknown (error).",
    ["action", "outcome"],
    registry=REGISTRY,
)
RETRIED = Counter(
    "lanes_requests_retried",
    "Failed attempts that are tried again after a back-off, while their lane waits.",
    ["action"],
    registry=REGISTRY,
)
DEAD_LETTERED = Counter(
    "lanes_requests_dead_lettered",
    "Requests that used up their attempts, were marked failed and kept in the dead-letter store.",
    ["action"],
    registry=REGISTRY,
)
REDELIVERED = Counter(
    "lanes_requests_redelivered",
    "Requests found half-done after the worker running them died, and taken over.",
    ["action"],
    registry=REGISTRY,
)
EXECUTION = Histogram(
    "lanes_request_execution_seconds",
    "How long one attempt's handler ran.",
    ["action", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "lanes_request_queue_wait_seconds",
    "From acceptance (the 202) to the first start of a request.",
    ["action"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
    registry=REGISTRY,
)
# `livesum`: the sum over processes that are alive, so an exited worker's slots vanish.
SLOTS = Gauge("lanes_worker_slots", "Execution slots of live workers.", registry=REGISTRY, multiprocess_mode="livesum")
SLOTS_BUSY = Gauge(
    "lanes_worker_slots_busy",
    "Slots running a lane right now.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
WORKERS = Gauge("lanes_workers_live", "Live worker processes.", registry=REGISTRY, multiprocess_mode="livesum")
# Which users have work is known only in the worker process holding their partition, so
# the figures per lane come from here. A partition has one holder: the sums over live
# processes count each lane once.
LANES = Gauge(
    "lanes_worker_lanes",
    "Lanes with work in the partitions live workers hold: a request waiting or running.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
LANES_WAITING = Gauge(
    "lanes_worker_lanes_waiting",
    "Lanes with a request waiting and none running: waiting for a free slot.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
REQUESTS_WAITING = Gauge(
    "lanes_worker_requests_waiting",
    "Requests live workers hold that have not started: behind their lane's running request, or waiting for a slot.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
# `livemax`: the deepest lane of all, where a sum of each process's deepest would mean nothing.
DEEPEST_LANE = Gauge(
    "lanes_worker_lane_depth_max",
    "Requests in the deepest lane live workers hold, waiting and running: a hot lane, without naming its user.",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)

_actions: frozenset[str] = frozenset()


def worker_started(slots: int, actions: Iterable[str]) -> None:
    """Count this process and its slots, and create every labelled series at zero.

    Creating them up front matters: Prometheus' increase() cannot see a counter's
    first step when the series appears already at 1.
    """
    global _actions
    _actions = frozenset(actions)
    WORKERS.set(1)
    SLOTS.set(slots)
    SLOTS_BUSY.set(0)
    lanes_seen(0, 0, 0, 0)
    for action in sorted(_actions):
        for outcome in OUTCOMES:
            PROCESSED.labels(action, outcome)
        for outcome in ATTEMPT_OUTCOMES:
            ATTEMPTS.labels(action, outcome)
            EXECUTION.labels(action, outcome)
        QUEUE_WAIT.labels(action)
        RETRIED.labels(action)
        DEAD_LETTERED.labels(action)
        REDELIVERED.labels(action)


def worker_stopped() -> None:
    """Take this process's live gauges out of the sums as it exits."""
    path = os.environ.get(multiproc.ENV)
    if path:
        multiproc.mark_dead(os.getpid(), Path(path))
    else:
        WORKERS.set(0)
        SLOTS.set(0)
        SLOTS_BUSY.set(0)
        lanes_seen(0, 0, 0, 0)


def slot_busy(delta: int) -> None:
    SLOTS_BUSY.inc(delta)


def lanes_seen(lanes_with_work: int, lanes_waiting: int, waiting_requests: int, deepest_lane: int) -> None:
    """What this process's lanes look like now; the dispatcher reports about once a second.

    `lanes_with_work`: lanes with a request waiting or running here; `lanes_waiting`: of
    those, lanes with a request waiting and none running; `waiting_requests`: requests
    delivered here that have not started; `deepest_lane`: the most requests one lane
    holds here, waiting and running (0 when none has work)."""
    LANES.set(lanes_with_work)
    LANES_WAITING.set(lanes_waiting)
    REQUESTS_WAITING.set(waiting_requests)
    DEEPEST_LANE.set(deepest_lane)


def request_started(record: dict[str, Any]) -> None:
    """A request was claimed; on its first attempt, record how long it waited."""
    created, started = record.get("created_at"), record.get("started_at")
    if record.get("attempts") == 1 and isinstance(created, datetime) and isinstance(started, datetime):
        QUEUE_WAIT.labels(action_label(record)).observe(max(0.0, (started - created).total_seconds()))


def request_redelivered(record: dict[str, Any]) -> None:
    REDELIVERED.labels(action_label(record)).inc()


def attempt_finished(record: dict[str, Any], ok: bool, seconds: float) -> None:
    outcome = "ok" if ok else "error"
    action = action_label(record)
    ATTEMPTS.labels(action, outcome).inc()
    EXECUTION.labels(action, outcome).observe(seconds)


def request_retried(record: dict[str, Any]) -> None:
    RETRIED.labels(action_label(record)).inc()


def request_settled(record: dict[str, Any], outcome: str) -> None:
    PROCESSED.labels(action_label(record), outcome).inc()


def request_dead_lettered(record: dict[str, Any]) -> None:
    DEAD_LETTERED.labels(action_label(record)).inc()


def action_label(record: dict[str, Any]) -> str:
    """The record's action if the registry knows it: a label value must come from a bounded set."""
    action = record.get("action")
    return action if isinstance(action, str) and action in _actions else OTHER_ACTION
