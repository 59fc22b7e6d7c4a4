"""The backlog as the broker and the database see it, measured when Prometheus scrapes.

These numbers describe the system, not a process: they must be there while the
worker is scaled to zero (that is when "backlog but no worker" must be seen), so
the status function exports them. No label names a user or a partition.

Every request waits in one of the LANE_PARTITIONS partition queues, and which users
have work is known only inside the worker process holding that partition; so the
figures per lane are the worker's (lanes.metrics.lanes_seen), and the broker gives
what it can see from outside: requests per partition (ready: no worker has taken
them; unacknowledged: a worker holds them, waiting or running), which partitions are
held, and how many worker processes are on the roster.

The oldest pending request's age is RabbitMQ's `head_message_timestamp`: each message
is stamped with its acceptance time, and a classic queue reports the older of two
stamps, its next ready message's and its oldest unacknowledged message's, so the
requests a worker holds (all unacknowledged until settled) count. Messages paged out
to disk are not looked at, and quorum queues report no stamp at all. Not the
database: on FerretDB, finding the oldest record by status scans the whole collection.

Cost per scrape is bounded and cached (METRICS_CACHE_SECONDS): one management API
call for the partitions and the roster (a page holds PAGE_SIZE queues), and an
estimated count of dead letters.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from pymongo.database import Database
from pymongo.errors import PyMongoError

from lanes.broker import QueueNames
from lanes.lane.messages import partition_of
from lanes.settings import Settings

log = logging.getLogger("lanes.metrics")

PAGE_SIZE = 500
MAX_PAGES = 20  # 10,000 queues: far beyond any LANE_PARTITIONS, so the listing is whole
TIMEOUT_SECONDS = 3.0
PARTITION_COLUMNS = "name,messages,messages_ready,messages_unacknowledged,head_message_timestamp,consumers"


@dataclass
class Snapshot:
    broker_up: bool = False
    database_up: bool = False
    partitions: int = 0
    partitions_held: int = 0
    backlog: int = 0
    backlog_unheld: int = 0
    workers: int = 0
    # None: requests wait, but no partition holding them reports a head timestamp.
    oldest_pending_age: float | None = 0.0
    dead_letters: int = 0
    undeliverable: int = 0


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
    """A Prometheus collector of backlog, worker and dependency gauges (docs/metrics.md lists them)."""

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
        # Every partition that exists, also one beyond LANE_PARTITIONS left by an earlier
        # setting: its requests are backlog that no worker will take.
        partition_prefix = self._names.partition(0).removesuffix("0")
        overflow_prefix = self._names.overflow("")
        partitions, overflows = f"{_escaped(partition_prefix)}[0-9]+", f"{_escaped(overflow_prefix)}.+"
        others = f"{_escaped(self._names.workers)}|{_escaped(self._names.undeliverable)}"
        regex = f"^({partitions}|{overflows}|{others})$"
        queues: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            # By name: an order that does not change between two pages' calls.
            listing = self._api.queues(regex, page, columns=PARTITION_COLUMNS, most="name")
            queues.extend(listing.get("items") or ())
            if page >= int(listing.get("page_count") or 0):
                break
        heads: list[float] = []
        unstamped = False
        held = {str(q.get("name")) for q in queues if int(q.get("consumers") or 0) > 0}
        for queue in queues:
            consumers = int(queue.get("consumers") or 0)
            name = str(queue.get("name"))
            if name == self._names.workers:
                snapshot.workers = consumers  # absent (auto-deleted) while no worker runs
                continue
            if name == self._names.undeliverable:
                snapshot.undeliverable = int(queue.get("messages") or 0)
                continue
            messages = int(queue.get("messages") or 0)
            if name.startswith(overflow_prefix):
                # A deep lane's excess: taken by whoever holds its lane's partition.
                lane = name.removeprefix(overflow_prefix)
                partition = self._names.partition(partition_of(lane, self._settings.lane_partitions))
                unheld = partition not in held
            else:
                snapshot.partitions += 1
                snapshot.partitions_held += consumers > 0
                unheld = True
            snapshot.backlog += messages
            snapshot.backlog_unheld += int(queue.get("messages_ready") or 0) if unheld else 0
            if queue.get("head_message_timestamp"):
                heads.append(float(queue["head_message_timestamp"]))
            elif messages:
                unstamped = True
        if heads:
            snapshot.oldest_pending_age = max(0.0, self._wall_clock() - min(heads))
        elif unstamped:
            snapshot.oldest_pending_age = None

    def _measure_database(self, snapshot: Snapshot) -> None:
        snapshot.dead_letters = self._db.dead_letters.estimated_document_count()


def _escaped(name: str) -> str:
    """A queue name as a literal in the management API's regex (QUEUE_PREFIX allows no other metacharacter)."""
    return name.replace(".", r"\.")


def _families(snapshot: Snapshot) -> Iterator[Metric]:
    yield _gauge(
        "lanes_broker_up", "1 when RabbitMQ's management API answered the last measurement.", snapshot.broker_up
    )
    yield _gauge("lanes_database_up", "1 when the database answered the last measurement.", snapshot.database_up)
    if snapshot.broker_up:
        yield _gauge(
            "lanes_backlog_requests",
            "Requests accepted and not yet settled, in partitions and overflow queues: waiting or running.",
            snapshot.backlog,
        )
        yield _gauge(
            "lanes_backlog_unheld_requests",
            "Of those, requests no worker process has taken yet (ready where no worker holds the partition).",
            snapshot.backlog_unheld,
        )
        yield _gauge(
            "lanes_undeliverable_requests",
            "Requests the broker dead-lettered instead of delivering again; they wait for an operator.",
            snapshot.undeliverable,
        )
        yield _gauge("lanes_partitions", "Partition queues that exist.", snapshot.partitions)
        yield _gauge("lanes_partitions_held", "Partitions a worker process holds (consumes).", snapshot.partitions_held)
        yield _gauge(
            "lanes_workers_connected",
            "Worker processes connected to the broker (on its roster); 0 means none is running.",
            snapshot.workers,
        )
        if snapshot.oldest_pending_age is not None:
            yield _gauge(
                "lanes_oldest_pending_age_seconds",
                "Age of the oldest request not yet settled, waiting or running, from RabbitMQ's head timestamps "
                "(a partition's next ready and oldest unacknowledged message, in memory); 0 when none is.",
                snapshot.oldest_pending_age,
            )
    if snapshot.database_up:
        yield _gauge("lanes_dead_letters", "Requests kept in the dead-letter store.", snapshot.dead_letters)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))
