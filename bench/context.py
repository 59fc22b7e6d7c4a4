"""What the scenarios share: workload sizes, the running processes, the time budget, progress."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.baselines import Baselines
from bench.client import User
from bench.infra import Isolation
from bench.lanes_stack import LanesStack
from bench.procs import Processes


@dataclass(frozen=True)
class Sizes:
    """Workload sizes of one mode; `budget` bounds the whole run in seconds, and each
    `*_seconds` bounds one step (a step cut short reports what it did in that time)."""

    mode: str
    budget: float
    workers: int  # worker processes, for Lanes and for Celery alike
    broker_messages: int
    broker_seconds: float
    load_seconds: float  # each wrk or paced run
    load_connections: int
    enqueue_users: int
    e2e: tuple[tuple[int, int], ...]  # (users, requests per user)
    e2e_submit_seconds: float
    submit_threads: int
    heavy_requests: int
    newcomers: int
    cold_samples: int
    scale_counts: tuple[int, ...]
    scale_requests: int  # requests per lane count, at least one per lane
    scale_fill_seconds: float
    scale_drain_seconds: float
    growth_records: int  # terminal requests loaded before the second run
    growth_users: int
    growth_per_user: int
    growth_enqueue_rate: float  # /enqueue per second for the latency figure
    growth_reap_seconds: float
    backlog_counts: tuple[int, ...]  # requests waiting when a worker starts
    backlog_seconds: float  # how long that worker is watched
    hol_seconds: float  # how long light lanes arrive beside the heavy ones

    @property
    def users(self) -> int:
        return max(
            max(u for u, _ in self.e2e),
            self.enqueue_users,
            1 + self.newcomers + self.cold_samples,
        )


FULL = Sizes(
    mode="full",
    budget=900,
    workers=2,
    broker_messages=20000,
    broker_seconds=3,
    load_seconds=8,
    load_connections=32,
    enqueue_users=200,
    e2e=((1000, 5), (100, 50)),
    e2e_submit_seconds=55,
    submit_threads=32,
    heavy_requests=2000,
    newcomers=200,
    cold_samples=3,
    scale_counts=(100, 1000, 10000),
    scale_requests=1000,
    scale_fill_seconds=95,
    scale_drain_seconds=15,
    growth_records=100_000,
    growth_users=100,
    growth_per_user=20,
    growth_enqueue_rate=40,
    growth_reap_seconds=90,
    backlog_counts=(30_000, 300_000),
    backlog_seconds=40,
    hol_seconds=12,
)

QUICK = Sizes(
    mode="quick",
    budget=170,
    workers=2,
    broker_messages=3000,
    broker_seconds=1,
    load_seconds=3,
    load_connections=32,
    enqueue_users=50,
    e2e=((50, 4), (10, 20)),
    e2e_submit_seconds=15,
    submit_threads=16,
    heavy_requests=200,
    newcomers=20,
    cold_samples=1,
    scale_counts=(50, 500),
    scale_requests=500,
    scale_fill_seconds=12,
    scale_drain_seconds=6,
    growth_records=5_000,
    growth_users=20,
    growth_per_user=5,
    growth_enqueue_rate=20,
    growth_reap_seconds=10,
    backlog_counts=(3_000, 30_000),
    backlog_seconds=10,
    hol_seconds=6,
)


@dataclass
class Context:
    sizes: Sizes
    procs: Processes
    isolation: Isolation
    run_dir: Path
    started: float = field(default_factory=time.monotonic)
    lanes: LanesStack | None = None
    baselines: Baselines | None = None
    users: list[User] = field(default_factory=list)
    profile: bool = False  # sample Lanes' processes with py-spy during the first end-to-end run
    notes: dict[str, Any] = field(default_factory=dict)  # details that belong to no one scenario

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def time_left(self) -> float:
        return self.sizes.budget - self.elapsed()

    def say(self, phase: str, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {phase:<9} {message}", file=sys.stderr, flush=True)
