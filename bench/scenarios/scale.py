"""Scale of lanes: broker memory and worker throughput with 100, 1,000 and 10,000 lanes.

For each count, on a fresh vhost and database, the lanes are filled through Lanes' own
enqueue code (`lanes.queueing.Enqueuer`, what POST /enqueue runs after authentication)
while no worker runs, with the same total of requests spread over the lanes (at least
one each). Then the broker's memory for the lane queues is read, the workers start,
and their throughput is the requests they finished over the span from the first
start to the last result, within a bounded window.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import cpu
from bench.context import Context
from bench.infra import STATS_INTERVAL, node_memory_mb, published, queues, wait_vhost_holds, wait_vhost_idle
from bench.lanes_stack import TERMINAL, Workers, epoch, lanes_env, worker_env
from bench.procs import STOP
from lanes.broker import ChannelPool
from lanes.db import connect, ensure_indexes
from lanes.lane.admission import LaneLedger, PartitionPublisher
from lanes.queueing import Enqueuer
from lanes.requests import Requests
from lanes.settings import Settings
from lanes.validation import EnqueueBody

FILL_THREADS = 16


def run(ctx: Context) -> dict[str, Any]:
    by_count: dict[str, Any] = {}
    for count in ctx.sizes.scale_counts:
        if ctx.time_left() < 20:
            ctx.say("scale", f"{count} lanes: skipped, the time budget is used up")
            break
        by_count[str(count)] = one_count(ctx, count)
    return {
        "lanes_memory_mb_by_count": {k: v["lane_queues_memory_mb"] for k, v in by_count.items()},
        "lanes_e2e_rps_by_count": {k: v["rps"] for k, v in by_count.items()},
        "details": by_count,
    }


def one_count(ctx: Context, count: int) -> dict[str, Any]:
    vhost, database = ctx.isolation.vhost(f"scale{count}"), ctx.isolation.database(f"scale{count}")
    try:
        return _measure(ctx, count, vhost, database)
    finally:
        began = time.monotonic()
        ctx.isolation.drop_vhost(vhost)
        ctx.isolation.drop_database(database)
        ctx.say("scale", f"{count} lanes: vhost and database deleted in {time.monotonic() - began:.1f} s")


def _measure(ctx: Context, count: int, vhost: str, database: str) -> dict[str, Any]:
    env = lanes_env(vhost, database, ctx.run_dir / "data" / f"scale{count}")
    settings = Settings.from_env(env)
    per_lane = max(1, ctx.sizes.scale_requests // count)
    node_before = node_memory_mb()
    # Leave time for the stats, the workers' window and deleting the lanes (~250 a second).
    fill_for = min(ctx.sizes.scale_fill_seconds, ctx.time_left() - 20 - ctx.sizes.scale_drain_seconds - count / 250)
    filled, fill_seconds = fill(settings, count, per_lane, fill_for)
    ctx.say("scale", f"{count} lanes: {filled} requests queued in {fill_seconds:.1f} s (no worker running)")
    # Queue memory comes from the management API: wait until its figures show the fill.
    wait_vhost_holds(vhost, filled, timeout=STATS_INTERVAL * 3)
    # Every lane's requests wait in one of the fixed partitions: their memory is the queues'.
    partition_queues = [q for q in queues(vhost) if ".partition." in q["name"]]
    memory_mb = sum(q.get("memory", 0) for q in partition_queues) / 2**20
    node_after = node_memory_mb()
    workers = Workers(worker_env(env), ctx.procs, vhost, name=f"scale{count}-worker")
    workers.start(ctx.sizes.workers)
    try:
        before = cpu.snapshot()
        window = max(3.0, min(ctx.sizes.scale_drain_seconds, ctx.time_left() - 10))
        wait_vhost_idle(vhost, published(vhost), timeout=window)
        used = cpu.snapshot()
    finally:
        workers.stop()
    records = list(ctx.isolation.db(database).outcomes.find({}, {"status": 1, "started_at": 1, "finished_at": 1}))
    finished = [f for r in records if r["status"] in TERMINAL and (f := epoch(r.get("finished_at")))]
    started = [s for r in records if (s := epoch(r.get("started_at")))]
    span = max(finished) - min(started) if finished and started else 0.0
    result: dict[str, Any] = {
        "lanes": count,
        "partitions": len(partition_queues),
        "requests_per_lane": per_lane,
        "queued": filled,
        "fill_seconds": round(fill_seconds, 1),
        "lane_queues_memory_mb": round(memory_mb, 2),
        "memory_kib_per_lane": round(memory_mb * 1024 / max(1, count), 1),
        "node_memory_delta_mb": round(node_after - node_before, 1),
        "finished": len(finished),
        "drained": len(finished) == filled,
        "seconds": round(span, 2),
        "rps": round(len(finished) / span, 1) if span else 0.0,
        "cpu": cpu.usage(before, used, len(finished)),
    }
    ctx.say(
        "scale",
        f"{count} lanes: their partitions use {result['lane_queues_memory_mb']} MB; workers finished "
        f"{result['finished']} in {result['seconds']} s = {result['rps']} req/s",
    )
    return result


ECHO = EnqueueBody(action="echo", data={"n": 1})


def fill(settings: Settings, count: int, per_lane: int, seconds: float, body: EnqueueBody = ECHO) -> tuple[int, float]:
    """Queue `per_lane` requests in each of `count` new lanes, within `seconds`."""
    db = connect(settings)
    ensure_indexes(db)
    pool = ChannelPool(settings, max_idle=FILL_THREADS)
    ledger = LaneLedger(settings.lane_depth_limit, verify=lambda _request_id: False)
    enqueuer = Enqueuer(settings, Requests(db), PartitionPublisher(settings, pool, ledger))
    start = time.monotonic()
    deadline = start + max(1.0, seconds)

    def lane(_: int) -> int:
        user_id = uuid.uuid4().hex
        queued = 0
        for _n in range(per_lane):
            if time.monotonic() > deadline or STOP.is_set():
                break
            enqueuer.enqueue(user_id, body, None)
            queued += 1
        return queued

    try:
        with ThreadPoolExecutor(FILL_THREADS) as threads:
            filled = sum(threads.map(lane, range(count)))
    finally:
        pool.close()
        db.client.close()
    return filled, time.monotonic() - start
