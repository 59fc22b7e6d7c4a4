"""The lanes as the broker and the database see them, measured when Prometheus scrapes.

These numbers describe the system, not a process: they must be there while the
worker is scaled to zero (that is when "backlog but no worker" must be seen), so
the status function exports them. No label names a user: how deep lanes are is
a histogram of depths, never one series per lane.

Cost per scrape is bounded and cached (METRICS_CACHE_SECONDS): one management
API call for the ready queue, at most MAX_PAGES pages of lane queues (name,
depth and the head's timestamp only), and an estimated count of dead letters.
The oldest pending request's age comes from the lanes' heads, stamped with
their acceptance time, not from the database: on FerretDB, finding the oldest
record by status scans the whole collection.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from prometheus_client.metrics_core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from pymongo.database import Database
from pymongo.errors import PyMongoError

from lanes.broker import QueueNames
from lanes.settings import Settings

log = logging.getLogger("lanes.metrics")

DEPTH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
PAGE_SIZE = 500
MAX_PAGES = 20  # 10,000 lanes with work per scrape; beyond that the depths are a sample
TIMEOUT_SECONDS = 3.0


@dataclass
class Snapshot:
    broker_up: bool = False
    database_up: bool = False
    lanes: int = 0
    lanes_with_backlog: int = 0
    backlog: int = 0
    depths: list[int] = field(default_factory=list)
    lanes_waiting: int = 0
    ready_consumers: int = 0
    oldest_pending_age: float = 0.0
    dead_letters: int = 0


class ManagementApi:
    """The few RabbitMQ management API reads Lanes needs, for one vhost."""

    def __init__(self, settings: Settings) -> None:
        parts = urlsplit(settings.management_url)
        self._base = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        credentials = f"{parts.username or ''}:{parts.password or ''}".encode()
        self._auth = "Basic " + base64.b64encode(credentials).decode()
        self._vhost = quote(settings.rabbitmq_vhost, safe="")

    def get(self, path: str, **params: str | int) -> Any:
        query = f"?{urlencode(params)}" if params else ""
        request = urllib.request.Request(f"{self._base}/api/{path}{query}", headers={"Authorization": self._auth})
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return json.load(response)

    def queue(self, name: str) -> dict[str, Any]:
        return dict(self.get(f"queues/{self._vhost}/{quote(name, safe='')}", columns="messages_ready,consumers"))

    def queues(
        self, name_regex: str, page: int, columns: str = "name,messages,head_message_timestamp", most: str = "messages"
    ) -> dict[str, Any]:
        """One page of the queues whose names match, with these columns, the most `most` first."""
        return dict(
            self.get(
                f"queues/{self._vhost}",
                page=page,
                page_size=PAGE_SIZE,
                name=name_regex,
                use_regex="true",
                columns=columns,
                sort=most,
                sort_reverse="true",
            )
        )


class LaneStats:
    """A Prometheus collector of lane, backlog and dependency gauges (docs/metrics.md lists them)."""

    def __init__(
        self,
        settings: Settings,
        db: Database[dict[str, Any]],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._db = db
        self._api = ManagementApi(settings)
        self._names = QueueNames(settings.queue_prefix)
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._cached: tuple[float, Snapshot] | None = None

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time; describing would cost a scrape

    def collect(self) -> Iterator[Metric]:
        yield from _families(self.snapshot())

    def snapshot(self) -> Snapshot:
        """The current numbers, at most METRICS_CACHE_SECONDS old; one measurement at a time."""
        with self._lock:
            now = self._clock()
            if self._cached is None or now - self._cached[0] >= self._settings.metrics_cache_seconds:
                self._cached = (now, self._measure())
            return self._cached[1]

    def _measure(self) -> Snapshot:
        snapshot = Snapshot()
        try:
            self._measure_broker(snapshot)
            snapshot.broker_up = True
        except (OSError, ValueError) as error:  # urllib's errors are OSErrors; bad JSON a ValueError
            log.warning("lane statistics: the broker's management API failed: %r", error)
        try:
            self._measure_database(snapshot)
            snapshot.database_up = True
        except PyMongoError as error:
            log.warning("lane statistics: the database failed: %s", error)
        return snapshot

    def _measure_broker(self, snapshot: Snapshot) -> None:
        try:
            ready = self._api.queue(self._names.ready)
        except urllib.error.HTTPError as error:
            if error.code != 404:  # no ready queue yet: no worker or enqueue ever ran
                raise
            ready = {}
        snapshot.lanes_waiting = int(ready.get("messages_ready") or 0)
        snapshot.ready_consumers = int(ready.get("consumers") or 0)
        lane_regex = "^" + self._names.lane("").replace(".", r"\.")
        oldest: float | None = None
        for page in range(1, MAX_PAGES + 1):
            listing = self._api.queues(lane_regex, page)
            snapshot.lanes = int(listing.get("filtered_count") or 0)
            items = [queue for queue in listing.get("items") or () if int(queue.get("messages") or 0) > 0]
            snapshot.depths.extend(int(queue["messages"]) for queue in items)
            # Lanes stamp each message with its acceptance time (older messages may lack it).
            heads = [float(queue["head_message_timestamp"]) for queue in items if queue.get("head_message_timestamp")]
            if heads and (oldest is None or min(heads) < oldest):
                oldest = min(heads)
            # Sorted deepest first: the first empty lane ends the lanes with work.
            if page >= int(listing.get("page_count") or 0) or len(items) < len(listing.get("items") or ()):
                break
        snapshot.lanes_with_backlog = len(snapshot.depths)
        snapshot.backlog = sum(snapshot.depths)
        if oldest is not None:
            snapshot.oldest_pending_age = max(0.0, self._wall_clock() - oldest)

    def _measure_database(self, snapshot: Snapshot) -> None:
        snapshot.dead_letters = self._db.dead_letters.estimated_document_count()


def _families(snapshot: Snapshot) -> Iterator[Metric]:
    yield _gauge(
        "lanes_broker_up", "1 when RabbitMQ's management API answered the last measurement.", snapshot.broker_up
    )
    yield _gauge("lanes_database_up", "1 when the database answered the last measurement.", snapshot.database_up)
    if snapshot.broker_up:
        yield _gauge("lanes_lanes", "Lane queues that exist (a lane is removed after its idle period).", snapshot.lanes)
        yield _gauge("lanes_lanes_with_backlog", "Lanes holding at least one request.", snapshot.lanes_with_backlog)
        yield _gauge("lanes_backlog_requests", "Requests in all lanes: waiting or running.", snapshot.backlog)
        yield _gauge("lanes_lanes_waiting", "Lanes waiting for a worker slot (wake-up tokens).", snapshot.lanes_waiting)
        yield _gauge(
            "lanes_ready_consumers",
            "Worker slots listening for lanes to run; 0 means no worker is running.",
            snapshot.ready_consumers,
        )
        yield _depth_histogram(snapshot.depths)
        yield _gauge(
            "lanes_oldest_pending_age_seconds",
            "Age of the oldest request in a lane (waiting, or running at a lane's head); 0 when none is.",
            snapshot.oldest_pending_age,
        )
    if snapshot.database_up:
        yield _gauge("lanes_dead_letters", "Requests kept in the dead-letter store.", snapshot.dead_letters)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _depth_histogram(depths: list[int]) -> GaugeHistogramMetricFamily:
    buckets = [(str(bound), float(sum(depth <= bound for depth in depths))) for bound in DEPTH_BUCKETS]
    buckets.append(("+Inf", float(len(depths))))
    return GaugeHistogramMetricFamily(
        "lanes_lane_depth",
        "Lanes with work, by how many requests each holds (a snapshot, not per user).",
        buckets=buckets,
        gsum_value=float(sum(depths)),
    )
