"""Fairness and isolation: one user's long backlog must not hold up newcomers.

Given one user with a backlog queued while no worker runs, when the workers start
and, while they work through that backlog, other users send one request each, then
each newcomer's latency runs from its send to its result being stored. Newcomers
arrive at a steady rate, each when it is due (open loop). The workers stop once
every newcomer has its result; what is left of the backlog stays queued.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.client import PerThread
from bench.context import Context
from bench.lanes_stack import TERMINAL, epoch, scan_records
from bench.load import percentile
from bench.procs import STOP

FILL_SECONDS = 45  # the backlog is cut short (and reported so) past this
# Each of the heavy user's requests sleeps this long: its lane runs one request at a time,
# so a backlog of 2,000 lasts ~25 s, longer than the newcomers take to arrive (10 s), and
# the figure measures newcomers *while* the backlog drains, not after.
HEAVY_SLEEP_MS = 10
NEWCOMER_RATE = 20.0  # newcomers per second: about half of what Lanes sustains end to end here


def run(ctx: Context) -> dict[str, Any]:
    assert ctx.lanes is not None
    stack = ctx.lanes
    heavy, newcomers = ctx.users[0], ctx.users[1 : 1 + ctx.sizes.newcomers]
    clients = PerThread(stack.base_url)

    def enqueue(token: str, request: dict[str, Any] | None = None) -> tuple[str, float]:
        if STOP.is_set():
            raise KeyboardInterrupt
        sent = time.time()
        body = request or {"action": "echo", "data": {}}
        status, body = clients.get().post("/enqueue", body, token, retry_unavailable=20)
        if status != 202:
            raise RuntimeError(f"enqueue answered {status}: {body}")
        return body["request_id"], sent

    # Given: the heavy user's backlog of short sleeps, queued while no worker runs.
    fill_until = time.monotonic() + min(FILL_SECONDS, max(5.0, ctx.time_left() - 60))

    heavy_request = {"action": "sleep", "data": {"ms": HEAVY_SLEEP_MS}}

    def fill(_: int) -> str | None:
        return enqueue(heavy.token, heavy_request)[0] if time.monotonic() < fill_until else None

    backlog = [enqueue(heavy.token, heavy_request)[0]]
    with ThreadPoolExecutor(8) as pool:
        backlog += [i for i in pool.map(fill, range(ctx.sizes.heavy_requests - 1)) if i is not None]
    ctx.say("fairness", f"one user has {len(backlog)} requests queued; starting {ctx.sizes.workers} workers")
    stack.workers.start(ctx.sizes.workers)
    try:
        time.sleep(0.5)  # the heavy lane is being run
        # When: newcomers arrive, one request each, at a steady rate the system sustains
        # (a burst would measure the burst's own queue, not what the backlog does to it).
        first = time.time() + 0.1

        def arrive(index: int) -> tuple[str, float]:
            time.sleep(max(0.0, first + index / NEWCOMER_RATE - time.time()))
            return enqueue(newcomers[index].token)

        with ThreadPoolExecutor(16) as pool:
            sent = list(pool.map(arrive, range(len(newcomers))))
        ctx.say("fairness", f"{len(sent)} newcomers sent one request each, {NEWCOMER_RATE:g} a second")
        done = _wait_each(stack.db, [i for i, _ in sent], timeout=max(10.0, min(60.0, ctx.time_left() - 30)))
    finally:
        # The rest of the backlog is left queued: no later scenario runs a worker on it.
        stack.workers.stop()
        clients.close()
    heavy_records = scan_records(stack.db, backlog)
    # Then: newcomer latencies, and how much of the backlog was left when the last one finished.
    latencies = [(epoch(done[i]["finished_at"]) or 0) - at for i, at in sent if i in done]
    last_newcomer = max((epoch(r["finished_at"]) or 0 for r in done.values()), default=0.0)
    heavy_finished = [
        f for r in heavy_records.values() if r.get("status") in TERMINAL and (f := epoch(r.get("finished_at")))
    ]
    heavy_started = [s for r in heavy_records.values() if (s := epoch(r.get("started_at")))]
    left = len(backlog) - sum(1 for f in heavy_finished if f <= last_newcomer)
    span = max(heavy_finished) - min(heavy_started) if heavy_finished and heavy_started else 0.0
    result = {
        "newcomer_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "newcomer_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "details": {
            "heavy_backlog": len(backlog),
            "retried_503": clients.unavailable(),
            "newcomers": len(sent),
            "newcomer_rate_per_s": NEWCOMER_RATE,
            "newcomers_completed": len(latencies),
            "newcomer_max_ms": round(max(latencies, default=float("nan")) * 1000, 1),
            "backlog_left_when_last_newcomer_finished": left,
            "heavy_finished_while_measured": len(heavy_finished),
            "heavy_lane_rps": round(len(heavy_finished) / span, 1) if span else None,
            "latencies_ms": [round(x * 1000, 1) for x in latencies],
        },
    }
    ctx.say(
        "fairness",
        f"newcomers p50 {result['newcomer_p50_ms']} ms, p99 {result['newcomer_p99_ms']} ms; "
        f"{left} of the backlog still queued when the last newcomer finished",
    )
    return result


def _wait_each(db: Any, request_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Look up each pending request by `_id` (the one indexed lookup) until all are terminal."""
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(request_ids) and time.monotonic() < deadline:
        for request_id in request_ids:
            if request_id in done:
                continue
            record = db.outcomes.find_one({"_id": request_id}, {"status": 1, "finished_at": 1})
            if record is None or record["status"] not in TERMINAL:
                break  # later ones are most likely pending too; look again shortly
            done[request_id] = record
        time.sleep(0.2)
    return done
