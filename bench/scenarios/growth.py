"""Growth: does Lanes slow down as history piles up, and does retention give the space back?

On a stack of its own (fresh vhost and database), the same workload runs twice: with an
empty database, and after `growth_records` terminal requests (record, claim, outcome,
as the enqueue function and the worker store them) were loaded in bulk, not through
HTTP. Each time: end-to-end throughput of users sending `echo` requests in order, then
/enqueue latency at a fixed rate (open loop) while the workers run. The loaded requests
finished 8 days ago and the stack keeps requests 10 days, so its own sweeper leaves them
alone while they are measured; afterwards a reaper with the default retention (7 days)
purges them within a time budget, and the database's size is read before and after.
"""

from __future__ import annotations

import itertools
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.client import Http, User, register_users
from bench.context import Context
from bench.infra import published, wait_vhost_idle
from bench.lanes_stack import TERMINAL, LanesStack, epoch, start_stack
from bench.load import paced, submit_in_order
from bench.scenarios.e2e import RETRIES, Timing, _measure
from deploy import services
from lanes.retention import Reaper
from lanes.settings import Settings

AGE = timedelta(days=8)  # of the loaded history: past the default 7 days, within the stack's 10
CHUNK = 2000


def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    stack = start_stack(ctx.isolation, ctx.procs, ctx.run_dir / "data", purpose="growth", RETENTION_DAYS="10")
    try:
        users = register_users(stack.base_url, sizes.growth_users)
        ctx.say("growth", f"stack up, {len(users)} users")
        empty = _workload(ctx, stack, users, "empty database")
        # History is older than what the first run stored, and stored before it: start the
        # history over, so that the collections hold it in the order time would have.
        for name in ("requests", "claims", "outcomes", "idempotency_keys"):
            stack.db.drop_collection(name)
        began = time.monotonic()
        _load_history(stack.db, sizes.growth_records)
        loaded_in = round(time.monotonic() - began, 1)
        ctx.say("growth", f"{sizes.growth_records:,} terminal requests loaded in {loaded_in} s")
        loaded = _workload(ctx, stack, users, f"{sizes.growth_records:,} terminal requests stored")
        reaped = _reap(ctx, stack)
    finally:
        stack.workers.stop()
    return {
        "lanes_growth_rps_empty": empty["rps"],
        "lanes_growth_rps_loaded": loaded["rps"],
        "lanes_growth_enqueue_p99_ms_empty": empty["enqueue"]["p99_ms"],
        "lanes_growth_enqueue_p99_ms_loaded": loaded["enqueue"]["p99_ms"],
        "lanes_growth_db_mb_before_reaping": reaped["before"]["total_mb"],
        "lanes_growth_db_mb_after_reaping": reaped["after"]["total_mb"],
        "details": {
            "records": sizes.growth_records,
            "loaded_seconds": loaded_in,
            "empty": empty,
            "loaded": loaded,
            "reaping": reaped,
        },
    }


def _workload(ctx: Context, stack: LanesStack, users: list[User], label: str) -> dict[str, Any]:
    """End to end in order, then /enqueue at a fixed rate while the workers drain it."""
    sizes = ctx.sizes
    tokens = {u.id: u.token for u in users}

    def send(http: Http, user_id: str, seq: int) -> tuple[int, str | None]:
        status, body = http.post("/enqueue", {"action": "echo", "data": {"seq": seq}}, tokens[user_id], RETRIES)
        return status, body["request_id"] if status == 202 else None

    stack.workers.start(sizes.workers)
    try:
        base = published(stack.vhost)
        submitted = submit_in_order(
            stack.base_url, list(tokens), sizes.growth_per_user, send, sizes.submit_threads, sizes.e2e_submit_seconds
        )
        wait_vhost_idle(stack.vhost, base + submitted.accepted, timeout=90)
        ids = list(itertools.chain.from_iterable(submitted.ids.values()))
        result = _measure(submitted, _timings(stack.db, ids))
        ctx.say("growth", f"{label}: {result['rps']} req/s end to end, {result['order_violations']} violations")

        rate = sizes.growth_enqueue_rate
        senders = [u.token for u in users]

        def one(http: Http, index: int) -> int:
            return http.post("/enqueue", {"action": "echo", "data": {"n": index}}, senders[index % len(senders)])[0]

        base = published(stack.vhost)
        latency = paced(stack.base_url, one, rate, sizes.load_seconds).summary()
        wait_vhost_idle(stack.vhost, base + int(rate * sizes.load_seconds * 0.9), timeout=60)
        ctx.say("growth", f"{label}: /enqueue at {latency['rate_achieved']} req/s, p99 {latency['p99_ms']} ms")
    finally:
        stack.workers.stop()
    return {**result, "enqueue": latency}


def _timings(db: Any, ids: list[str]) -> dict[str, Timing]:
    """Each request's outcome, read by `_id` (what FerretDB answers from its index): a
    scan of the outcomes would read the loaded history and measure the benchmark itself."""
    timings = {}
    for request_id in ids:
        outcome = db.outcomes.find_one({"_id": request_id}, {"status": 1, "started_at": 1, "finished_at": 1})
        if outcome is not None:
            finished = epoch(outcome.get("finished_at"))
            done = outcome.get("status") in TERMINAL
            timings[request_id] = Timing(epoch(outcome.get("started_at")), finished, finished, done)
    return timings


def _load_history(db: Any, count: int) -> None:
    """`count` requests that finished AGE ago, in insertion order as they would have been
    stored, spread over 1,000 users who are not the measured ones."""
    start = datetime.now(UTC) - AGE
    start_ms = int(start.timestamp() * 1000)
    for first in range(0, count, CHUNK):
        rows = []
        for n in range(first, min(count, first + CHUNK)):
            millis = start_ms + n
            at = datetime.fromtimestamp(millis / 1000, UTC)
            rows.append((_request_id(millis), f"history-{n % 1000}", at))
        db.requests.insert_many(
            [
                {"_id": i, "user_id": u, "action": "echo", "data_json": f'{{"n":{n}}}', "created_at": at}
                for n, (i, u, at) in enumerate(rows)
            ]
        )
        db.claims.insert_many([{"_id": i, "by": "worker", "at": at, "attempts": 1} for i, _u, at in rows])
        db.outcomes.insert_many(
            [
                {
                    "_id": i,
                    "user_id": u,
                    "action": "echo",
                    "status": "done",
                    "result_json": f'{{"n":{n}}}',
                    "error": None,
                    "attempts": 1,
                    "started_at": at,
                    "finished_at": at,
                }
                for n, (i, u, at) in enumerate(rows)
            ]
        )


def _request_id(millis: int) -> str:
    """A request id of that moment, in the layout of lanes.requests.new_request_id."""
    raw = bytearray(millis.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def _reap(ctx: Context, stack: LanesStack) -> dict[str, Any]:
    """Purge the loaded history as a stack with the default retention would, within the budget."""
    before = _size(stack)
    reaper = Reaper(stack.db, Settings(retention_days=7))
    budget = max(5.0, min(ctx.sizes.growth_reap_seconds, ctx.time_left() - 10))
    began, outcomes = time.monotonic(), 0
    while time.monotonic() - began < budget:
        reaped = reaper.reap(budget_seconds=budget - (time.monotonic() - began))
        outcomes += reaped.counts.get("outcomes", 0)
        if not reaped.total:
            break
    seconds = time.monotonic() - began
    after = _size(stack)
    ctx.say(
        "growth",
        f"reaped {outcomes:,} requests in {seconds:.1f} s; database {before['total_mb']} MB -> {after['total_mb']} MB",
    )
    return {
        "requests_reaped": outcomes,
        "seconds": round(seconds, 1),
        "requests_per_second": round(outcomes / seconds, 1) if seconds else None,
        "finished": outcomes >= ctx.sizes.growth_records,
        "before": before,
        "after": after,
    }


def _size(stack: LanesStack) -> dict[str, Any]:
    """The database's size as it reports it, and its SQLite file (which keeps freed pages
    for reuse: it does not shrink without a VACUUM)."""
    stats = stack.db.command("dbStats")
    mb = 1024 * 1024
    files = list((services.services_dir() / "ferretdb").glob(f"{stack.database}.sqlite*"))
    return {
        "objects": stats.get("objects"),
        "data_mb": round(stats.get("dataSize", 0) / mb, 1),
        "index_mb": round(stats.get("indexSize", 0) / mb, 1),
        "total_mb": round(stats.get("totalSize", stats.get("storageSize", 0)) / mb, 1),
        "file_mb": round(sum(f.stat().st_size for f in files) / mb, 1) if files else None,
    }
