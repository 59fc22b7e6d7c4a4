"""End to end: many users each send a few `echo` requests in order; Lanes against Celery.

Both go through the same front shape (nginx, one gunicorn process with gevent) and
run on the same number of worker processes. Each user sends request k+1 only after
request k was accepted; the run is timed from the first send to the last result
stored. An ordering violation is a request that started before the one its user
sent before it had finished (SPEC §3.3); Celery promises no such order.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import cpu, ops
from bench.baseline.tasks import COLLECTION
from bench.client import Http, User
from bench.context import Context
from bench.infra import published, wait_vhost_idle
from bench.lanes_stack import TERMINAL, epoch, wait_terminal
from bench.load import Submitted, submit_in_order
from bench.profiling import Profiler, gunicorn_worker

# A 503 means "not accepted, try again"; clients here retry at once, and the count is reported.
RETRIES = 20


@dataclass(frozen=True)
class Timing:
    """One request's start, finish and result-stored times (wall clock, seconds)."""

    started: float | None
    finished: float | None
    stored: float | None
    done: bool

    def overtaken_by(self, later: Timing) -> bool:
        """True when `later` (sent after this one was accepted) started before this one finished."""
        if later.started is None or self.finished is None:
            return False
        return later.started < self.finished


def run(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"details": {"workloads": {}}}
    for users, per_user in ctx.sizes.e2e:
        name = f"{users}x{per_user}"
        chosen = ctx.users[:users]
        lanes = run_lanes(ctx, chosen, per_user, name)
        celery = run_celery(ctx, chosen, per_user, name)
        # The first workload gives the headline figures; the others carry their name.
        suffix = f"_{name}" if out["details"]["workloads"] else ""
        out["details"]["workloads"][name] = {"lanes": lanes, "celery": celery}
        out[f"lanes_e2e_rps{suffix}"] = lanes["rps"]
        out[f"lanes_order_violations{suffix}"] = lanes["order_violations"]
        out[f"celery_e2e_rps{suffix}"] = celery["rps"]
        out[f"celery_order_violations{suffix}"] = celery["order_violations"]
    return out


def run_lanes(ctx: Context, users: list[User], per_user: int, name: str) -> dict[str, Any]:
    assert ctx.lanes is not None
    stack = ctx.lanes
    tokens = {u.id: u.token for u in users}

    def send(http: Http, user_id: str, seq: int) -> tuple[int, str | None]:
        status, body = http.post("/enqueue", {"action": "echo", "data": {"seq": seq}}, tokens[user_id], RETRIES)
        return status, body["request_id"] if status == 202 else None

    def timings(ids: list[str]) -> dict[str, Timing]:
        records = wait_terminal(stack.db, ids, timeout=30)
        return {
            i: Timing(
                started=epoch(r.get("started_at")),
                finished=epoch(r.get("finished_at")),
                stored=epoch(r.get("finished_at")),
                done=r.get("status") in TERMINAL,
            )
            for i, r in records.items()
        }

    profiler = Profiler(ctx.procs, ctx.run_dir) if ctx.profile and "profiles" not in ctx.notes else None

    def start() -> None:
        stack.workers.start(ctx.sizes.workers)
        if profiler is not None:
            enqueue_pid = gunicorn_worker(stack.runner_pid, "enqueue")
            if enqueue_pid is not None:
                profiler.start("enqueue", enqueue_pid, ctx.sizes.e2e_submit_seconds)
            profiler.start("worker", stack.workers.running[0].pid, ctx.sizes.e2e_submit_seconds + 90)

    workers = f"{ctx.sizes.workers} worker processes x {stack.workers.slots} slots"
    result = _run(
        ctx,
        f"lanes {name}",
        stack.base_url,
        stack.vhost,
        list(tokens),
        per_user,
        send,
        timings,
        start=start,
        stop=stack.workers.stop,
        workers=workers,
    )
    if profiler is not None:
        ctx.notes["profiles"] = {"during": f"lanes {name}", **profiler.finish()}
    return result


def run_celery(ctx: Context, users: list[User], per_user: int, name: str) -> dict[str, Any]:
    assert ctx.baselines is not None
    baselines = ctx.baselines

    def send(http: Http, user_id: str, seq: int) -> tuple[int, str | None]:
        status, body = http.post("/celery", {"user": user_id, "seq": seq, "data": {"seq": seq}}, None, RETRIES)
        return status, body["task_id"] if status == 202 else None

    workers = f"1 Celery worker, prefork pool of {ctx.sizes.workers} processes"
    return _run(
        ctx,
        f"celery {name}",
        baselines.base_url,
        baselines.vhost,
        [u.id for u in users],
        per_user,
        send,
        lambda ids: _celery_timings(baselines.db, set(ids), timeout=30),
        start=lambda: baselines.start_celery(ctx.sizes.workers),
        stop=baselines.stop_celery,
        workers=workers,
    )


def _run(
    ctx: Context,
    label: str,
    base_url: str,
    vhost: str,
    users: list[str],
    per_user: int,
    send: Callable[[Http, str, int], tuple[int, str | None]],
    timings_of: Callable[[list[str]], dict[str, Timing]],
    start: Callable[[], None],
    stop: Callable[[], None],
    workers: str,
) -> dict[str, Any]:
    """Start the workers, submit in order, wait until the vhost is idle, read the timings.
    The broker's and database's counters are read once the workers are up and again once the
    work is done, each after the broker's figures settle (this costs 5 to 12 s a side)."""
    start()
    admin = ctx.isolation.db("admin")
    try:
        ctx.say("e2e", f"{label}: {workers} up; {len(users)} users submitting {per_user} requests each")
        counted = ops.snapshot(vhost, admin)
        before, base = cpu.snapshot(), published(vhost)
        submit_for = max(5.0, min(ctx.sizes.e2e_submit_seconds, ctx.time_left() - 30))
        submitted = submit_in_order(base_url, users, per_user, send, ctx.sizes.submit_threads, submit_for)
        ctx.say("e2e", f"{label}: {submitted.accepted} accepted in {submitted.summary()['submit_seconds']} s")
        idle = wait_vhost_idle(vhost, base + submitted.accepted, timeout=max(10.0, min(90.0, ctx.time_left() - 20)))
        used = cpu.usage(before, cpu.snapshot(), submitted.accepted)
        counted_after = ops.snapshot(vhost, admin)
        timings = timings_of(list(itertools.chain.from_iterable(submitted.ids.values())))
    finally:
        stop()
    result = {**_measure(submitted, timings), "workers": workers, "drained": idle, "cpu": used}
    result["ops"] = ops.usage(counted, counted_after, result["completed"])
    if submitted.accepted < len(users) * per_user:
        result["cut_short"] = f"{submitted.accepted} of {len(users) * per_user} sent within {submit_for:.0f} s"
    ctx.say("e2e", f"{label}: {result['rps']} req/s end to end, {result['order_violations']} ordering violations")
    return result


def _celery_timings(db: Any, ids: set[str], timeout: float) -> dict[str, Timing]:
    """Per task: its start, and its finish, when it stored its record (bench/baseline/tasks.py)."""
    deadline = time.monotonic() + timeout
    while True:
        timings = {
            r["_id"]: Timing(started=r["started"], finished=r["finished"], stored=r["finished"], done=True)
            for r in db[COLLECTION].find({}, {"started": 1, "finished": 1})
            if r["_id"] in ids
        }
        if len(timings) == len(ids) or time.monotonic() > deadline:
            return timings
        time.sleep(1)


def _measure(submitted: Submitted, timings: dict[str, Timing]) -> dict[str, Any]:
    """Throughput from the first send to the last stored result, and per-user ordering."""
    stored = [t.stored for t in timings.values() if t.done and t.stored is not None]
    seconds = max(1e-6, max(stored, default=submitted.first_send) - submitted.first_send)
    violations = sum(
        1
        for ids in submitted.ids.values()
        for before, after in itertools.pairwise(timings.get(i) for i in ids)
        if before is not None and after is not None and before.overtaken_by(after)
    )
    return {
        **submitted.summary(),
        "completed": len(stored),
        "not_completed": submitted.accepted - len(stored),
        "seconds": round(seconds, 2),
        "rps": round(len(stored) / seconds, 1),
        "order_violations": violations,
    }
