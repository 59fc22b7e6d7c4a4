"""Scale the worker 0..N on the lane partitions, locally, the way KEDA does in a cluster.

Every request waits in one of LANE_PARTITIONS queues, `<prefix>.partition.<k>` with
k = crc32(user) % LANE_PARTITIONS. A worker process holds a fair share of the
partitions and takes every message of a partition it holds at once (no prefetch
limit). So in the broker a partition's *ready* messages are work no worker holds
(with no worker running, all of it) and its *unacknowledged* ones are work a worker
holds, waiting in its scheduler or running in a slot. Which lanes have work is not
visible there, only how many messages each partition holds.

Workers that can be useful = min(ceil(messages / slots per worker), partitions with
messages), within [min, max]: a lane lives in one partition and a partition in one
worker, so a worker can only help with a partition that holds work, and one deep lane
needs one worker however many requests it queues. Workers start as soon as that is
more than run, and stop (SIGTERM: each finishes what its slots run, and the broker
puts the rest back at the head of its partitions) once fewer would do for a whole
idle period; with every partition empty that is zero workers.

Counted from exact numbers, that is never fewer workers than can be useful, and it is
more in two ways, both bounded by the partitions with messages and by `max`:
* messages are at least the busy lanes, and more when lanes are deep: two users with
  forty requests each, in two partitions, start two workers where one worker's slots
  could run both lanes.
* where the partitions go is not the autoscaler's choice: each worker holds
  ceil(partitions / workers) of them whatever they hold, so both busy partitions may
  land on one worker while the other has nothing to run (and lanes wait for the first
  one's slots: a limit of the fair share, which no count removes).
The idle period takes the surplus away once the messages shrink.

Two readings, because neither alone is enough:
* a passive declare of each partition over AMQP answers at once with its ready count
  (404: not declared yet, so empty). It makes the cold start fast: with no worker
  every message is ready, and the first one starts a worker within one polling
  interval.
* the management API, once a second, adds the messages that workers hold. The broker
  refreshes those counts every few seconds (collect_statistics_interval, 5 s by
  default): growth past the running workers waits that long for work that arrives in
  held partitions, and scaling down waits that long after the work is done. Per
  partition the larger of the fresh ready count and the lagging total counts, so
  messages handed from one worker to the next (unacknowledged, ready, unacknowledged
  again) count once.
Without the management API the messages that workers hold cannot be seen: the
autoscaler still starts workers on ready messages but stops none, rather than stop
one in the middle of a backlog.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import pika

from deploy.template import lane_queue_pattern
from lanes.broker import Channel, QueueMissing, QueueNames, open_connection
from lanes.errors import BrokerError
from lanes.lane.messages import partition_of
from lanes.settings import Settings

log = logging.getLogger("lanes.autoscaler")

# After a worker starts, the partitions are shared anew at the workers' next balance
# (lanes.lane.balance.BALANCE_SECONDS) and the waiting signal follows a balance later: lanes
# still shown waiting before then say nothing about whether one more worker helped.
GROWTH_SETTLE_SECONDS = 2.5

# The management API's largest page; a deployment has far fewer partitions.
MANAGEMENT_PAGE_SIZE = 500


@dataclass(frozen=True)
class Policy:
    """Bounds and pace of scaling, from template.yaml's `scale` of the worker."""

    min_workers: int
    max_workers: int
    lanes_per_worker: int  # WORKER_SLOTS: a slot runs one lane at a time
    idle_seconds: float
    shutdown_seconds: float = 90.0
    interval: float = 0.25

    def desired(self, messages: int, busy_partitions: int) -> int:
        """Workers that can be useful for this many messages spread over this many
        partitions, within [min, max]."""
        wanted = min(math.ceil(messages / self.lanes_per_worker), busy_partitions)
        return max(self.min_workers, min(self.max_workers, wanted))


@dataclass(frozen=True)
class Reading:
    """Per partition, by index: its ready messages (fresh, over AMQP) and all its
    messages (management API, seconds old; None: the API did not answer)."""

    ready: tuple[int, ...]
    messages: tuple[int, ...] | None
    # Worker processes, over AMQP (fresh): on the roster, holding work, with lanes waiting
    # for a slot (lanes.broker.PartitionSession.show).
    joined: int = 0
    busy: int = 0
    waiting: int = 0
    spare: int = 0  # with a free slot and no lane waiting: it takes partitions passed on

    @property
    def work(self) -> tuple[int, ...]:
        counted = self.messages if self.messages is not None else (0,) * len(self.ready)
        return tuple(max(ready, total) for ready, total in zip(self.ready, counted, strict=True))

    @property
    def total(self) -> int:
        return sum(self.work)

    @property
    def busy_partitions(self) -> int:
        return sum(1 for count in self.work if count)


class PartitionQueues:
    """Reads the partitions' counts over AMQP and the management API."""

    def __init__(self, settings: Settings, management_url: str, management_every: float = 1.0) -> None:
        self._settings = settings
        names = QueueNames.of(settings)
        self._names = [names.partition(index) for index in range(settings.lane_partitions)]
        self._signals = (names.workers, names.busy_workers, names.waiting_workers, names.spare_workers)
        self._pattern = lane_queue_pattern(settings.queue_prefix)
        self._management_url = management_url
        self._management_every = management_every
        self._connection: pika.BlockingConnection | None = None
        self._channel: Channel | None = None
        self._declared: set[int] = set()
        self._probe_from = 0
        self._messages: tuple[int, ...] | None = None
        self._messages_at = float("-inf")

    def read(self) -> Reading:
        """The current counts; BrokerError when RabbitMQ cannot be asked."""
        ready = self._ready_counts()
        joined, busy, waiting, spare = self._worker_counts()
        if time.monotonic() - self._messages_at >= self._management_every:
            self._messages = self._management_counts()
            self._messages_at = time.monotonic()
        return Reading(ready=ready, messages=self._messages, joined=joined, busy=busy, waiting=waiting, spare=spare)

    def _worker_counts(self) -> tuple[int, int, int, int]:
        assert self._channel is not None  # _ready_counts opened it
        counts = []
        for name in self._signals:
            try:
                counts.append(self._channel.counts(name).consumers)
            except QueueMissing:
                counts.append(0)  # no worker has run yet
            except BrokerError:
                self.close()
                raise
        return counts[0], counts[1], counts[2], counts[3]

    def close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
        self._connection = None
        self._channel = None

    def _ready_counts(self) -> tuple[int, ...]:
        try:
            if self._connection is None or not self._connection.is_open or self._channel is None:
                self._connection = open_connection(self._settings)
                self._channel = Channel(self._connection)
            channel = self._channel
            ready = [0] * len(self._names)
            # A 404 costs a channel and a line in the broker's log, so a reading stops at its
            # first undeclared partition, and the next starts after it. A partition never
            # expires, and the first enqueue declares them all before it publishes.
            count = len(self._names)
            undeclared = sorted(set(range(count)) - self._declared, key=lambda i: (i - self._probe_from) % count)
            for index in sorted(self._declared) + undeclared:
                try:
                    ready[index] = channel.counts(self._names[index]).ready
                except QueueMissing:
                    self._declared.discard(index)
                    self._probe_from = index + 1
                    if index in undeclared:
                        break
                else:
                    self._declared.add(index)
            return tuple(ready)
        except BrokerError:
            self.close()
            raise

    def _management_counts(self) -> tuple[int, ...] | None:
        """Every partition's messages in one call; None when the API does not answer."""
        api = urllib.parse.urlsplit(self._management_url)
        amqp = urllib.parse.urlsplit(self._settings.rabbitmq_urls[0])
        # The name filter applies only to a paged listing; without `page` every queue comes back.
        query = urllib.parse.urlencode(
            {
                "page": 1,
                "page_size": MANAGEMENT_PAGE_SIZE,
                "name": self._pattern,
                "use_regex": "true",
                "columns": "name,messages",
            }
        )
        vhost = urllib.parse.quote(self._settings.rabbitmq_vhost, safe="")
        base = api._replace(netloc=api.netloc.rpartition("@")[2], query="", fragment="").geturl().rstrip("/")
        request = urllib.request.Request(f"{base}/api/queues/{vhost}?{query}")
        user = urllib.parse.unquote(api.username or amqp.username or "guest")
        password = urllib.parse.unquote(api.password or amqp.password or "guest")
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                answer = json.load(response)
        except (OSError, ValueError, http.client.HTTPException):
            return None  # no management plugin, or not reachable
        items = answer.get("items") if isinstance(answer, dict) else None
        if not isinstance(items, list):
            return None
        index_of = {name: index for index, name in enumerate(self._names)}
        overflow = QueueNames.of(self._settings).overflow("")
        messages = [0] * len(self._names)
        for item in items:
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                continue
            index = index_of.get(name)
            if index is None and name.startswith(overflow):  # a deep lane's: its partition's work
                index = partition_of(name.removeprefix(overflow), len(self._names))
            if index is not None:
                messages[index] += int(item.get("messages") or 0)
        return tuple(messages)


def management_url(rabbitmq_url: str, explicit: str = "", port: int = 15672) -> str:
    """The management API's base URL: given explicitly, or RabbitMQ's host on `port`."""
    if explicit:
        return explicit
    host = urllib.parse.urlsplit(rabbitmq_url).hostname or "127.0.0.1"
    return f"http://{host}:{port}"


@dataclass
class Autoscaler:
    """Starts and stops worker processes so their number follows the partitions' messages."""

    policy: Policy
    queue: Callable[[], Reading]
    spawn: Callable[[], subprocess.Popen[bytes]]
    now: Callable[[], float] = time.monotonic
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stopping: dict[subprocess.Popen[bytes], float] = field(default_factory=dict)
    crash_pause: float = 2.0
    _surplus_since: float | None = None
    _paused_until: float = 0.0
    _grown_at: float = float("-inf")

    def step(self) -> None:
        """One look at the partitions and at most one scaling decision."""
        self._reap()
        try:
            reading = self.queue()
        except BrokerError as error:
            # Blind: keep what runs rather than guess. Workers reconnect by themselves.
            log.warning("cannot read the lane partitions: %s", error)
            self._surplus_since = None
            return
        current, wanted = len(self.workers), self.policy.desired(reading.total, reading.busy_partitions)
        # What the workers say of themselves is fresh where the management API lags: never
        # stop a worker that holds work, and add one while lanes wait for a slot in one and
        # no worker has a slot to spare (a spare one takes the partitions passed on to it),
        # once every worker started has joined (it takes its share of partitions then).
        wanted = max(wanted, min(reading.busy, self.policy.max_workers))
        settling = self.now() - self._grown_at < GROWTH_SETTLE_SECONDS
        if reading.waiting and not reading.spare and reading.joined >= current and not settling:
            wanted = max(wanted, min(current + 1, self.policy.max_workers))
        if wanted > current and self.now() < self._paused_until:
            return  # a worker just crashed: no tight loop of doomed starts
        if wanted > current:
            self._surplus_since = None
            self._grown_at = self.now()
            for _ in range(wanted - current):
                self.workers.append(self.spawn())
            self._report(current, wanted, reading)
        elif wanted < current and reading.messages is None:
            # What the workers hold is unknown: stopping one could cut into a backlog.
            self._surplus_since = None
        elif wanted < current:
            if self._surplus_since is None:
                self._surplus_since = self.now()
            elif self.now() - self._surplus_since >= self.policy.idle_seconds:
                self._surplus_since = None
                for process in self.workers[wanted:]:
                    self._stop(process)
                del self.workers[wanted:]
                self._report(current, wanted, reading)
        else:
            self._surplus_since = None

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.policy.interval):
            try:
                self.step()
            except Exception:
                # A bug here must not leave the stack without workers for good.
                log.exception("autoscaler step failed")

    def stop_all(self) -> None:
        """SIGTERM every worker and wait for each within its shutdown grace period."""
        for process in self.workers:
            self._stop(process)
        self.workers.clear()
        deadline = self.now() + self.policy.shutdown_seconds
        for process in list(self.stopping):
            try:
                process.wait(timeout=max(0.1, deadline - self.now()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.stopping.clear()

    @property
    def running(self) -> int:
        return len(self.workers)

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        self.stopping[process] = self.now()

    def _reap(self) -> None:
        """Forget exited workers; kill one that outlived its grace period."""
        for process in [p for p in self.workers if p.poll() is not None]:
            log.warning(
                "worker %d exited with %s; it will be replaced if still needed", process.pid, process.returncode
            )
            self.workers.remove(process)
            self._paused_until = self.now() + self.crash_pause
        for process, since in list(self.stopping.items()):
            if process.poll() is not None:
                del self.stopping[process]
            elif self.now() - since > self.policy.shutdown_seconds:
                process.kill()

    def _report(self, before: int, after: int, reading: Reading) -> None:
        log.info(
            "workers %d -> %d (%d messages in %d partitions: ready %d, counted by the management API %s)",
            before,
            after,
            reading.total,
            reading.busy_partitions,
            sum(reading.ready),
            "?" if reading.messages is None else sum(reading.messages),
        )
