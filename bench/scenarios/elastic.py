"""Elastic: what more worker processes give, and what quorum partitions on a cluster cost.

For each run, on a fresh vhost and database, LANES lanes of PER_LANE requests are queued
through Lanes' own enqueue code while no worker runs; each request sleeps SLEEP_MS, as
a handler that waits on another service would. Then the workers start together, share
the partitions (docs/design.md §4.5) and drain the backlog: throughput is the requests
finished over the span from the first start to the last outcome.

* 1, 2 and 4 worker processes of the template's slots on one broker node with classic
  partitions, as ratios to 1 worker: how far the work spreads over processes.
* 2 workers with quorum partitions on a three-node RabbitMQ cluster on this machine
  (Debian's rabbitmq-server, each node its own ports and data), against the same 2
  workers with classic partitions on one node: the price of replicating every request.
"""

from __future__ import annotations

import time
from typing import Any

from bench import cpu
from bench.context import Context
from bench.lanes_stack import TERMINAL, Workers, epoch, lanes_env, worker_env
from bench.procs import STOP
from bench.scenarios.scale import fill
from deploy.services import start_cluster, stop_cluster
from lanes.settings import Settings
from lanes.validation import EnqueueBody
from tests.support import free_port_block

LANES, PER_LANE, SLEEP_MS = 64, 15, 50
WORKER_COUNTS = (1, 2, 4)
CLUSTER_NODES, CLUSTER_WORKERS = 3, 2
BODY = EnqueueBody(action="sleep", data={"ms": SLEEP_MS})


def run(ctx: Context) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    for count in WORKER_COUNTS:
        if ctx.time_left() < 30:
            ctx.say("elastic", f"{count} workers: skipped, the time budget is used up")
            break
        runs[f"classic_{count}"] = _on_the_bench_broker(ctx, count)
    if ctx.time_left() >= 90:
        runs[f"quorum_cluster_{CLUSTER_WORKERS}"] = _on_a_cluster(ctx)
    else:
        ctx.say("elastic", "the cluster run: skipped, the time budget is used up")
    one = (runs.get("classic_1") or {}).get("rps")
    classic = (runs.get(f"classic_{CLUSTER_WORKERS}") or {}).get("rps")
    quorum = (runs.get(f"quorum_cluster_{CLUSTER_WORKERS}") or {}).get("rps")
    return {
        "elastic_ratio_by_workers": {
            str(count): round(runs[f"classic_{count}"]["rps"] / one, 2)
            for count in WORKER_COUNTS
            if one and f"classic_{count}" in runs
        },
        "elastic_quorum_cluster_vs_classic": round(quorum / classic, 2) if quorum and classic else None,
        "details": runs,
    }


def _on_the_bench_broker(ctx: Context, count: int) -> dict[str, Any]:
    vhost, database = ctx.isolation.vhost(f"elastic{count}"), ctx.isolation.database(f"elastic{count}")
    try:
        env = worker_env(lanes_env(vhost, database, ctx.run_dir / "data" / f"elastic{count}"))
        return _drain(ctx, env, database, count, f"{count} workers, classic partitions on one node")
    finally:
        ctx.isolation.drop_vhost(vhost)
        ctx.isolation.drop_database(database)


def _on_a_cluster(ctx: Context) -> dict[str, Any]:
    home = ctx.run_dir / "cluster"
    began = time.monotonic()
    nodes = start_cluster(home, [free_port_block(2) for _ in range(CLUSTER_NODES)])
    ctx.say("elastic", f"a {CLUSTER_NODES}-node cluster started in {time.monotonic() - began:.0f} s")
    database = ctx.isolation.database("elastic-cluster")
    try:
        env = worker_env(lanes_env("/", database, ctx.run_dir / "data" / "elastic-cluster"))
        env |= {
            "RABBITMQ_URL": ",".join(node.url for node in nodes),
            "RABBITMQ_MANAGEMENT_URL": nodes[0].management_url,
            "QUEUE_TYPE": "quorum",
        }
        what = f"{CLUSTER_WORKERS} workers, quorum partitions on {CLUSTER_NODES} nodes"
        return _drain(ctx, env, database, CLUSTER_WORKERS, what)
    finally:
        stop_cluster(nodes)
        ctx.isolation.drop_database(database)


def _drain(ctx: Context, env: dict[str, str], database: str, count: int, what: str) -> dict[str, Any]:
    settings = Settings.from_env(env)
    queued, fill_seconds = fill(settings, LANES, PER_LANE, 60, BODY)
    outcomes = ctx.isolation.db(database).outcomes
    workers = Workers(env, ctx.procs, "", name=f"elastic-{count}")
    before = cpu.snapshot()
    workers.start(count, wait=False)
    try:
        deadline = time.monotonic() + max(10.0, min(60.0, ctx.time_left() - 15))
        while time.monotonic() < deadline and not STOP.is_set():
            if outcomes.count_documents({}) >= queued:
                break
            time.sleep(0.25)
        used = cpu.snapshot()
    finally:
        workers.stop()
    records = list(outcomes.find({}, {"status": 1, "started_at": 1, "finished_at": 1}))
    finished = [f for r in records if r["status"] in TERMINAL and (f := epoch(r.get("finished_at")))]
    started = [s for r in records if (s := epoch(r.get("started_at")))]
    span = max(finished) - min(started) if finished and started else 0.0
    result = {
        "workers": count,
        "queued": queued,
        "fill_seconds": round(fill_seconds, 1),
        "finished": len(finished),
        "drained": len(finished) == queued,
        "seconds": round(span, 2),
        "rps": round(len(finished) / span, 1) if span else 0.0,
        "cpu": cpu.usage(before, used, len(finished)),
    }
    ctx.say("elastic", f"{what}: {len(finished)} of {queued} in {result['seconds']} s = {result['rps']} req/s")
    return result
