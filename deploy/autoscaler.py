"""Scale the worker 0..N on the ready queue, locally, the way KEDA does in a cluster.

Every lane with work has one wake-up token in `<prefix>.ready`: *ready* while the
lane waits for a slot, *unacknowledged* while a slot runs it. So ready +
unacknowledged is the number of busy lanes, and ceil(busy lanes / slots per worker)
workers are all that can be useful. Workers start as soon as a token appears and
stop (SIGTERM: each finishes or hands back its lane) once fewer would do for a
whole idle period; with every lane empty that is zero workers.

Two readings of the queue, because neither alone is enough:
* a passive declare over AMQP answers at once with the ready count (and the number
  of consumers, one per slot). It makes the cold start fast: the first token
  starts a worker within one polling interval.
* the management API adds the unacknowledged count, i.e. lanes being run. The
  broker refreshes it every few seconds (collect_statistics_interval, 5 s by
  default), which delays scaling down by that much. Growth does not wait for it:
  a token still waiting at the next poll means every slot (consumer) is busy.
Tokens can be duplicated (an enqueue into a lane that is being run may add one;
docs/design.md 4.3), so the count is an upper bound: a duplicate waiting behind
busy slots can start a worker too many, which the idle period takes away again.
Without the management API the autoscaler guesses that a waiting token means every
consumer is busy; a token that is only in flight to an idle slot can then make it
start a worker too many, and the idle period takes it away again.
"""

from __future__ import annotations

import base64
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
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from lanes.broker import NOT_FOUND, QueueNames, open_connection
from lanes.errors import BrokerError
from lanes.settings import Settings

log = logging.getLogger("lanes.autoscaler")


@dataclass(frozen=True)
class Policy:
    """Bounds and pace of scaling, from template.yaml's `scale` of the worker."""

    min_workers: int
    max_workers: int
    lanes_per_worker: int
    idle_seconds: float
    shutdown_seconds: float = 90.0
    interval: float = 0.25

    def desired(self, busy_lanes: int) -> int:
        """Workers that can be useful for this many busy lanes, within [min, max]."""
        wanted = math.ceil(busy_lanes / self.lanes_per_worker)
        return max(self.min_workers, min(self.max_workers, wanted))


@dataclass(frozen=True)
class Reading:
    ready: int
    consumers: int
    unacked: int | None  # None: the management API did not answer

    def busy_lanes(self, saturated: bool = False) -> int:
        """Waiting plus running lanes; `saturated`: tokens have waited across two
        readings, so every consumer (one per slot) must be holding a lane."""
        running = self.unacked or 0
        if saturated or (self.unacked is None and self.ready):
            # The management API's count lags by seconds; a token still waiting after a
            # poll means no slot is idle, which is known now.
            running = max(running, self.consumers)
        return self.ready + running


class ReadyQueue:
    """Reads the ready queue's counts over AMQP and the management API."""

    def __init__(self, settings: Settings, management_url: str, management_every: float = 1.0) -> None:
        self._settings = settings
        self._name = QueueNames.of(settings).ready
        self._management_url = management_url
        self._management_every = management_every
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._unacked: int | None = None
        self._unacked_at = 0.0

    def read(self) -> Reading:
        """The current counts; BrokerError when RabbitMQ cannot be asked."""
        ready, consumers = self._declare_passively()
        if time.monotonic() - self._unacked_at >= self._management_every:
            self._unacked = self._management_unacked()
            self._unacked_at = time.monotonic()
        return Reading(ready=ready, consumers=consumers, unacked=self._unacked)

    def close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
        self._connection = None

    def _declare_passively(self) -> tuple[int, int]:
        try:
            if self._connection is None or not self._connection.is_open:
                self._connection = open_connection(self._settings)
                self._channel = None
            if self._channel is None or not self._channel.is_open:
                self._channel = self._connection.channel()
            ok = self._channel.queue_declare(self._name, passive=True).method
            return int(ok.message_count), int(ok.consumer_count)
        except pika.exceptions.ChannelClosedByBroker as error:
            self._channel = None
            if error.reply_code == NOT_FOUND:
                return 0, 0  # not declared yet: the first enqueue declares it
            raise BrokerError(f"RabbitMQ refused: {error!r}") from None
        except (pika.exceptions.AMQPError, OSError) as error:
            self.close()
            raise BrokerError(f"RabbitMQ failed: {error!r}") from None

    def _management_unacked(self) -> int | None:
        url = urllib.parse.urlsplit(self._settings.rabbitmq_url)
        vhost = urllib.parse.unquote(url.path[1:]) if len(url.path) > 1 else "/"
        path = f"/api/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(self._name, safe='')}"
        request = urllib.request.Request(self._management_url.rstrip("/") + path)
        user = urllib.parse.unquote(url.username or "guest")
        password = urllib.parse.unquote(url.password or "guest")
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                queue = json.load(response)
        except (OSError, ValueError):
            return None  # 404 before the queue exists, or no management plugin
        return int(queue.get("messages_unacknowledged") or 0) if isinstance(queue, dict) else None


def management_url(rabbitmq_url: str, explicit: str = "", port: int = 15672) -> str:
    """The management API's base URL: given explicitly, or RabbitMQ's host on `port`."""
    if explicit:
        return explicit
    host = urllib.parse.urlsplit(rabbitmq_url).hostname or "127.0.0.1"
    return f"http://{host}:{port}"


@dataclass
class Autoscaler:
    """Starts and stops worker processes so their number follows the busy lanes."""

    policy: Policy
    queue: Callable[[], Reading]
    spawn: Callable[[], subprocess.Popen[bytes]]
    now: Callable[[], float] = time.monotonic
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stopping: dict[subprocess.Popen[bytes], float] = field(default_factory=dict)
    crash_pause: float = 2.0
    _surplus_since: float | None = None
    _paused_until: float = 0.0
    _before: Reading | None = None

    def step(self) -> None:
        """One look at the queue and at most one scaling decision."""
        self._reap()
        try:
            reading = self.queue()
        except BrokerError as error:
            # Blind: keep what runs rather than guess. Workers reconnect by themselves.
            log.warning("cannot read the ready queue: %s", error)
            self._surplus_since = None
            return
        # Saturated: a token waited through a whole poll while slots were connected.
        before, self._before = self._before, reading
        saturated = reading.ready > 0 and before is not None and before.ready > 0 and before.consumers > 0
        busy = reading.busy_lanes(saturated)
        current, wanted = len(self.workers), self.policy.desired(busy)
        if wanted > current and self.now() < self._paused_until:
            return  # a worker just crashed: no tight loop of doomed starts
        if wanted > current:
            self._surplus_since = None
            for _ in range(wanted - current):
                self.workers.append(self.spawn())
            self._report(current, wanted, busy, reading)
        elif wanted < current:
            if self._surplus_since is None:
                self._surplus_since = self.now()
            elif self.now() - self._surplus_since >= self.policy.idle_seconds:
                self._surplus_since = None
                for process in self.workers[wanted:]:
                    self._stop(process)
                del self.workers[wanted:]
                self._report(current, wanted, busy, reading)
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

    def _report(self, before: int, after: int, busy: int, reading: Reading) -> None:
        log.info(
            "workers %d -> %d (busy lanes %d: ready %d, unacked %s, consumers %d)",
            before,
            after,
            busy,
            reading.ready,
            "?" if reading.unacked is None else reading.unacked,
            reading.consumers,
        )
