"""Backlog: what a worker holds in memory with 30,000 and 300,000 requests waiting.

For each count, on a fresh vhost and database, the requests are published straight to
their partitions (as the enqueue function would, in transactions of 1,000 to be quick):
lanes of 1,000 requests each (the default depth limit), each request's data 1,000
non-ASCII characters (2 KB of UTF-8). The broker's memory per waiting request is read,
then one worker starts, its handlers sleeping 1 s so that nearly everything keeps
waiting. The worker's resident memory is sampled while it takes its partitions and
spills deep lanes into their overflow queues, against the same worker's memory before
it joined: its growth must not follow the backlog (docs/design.md §4.5.1).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pika

from bench.context import Context
from bench.infra import node_memory_mb, queues, wait_vhost_holds
from bench.lanes_stack import Workers, lanes_env, worker_env
from bench.procs import STOP
from lanes.broker import QueueNames, partition_arguments
from lanes.lane.messages import LaneMessage, partition_of
from lanes.requests import new_request_id
from lanes.settings import Settings

PER_LANE = 1000
BATCH = 1000
DATA = json.dumps({"ms": 1000, "text": "é" * 1000}, ensure_ascii=False, separators=(",", ":"))
SAMPLE_SECONDS = 0.5
SETTLE_SECONDS = 3.0  # a started worker has joined, taken its partitions and imported its handlers


def run(ctx: Context) -> dict[str, Any]:
    by_count: dict[str, Any] = {}
    for count in ctx.sizes.backlog_counts:
        if ctx.time_left() < 30:
            ctx.say("backlog", f"{count} waiting: skipped, the time budget is used up")
            break
        vhost, database = ctx.isolation.vhost(f"backlog{count}"), ctx.isolation.database(f"backlog{count}")
        try:
            by_count[str(count)] = _measure(ctx, count, vhost, database)
        finally:
            ctx.isolation.drop_vhost(vhost)
            ctx.isolation.drop_database(database)
    return {
        "worker_rss_growth_mb_by_backlog": {k: v["rss_growth_mb"] for k, v in by_count.items()},
        "broker_bytes_per_waiting_request": {k: v["broker_bytes_per_request"] for k, v in by_count.items()},
        "details": by_count,
    }


def _measure(ctx: Context, count: int, vhost: str, database: str) -> dict[str, Any]:
    env = worker_env(lanes_env(vhost, database, ctx.run_dir / "data" / f"backlog{count}"))
    settings = Settings.from_env(env)
    # The same worker with nothing waiting: its memory once started and settled.
    idle_worker = Workers(env, ctx.procs, vhost, name=f"backlog{count}-idle")
    idle_worker.start(1)
    try:
        time.sleep(SETTLE_SECONDS)
        idle = _rss_mb(idle_worker.running[0].pid)
    finally:
        idle_worker.stop(grace=5)
    node_before = node_memory_mb()
    published, publish_seconds = _publish(settings, count)
    wait_vhost_holds(vhost, published, timeout=30)
    broker_mb = node_memory_mb() - node_before
    ctx.say("backlog", f"{published} requests published in {publish_seconds:.1f} s; the broker grew {broker_mb:.0f} MB")
    # A worker starting with the whole backlog waiting, as after a crash or from zero.
    workers = Workers(env, ctx.procs, vhost, name=f"backlog{count}-worker")
    workers.start(1, wait=False)
    process = workers.running[0]
    peak, spilled, seconds, spilling_seconds = 0.0, 0, 0.0, 0.0
    try:
        began = time.monotonic()
        window = min(ctx.sizes.backlog_seconds, max(10.0, ctx.time_left() - 20))
        while time.monotonic() - began < window and not STOP.is_set():
            time.sleep(SAMPLE_SECONDS)
            peak = max(peak, _rss_mb(process.pid))
            seconds = time.monotonic() - began
            now_spilled = _overflowed(vhost)  # the management API's figures, up to a second old
            if now_spilled > spilled:
                spilled, spilling_seconds = now_spilled, seconds
    finally:
        workers.stop(grace=5)
    result = {
        "waiting": published,
        "publish_seconds": round(publish_seconds, 1),
        "broker_bytes_per_request": round(broker_mb * 2**20 / max(1, published)),
        "worker_rss_idle_mb": round(idle, 1),
        "worker_rss_peak_mb": round(peak, 1),
        "rss_growth_mb": round(peak - idle, 1),
        "watched_seconds": round(seconds, 1),
        "spilled_to_overflow": spilled,
        "spilled_per_second": round(spilled / spilling_seconds) if spilling_seconds else 0,
    }
    ctx.say(
        "backlog",
        f"{published} waiting: worker {result['worker_rss_idle_mb']} MB idle, {result['worker_rss_peak_mb']} MB "
        f"at most over {result['watched_seconds']} s (+{result['rss_growth_mb']} MB); {spilled} spilled",
    )
    return result


def _publish(settings: Settings, count: int) -> tuple[int, float]:
    """`count` requests in lanes of PER_LANE, straight to their partitions, in transactions."""
    names = QueueNames.of(settings)
    connection = pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url))
    started = time.monotonic()
    published = 0
    try:
        channel = connection.channel()
        channel.exchange_declare(names.undeliverable, "fanout", durable=True)
        channel.queue_declare(names.undeliverable, durable=True)
        channel.queue_bind(names.undeliverable, names.undeliverable)
        for index in range(settings.lane_partitions):
            channel.queue_declare(names.partition(index), durable=True, arguments=partition_arguments(settings))
        channel.tx_select()
        users = [uuid.uuid4().hex for _ in range(max(1, count // PER_LANE))]
        while published < count and not STOP.is_set():
            user = users[published % len(users)]  # lanes interleaved, as many users sending at once
            message = LaneMessage(new_request_id(), user, "sleep", DATA)
            properties = pika.BasicProperties(delivery_mode=2, headers=message.headers(), timestamp=int(time.time()))
            partition = names.partition(partition_of(user, settings.lane_partitions))
            channel.basic_publish("", partition, message.body(), properties)
            published += 1
            if published % BATCH == 0:
                channel.tx_commit()
        channel.tx_commit()
    finally:
        connection.close()
    return published, time.monotonic() - started


def _rss_mb(pid: int) -> float:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0  # it exited
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _overflowed(vhost: str) -> int:
    return sum(int(q.get("messages") or 0) for q in queues(vhost) if ".overflow." in q["name"])
