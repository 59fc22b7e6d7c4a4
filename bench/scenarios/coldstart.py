"""Cold start: a request arrives while no worker runs; how long until its result?

Measured as the platform sees it when it scales the worker from zero: the request is
accepted (202) with no worker running, then one worker process is started; the
figure runs from that start to the request's result being stored. Worker start-up
(interpreter, imports, connections) is included; the platform's own reaction time
to the backlog is not.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.client import Http
from bench.context import Context
from bench.lanes_stack import TERMINAL, epoch


def run(ctx: Context) -> dict[str, Any]:
    assert ctx.lanes is not None
    stack = ctx.lanes
    samples = []
    http = Http(stack.base_url)
    try:
        for index in range(ctx.sizes.cold_samples):
            user = ctx.users[-(index + 1)]
            sent = time.time()
            status, body = http.post("/enqueue", {"action": "echo", "data": {"cold": index}}, user.token, 20)
            if status != 202:
                raise RuntimeError(f"enqueue answered {status}: {body}")
            started = time.time()
            stack.workers.start(1, wait=False)
            try:
                record = _wait_result(stack.db, body["request_id"], timeout=60)
            finally:
                stack.workers.stop()
            finished = epoch(record["finished_at"]) if record else None
            samples.append(
                {
                    "worker_start_to_result_s": round(finished - started, 3) if finished else None,
                    "send_to_result_s": round(finished - sent, 3) if finished else None,
                }
            )
            ctx.say("coldstart", f"sample {index + 1}: {samples[-1]['worker_start_to_result_s']} s")
    finally:
        http.close()
    measured = [s["worker_start_to_result_s"] for s in samples if s["worker_start_to_result_s"] is not None]
    return {
        "cold_start_s": round(statistics.median(measured), 3) if measured else None,
        "details": {
            "method": "one worker process started after the request was accepted -> result stored",
            "samples": samples,
            "retried_503": http.unavailable,
        },
    }


def _wait_result(db: Any, request_id: str, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = db.outcomes.find_one({"_id": request_id}, {"status": 1, "finished_at": 1})
        if record is not None and record["status"] in TERMINAL:
            return dict(record)
        time.sleep(0.02)
    return None
