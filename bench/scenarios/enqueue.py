"""The enqueue path: Lanes' POST /enqueue against a bare endpoint that only publishes.

Both sit behind nginx on one gunicorn process with gevent. Peak throughput comes
from wrk at fixed concurrency; latency is then measured open-loop at half of Lanes'
peak rate. No worker runs meanwhile, so only the path to the 202 is measured.
"""

from __future__ import annotations

from typing import Any

from bench import cpu
from bench.client import Http
from bench.context import Context
from bench.infra import management_api
from bench.load import paced, wrk_post

BODY = {"action": "echo", "data": {"n": 1}}


def run(ctx: Context) -> dict[str, Any]:
    assert ctx.lanes is not None and ctx.baselines is not None
    lanes_url, bare_url = ctx.lanes.base_url, ctx.baselines.base_url
    tokens = [u.token for u in ctx.users[: ctx.sizes.enqueue_users]]
    seconds, connections = ctx.sizes.load_seconds, ctx.sizes.load_connections
    script_dir = ctx.run_dir / "wrk"
    script_dir.mkdir(parents=True, exist_ok=True)

    def wrk(name: str, url: str, tokens: list[str], seconds: float) -> dict[str, Any]:
        before = cpu.snapshot()
        result = wrk_post(ctx.procs, name, url, BODY, tokens, connections, seconds, script_dir)
        return {**result, "cpu": cpu.usage(before, cpu.snapshot(), result["requests"])}

    wrk("wrk-warmup-lanes", f"{lanes_url}/enqueue", tokens, 1)
    lanes = wrk("wrk-lanes", f"{lanes_url}/enqueue", tokens, seconds)
    ctx.say(
        "enqueue", f"lanes /enqueue peak: {lanes['rps']} req/s at {connections} connections ({lanes['errors']} errors)"
    )
    wrk("wrk-warmup-bare", f"{bare_url}/bare", [], 1)
    bare = wrk("wrk-bare", f"{bare_url}/bare", [], seconds)
    ctx.say("enqueue", f"bare publish peak: {bare['rps']} req/s at {connections} connections ({bare['errors']} errors)")

    rate = max(1.0, lanes["rps"] / 2)

    def send_lanes(http: Http, index: int) -> int:
        return http.post("/enqueue", BODY, tokens[index % len(tokens)])[0]

    def send_bare(http: Http, index: int) -> int:
        return http.post("/bare", BODY)[0]

    half = paced(lanes_url, send_lanes, rate, seconds).summary()
    ctx.say(
        "enqueue",
        f"lanes at {half['rate_achieved']} req/s (half peak): p50 {half['p50_ms']} ms, p99 {half['p99_ms']} ms",
    )
    bare_half = paced(bare_url, send_bare, rate, seconds).summary()
    ctx.say("enqueue", f"bare at the same rate: p50 {bare_half['p50_ms']} ms, p99 {bare_half['p99_ms']} ms")
    # The bare endpoint's messages are not work: drop them.
    management_api("DELETE", f"/api/queues/{ctx.baselines.vhost}/bench.bare/contents")
    return {
        "lanes_enqueue_rps": lanes["rps"],
        "lanes_enqueue_p50_ms": half["p50_ms"],
        "lanes_enqueue_p99_ms": half["p99_ms"],
        "bare_enqueue_rps": bare["rps"],
        "details": {
            "lanes_peak": lanes,
            "bare_peak": bare,
            "lanes_half_peak": half,
            "bare_same_rate": bare_half,
            "users": len(tokens),
        },
    }
