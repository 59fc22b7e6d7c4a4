"""Head of line across workers: long heavy lanes beside light ones.

Given heavy lanes (each a few requests that sleep 2 s) queued while no worker runs,
when the workers start and light lanes (one echo each, from new users) arrive at a
steady rate, then each light request's latency runs from its enqueue to its outcome.
Measured twice on fresh vhosts and databases, with the same slots in all: two worker
processes of four slots (lanes bound to a worker by their partition) against one
process of eight (one shared pool of slots). The light p99 of the first against the
second is what binding lanes to workers costs (docs/design.md §4.5).
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.context import Context
from bench.lanes_stack import TERMINAL, Workers, epoch, lanes_env, worker_env
from bench.load import percentile
from bench.procs import STOP
from lanes.broker import ChannelPool
from lanes.db import connect, ensure_indexes
from lanes.lane.admission import LaneLedger, PartitionPublisher
from lanes.queueing import Enqueuer
from lanes.requests import Requests
from lanes.settings import Settings
from lanes.validation import EnqueueBody

HEAVY_LANES, HEAVY_PER_LANE, HEAVY_MS = 6, 6, 2000
LIGHT_RATE = 10.0  # light requests a second, each from a new user
SLOTS = 8


def run(ctx: Context) -> dict[str, Any]:
    runs = {}
    for name, processes in (("bound", 2), ("shared", 1)):
        if ctx.time_left() < 40:
            ctx.say("hol", f"{name}: skipped, the time budget is used up")
            break
        vhost, database = ctx.isolation.vhost(f"hol-{name}"), ctx.isolation.database(f"hol-{name}")
        try:
            runs[name] = _measure(ctx, name, processes, vhost, database)
        finally:
            ctx.isolation.drop_vhost(vhost)
            ctx.isolation.drop_database(database)
    bound, shared = runs.get("bound", {}), runs.get("shared", {})
    return {
        "hol_light_p99_ms_bound": bound.get("light_p99_ms"),
        "hol_light_p99_ms_shared": shared.get("light_p99_ms"),
        "details": runs,
    }


def _measure(ctx: Context, name: str, processes: int, vhost: str, database: str) -> dict[str, Any]:
    env = worker_env(lanes_env(vhost, database, ctx.run_dir / "data" / f"hol-{name}"))
    env["WORKER_SLOTS"] = str(SLOTS // processes)
    settings = Settings.from_env(env)
    db = connect(settings)
    ensure_indexes(db)
    pool = ChannelPool(settings, max_idle=8)
    ledger = LaneLedger(settings.lane_depth_limit, verify=lambda _request_id: False)
    enqueuer = Enqueuer(settings, Requests(db), PartitionPublisher(settings, pool, ledger))
    heavy = EnqueueBody(action="sleep", data={"ms": HEAVY_MS})
    light = EnqueueBody(action="echo", data={"light": True})
    for _lane in range(HEAVY_LANES):
        user = uuid.uuid4().hex
        for _n in range(HEAVY_PER_LANE):
            enqueuer.enqueue(user, heavy, None)
    workers = Workers(env, ctx.procs, vhost, name=f"hol-{name}-worker")
    workers.start(processes)
    sent: dict[str, float] = {}
    try:
        time.sleep(1.0)  # the heavy lanes are running
        count = int(LIGHT_RATE * min(ctx.sizes.hol_seconds, max(5.0, ctx.time_left() - 30)))
        first = time.time() + 0.1

        def arrive(index: int) -> None:
            if STOP.is_set():
                return
            time.sleep(max(0.0, first + index / LIGHT_RATE - time.time()))
            at = time.time()
            sent[enqueuer.enqueue(uuid.uuid4().hex, light, None).record["_id"]] = at

        with ThreadPoolExecutor(8) as threads:
            list(threads.map(arrive, range(count)))
        done = _wait(db, list(sent), timeout=30)
    finally:
        workers.stop(grace=5)
        pool.close()
        db.client.close()
    latencies = [finished - sent[i] for i, finished in done.items()]
    result = {
        "worker_processes": processes,
        "slots_each": SLOTS // processes,
        "light_sent": len(sent),
        "light_finished": len(done),
        "light_p50_ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
        "light_p99_ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
    }
    ctx.say(
        "hol",
        f"{processes} x {SLOTS // processes} slots: light p50 {result['light_p50_ms']} ms, "
        f"p99 {result['light_p99_ms']} ms ({len(done)} of {len(sent)})",
    )
    return result


def _wait(db: Any, request_ids: list[str], timeout: float) -> dict[str, float]:
    """Each request's finish time, once its outcome is recorded (by `_id`, the indexed lookup)."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(request_ids) and time.monotonic() < deadline:
        for request_id in request_ids:
            if request_id in done:
                continue
            outcome = db.outcomes.find_one({"_id": request_id}, {"status": 1, "finished_at": 1})
            if outcome is not None and outcome["status"] in TERMINAL:
                done[request_id] = epoch(outcome["finished_at"]) or 0.0
        time.sleep(0.2)
    return done
