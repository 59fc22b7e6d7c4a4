"""The system under test: Lanes started the way `make run` starts it, on its own vhost and database.

The HTTP functions run behind nginx under `python -m deploy.runner --workers 0`;
worker processes are started here, one `functions/worker/main.py` each, so every
scenario decides when the workers run and how many.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from subprocess import Popen
from typing import Any

from bench.infra import Isolation, amqp_url, mongo_url, wait_consumers
from bench.procs import Processes
from deploy.template import ROOT, load
from tests.support import free_port_block

QUEUE_PREFIX = "lanes"
ROSTER_QUEUE = f"{QUEUE_PREFIX}.workers"  # every worker process consumes it once
TERMINAL = ("done", "failed", "cancelled")


def lanes_env(vhost: str, database: str, data_dir: Path) -> dict[str, str]:
    """Settings of the stack under test: Lanes' defaults except where noted."""
    return {
        **os.environ,
        "RABBITMQ_URL": amqp_url(vhost),
        "MONGO_URI": mongo_url(database),
        "DATA_DIR": str(data_dir),
        "QUEUE_PREFIX": QUEUE_PREFIX,
        # Keys are generated for this stack; no secret from the environment applies.
        "JWT_SECRET": "",
        "JWT_PUBLIC_KEY_FILE": "",
        "JWT_PRIVATE_KEY_FILE": "",
        "JWT_EXPIRES_SECONDS": "3600",  # a full run outlasts the default 15 minutes
        # Registering the benchmark's users is set-up, not a measured path: cheap hashes.
        "ARGON2_MEMORY_KIB": "1024",
        "ARGON2_ROUNDS": "1",
        # The fairness scenario queues 2,000 requests in one lane (default limit 1,000).
        "LANE_DEPTH_LIMIT": "5000",
        # One JSON line per request is not what is measured; warnings still show.
        "LOG_LEVEL": "WARNING",
        # The users are registered and logged in from one address, the fairness scenario
        # queues 2,000 requests of one user at once, and results are polled without pause:
        # the per-address and per-user limits would refuse them.
        "REGISTER_PER_MINUTE": "0",
        "LOGIN_PER_ADDRESS_PER_MINUTE": "0",
        "ENQUEUE_RATE_PER_SECOND": "0",
        "STATUS_RATE_PER_SECOND": "0",
        "PYTHONUNBUFFERED": "1",
    }


def worker_env(stack_env: dict[str, str]) -> dict[str, str]:
    """A worker's environment as template.yaml gives it, with the stack's settings on top."""
    template = load()
    return {**template.env, **template.function("worker").env, **stack_env}


@dataclass
class Workers:
    """Worker processes of one vhost and database, started and stopped by the benchmark."""

    env: dict[str, str]
    procs: Processes
    vhost: str
    name: str = "worker"
    running: list[Popen[bytes]] = field(default_factory=list)

    @property
    def slots(self) -> int:
        return int(self.env.get("WORKER_SLOTS", "4"))

    def start(self, count: int, wait: bool = True) -> None:
        worker = load().function("worker")
        for _ in range(count):
            index = len(self.running)
            self.running.append(
                self.procs.start(
                    f"{self.name}-{index}",
                    [sys.executable, *worker.command[1:]],
                    self.env,
                    ROOT / worker.source,
                )
            )
        if wait and not wait_consumers(self.vhost, ROSTER_QUEUE, len(self.running), timeout=60):
            raise RuntimeError("the workers did not start consuming within 60 s; see the worker logs")

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM every worker (each finishes its current requests), SIGKILL after `grace`."""
        for process in self.running:
            if self.procs.alive(process):
                process.terminate()
        for process in self.running:
            self.procs.stop(process, grace=grace)
        self.running.clear()


@dataclass
class LanesStack:
    base_url: str
    vhost: str
    database: str
    env: dict[str, str]
    db: Any
    workers: Workers
    runner_pid: int

    def records(self, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored records of these requests, read in one pass over the collection.

        FerretDB answers only `_id` equality through an index; one scan of the whole
        collection is far cheaper than thousands of lookups (and than `$in`).
        """
        return scan_records(self.db, request_ids)


def scan_records(db: Any, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The outcomes of these requests (a request's status, start and finish live there)."""
    wanted = set(request_ids)
    projection = {"user_id": 1, "status": 1, "started_at": 1, "finished_at": 1}
    return {r["_id"]: r for r in db.outcomes.find({}, projection) if r["_id"] in wanted}


def wait_terminal(db: Any, request_ids: list[str], timeout: float, interval: float = 1.0) -> dict[str, dict[str, Any]]:
    """Scan until every request is terminal or `timeout` passes; returns the last scan."""
    deadline = time.monotonic() + timeout
    while True:
        records = scan_records(db, request_ids)
        pending = [i for i in request_ids if records.get(i, {}).get("status") not in TERMINAL]
        if not pending or time.monotonic() > deadline:
            return records
        time.sleep(interval)


def epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def start_stack(
    isolation: Isolation, procs: Processes, data_dir: Path, purpose: str = "lanes", **settings: str
) -> LanesStack:
    """Start the HTTP functions behind nginx on free ports, on a fresh vhost and database;
    `settings` (environment variables) on top of lanes_env's."""
    vhost, database = isolation.vhost(purpose), isolation.database(purpose)
    env = {**lanes_env(vhost, database, data_dir / purpose), **settings}
    port = free_port_block(8)
    runner = procs.start(
        f"{purpose}-runner",
        [sys.executable, "-m", "deploy.runner", "--port", str(port), "--workers", "0"],
        env,
        ROOT,
    )
    base_url = f"http://127.0.0.1:{port}"
    wait_http_ready(f"{base_url}/readyz", timeout=90)
    workers = Workers(worker_env(env), procs, vhost, name=f"{purpose}-worker")
    return LanesStack(base_url, vhost, database, env, isolation.db(database), workers, runner.pid)


def wait_http_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s; see bench/results/logs")
