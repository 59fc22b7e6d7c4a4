"""Bounded measurements behind docs/scaling.md, on loopback, each in a stack of its own.

    .venv/bin/python -m tests.measure coldstart|function|worker|broker|all

coldstart  enqueue with zero workers -> first result, and last result -> zero workers
function   /enqueue requests per second through one enqueue function process
worker     echo requests per second drained by one worker process (WORKER_SLOTS=4)
broker     confirmed publishes per second into the partitions

Every run is bounded in requests and seconds and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pika

from deploy import services
from lanes.broker import partition_arguments
from lanes.settings import Settings
from tests.conftest import Workers
from tests.support import Api, management_api, open_vhost, wait_until
from tests.support_stack import isolated_stack


def coldstart(rounds: int = 3, idle: int = 3) -> None:
    with isolated_stack(Path(tempfile.mkdtemp()), ["--workers", "auto", "--idle-seconds", str(idle)]) as stack:
        user = stack.api.new_user("cold")
        starts, stops = [], []
        for _ in range(rounds):
            wait_until(lambda: stack.worker_pids() == [], timeout=60, what="zero workers", interval=0.05)
            began = time.monotonic()
            user.wait_terminal([user.enqueue("echo", {})], timeout=30)
            starts.append(time.monotonic() - began)
            done = time.monotonic()
            wait_until(lambda: stack.worker_pids() == [], timeout=60, what="zero workers", interval=0.05)
            stops.append(time.monotonic() - done)
        print(f"cold start (enqueue -> done, from zero workers): {_summary(starts)} s")
        print(f"idle to zero (last result -> no worker process), idle period {idle} s: {_summary(stops)} s")


def function(seconds: float = 10.0, clients: int = 16) -> None:
    with isolated_stack(Path(tempfile.mkdtemp()), ["--workers", "0"]) as stack:
        users = [stack.api.new_user(f"fn{i}") for i in range(clients)]
        latencies: list[float] = []
        deadline = time.monotonic() + seconds

        def hammer(user: Api) -> int:
            sent = 0
            while time.monotonic() < deadline and sent < 5000:
                began = time.monotonic()
                user.enqueue("echo", {"n": sent})
                latencies.append(time.monotonic() - began)
                sent += 1
            return sent

        began, cpu = time.monotonic(), _cpu_seconds()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            total = sum(pool.map(hammer, users))
        elapsed = time.monotonic() - began
        cost = _cpu_per_request(cpu, _cpu_seconds(), total)
        latencies.sort()
        print(
            f"enqueue through one function process (gevent, WEB_CONCURRENCY=1), {clients} clients: "
            f"{total / elapsed:.0f} req/s, p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
            f"p95 {latencies[int(len(latencies) * 0.95)] * 1000:.0f} ms ({total} requests in {elapsed:.1f} s)"
        )
        print(f"  CPU per enqueue: {cost}")


def worker(lanes: int = 40, per_lane: int = 25, processes: int = 1) -> None:
    with isolated_stack(Path(tempfile.mkdtemp()), ["--workers", "0"]) as stack:
        users = [stack.api.new_user(f"w{i}") for i in range(lanes)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = list(pool.map(lambda u: [u.enqueue("echo", {"n": n}) for n in range(per_lane)], users))
        total = lanes * per_lane
        pool_of_workers = Workers(stack.env)
        began, cpu = time.monotonic(), _cpu_seconds()
        pool_of_workers.start(processes, WORKER_SLOTS="4")
        try:
            wait_until(
                lambda: stack.database.outcomes.count_documents({"status": "done"}) == total,
                timeout=300,
                what="the backlog to drain",
                interval=0.2,
            )
            cost = _cpu_per_request(cpu, _cpu_seconds(), total)
        finally:
            pool_of_workers.stop_all()
        elapsed = time.monotonic() - began
        print(
            f"{processes} worker process(es), 4 slots each, {lanes} lanes x {per_lane} echo requests: "
            f"{total / elapsed:.0f} req/s ({total} in {elapsed:.1f} s, start-up included)"
        )
        print(f"  CPU per request run: {cost}")
        del ids


def broker(publishes: int = 2000) -> None:
    vhost = f"lanes-measure-{uuid.uuid4().hex[:8]}"
    vhost_url = open_vhost(vhost)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
        channel = connection.channel()
        channel.confirm_delivery()
        for queue_type in ("classic", "quorum"):
            settings = Settings.from_env({"QUEUE_TYPE": queue_type})
            partitions = [f"m.partition.{queue_type}.{n}" for n in range(settings.lane_partitions)]
            for name in partitions:
                channel.queue_declare(name, durable=True, arguments=partition_arguments(settings))
            began = time.monotonic()
            for n in range(publishes):
                # What one enqueue asks of the broker: one confirmed, persistent publish.
                channel.basic_publish(
                    "", partitions[n % len(partitions)], b'{"request_id":"x"}', pika.BasicProperties(delivery_mode=2)
                )
            rate = publishes / (time.monotonic() - began)
            print(f"{queue_type} partitions: {rate:.0f} enqueue round trips/s on one connection")
        connection.close()
    finally:
        management_api("DELETE", f"/api/vhosts/{vhost}")


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by each kind of process on this machine that Lanes runs on."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        kind = (
            "broker"
            if b"beam.smp" in argv
            else "database"
            if b"lanes-ferretdb" in argv
            else f"function:{Path(cwd).name}"
            if b"gunicorn" in argv
            else "worker"
            if argv.endswith(b"main.py\0")
            else None
        )
        if kind:
            totals[kind] = totals.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return totals


def _cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> str:
    """ms of CPU per request, by process kind (a shared broker or database adds others' load)."""
    used = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return ", ".join(f"{k} {v * 1000 / requests:.1f} ms" for k, v in sorted(used.items()) if v > 0.05)


def _broker_memory() -> int:
    return int(management_api("GET", "/api/nodes?columns=mem_used")[0]["mem_used"])


def _summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


MEASUREMENTS = {"coldstart": coldstart, "function": function, "worker": worker, "broker": broker}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=[*MEASUREMENTS, "all"])
    parser.add_argument("--processes", type=int, default=1, help="worker processes for `worker`")
    args = parser.parse_args(argv)
    started = services.up()
    try:
        for name, measure in MEASUREMENTS.items():
            if args.what in (name, "all"):
                measure(**({"processes": args.processes} if name == "worker" else {}))  # type: ignore[operator]
    finally:
        services.down(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
