"""`python -m bench [--quick]`: run every scenario within the time budget and write the report.

Exit status: 0 when no scenario failed (one the time budget left out is listed in the
report, not a failure), 1 when one failed (the report says which), 130 when
interrupted (nothing is written then, and everything started is stopped).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.baselines import start_baselines
from bench.client import register_users
from bench.context import FULL, QUICK, Context
from bench.infra import Isolation
from bench.lanes_stack import start_stack
from bench.procs import STOP, Processes
from bench.scenarios import backlog, broker, coldstart, e2e, elastic, enqueue, fairness, growth, hol, scale
from deploy import services
from deploy.template import ROOT

RESULTS = ROOT / "bench" / "results"


def start_stacks(ctx: Context) -> dict[str, Any]:
    """Lanes (HTTP functions behind nginx, no worker yet), the baselines' front, and users."""
    ctx.lanes = start_stack(ctx.isolation, ctx.procs, ctx.run_dir / "data")
    ctx.baselines = start_baselines(ctx.isolation, ctx.procs, ctx.run_dir)
    ctx.say("stack", f"Lanes on {ctx.lanes.base_url}, baselines on {ctx.baselines.base_url}")
    started = time.monotonic()
    ctx.users = register_users(ctx.lanes.base_url, ctx.sizes.users)
    ctx.say("stack", f"{len(ctx.users)} users registered and logged in ({time.monotonic() - started:.1f} s)")
    return {}


def stop_stacks(ctx: Context) -> dict[str, Any]:
    """The scale scenario runs alone: stop the HTTP stacks so they take no CPU."""
    ctx.procs.stop_all()
    ctx.lanes = ctx.baselines = None
    return {}


# (name, what it needs running first, the scenario, the least time it needs to be worth starting)
Phase = tuple[str, tuple[str, ...], Callable[[Context], dict[str, Any]], float]
PHASES: list[Phase] = [
    ("broker", (), broker.run, 10),
    ("stack", (), start_stacks, 20),
    ("e2e", ("stack",), e2e.run, 30),
    ("coldstart", ("stack",), coldstart.run, 10),
    ("fairness", ("stack",), fairness.run, 20),
    ("enqueue", ("stack",), enqueue.run, 20),
    ("stop", (), stop_stacks, 0),
    ("scale", (), scale.run, 20),
    ("backlog", (), backlog.run, 40),
    ("hol", (), hol.run, 40),
    ("elastic", (), elastic.run, 60),
    ("growth", (), growth.run, 60),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small workloads, about 3 minutes (default: full)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes (default: bench/results)")
    parser.add_argument("--only", help="comma-separated scenarios to run, for working on one (e.g. e2e,scale)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the enqueue function and a worker with py-spy during the first Lanes end-to-end run "
        "(costs CPU: the figures of such a run are marked as profiled)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    wanted = set(args.only.split(",")) if args.only else {name for name, *_ in PHASES}
    wanted |= {need for name, needs, *_ in PHASES if name in wanted for need in needs}

    run_dir = args.out / "run"  # logs, generated configs, data: replaced by every run
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    procs = Processes(run_dir / "logs")
    _install_signal_handlers()
    meta: dict[str, Any] = {
        "mode": sizes.mode,
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "profiled": args.profile,
        "started_at": _now(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "sizes": dataclasses.asdict(sizes),
    }
    started_services = services.up()
    ctx = Context(sizes, procs, Isolation(uuid.uuid4().hex[:8]), run_dir, profile=args.profile)
    ctx.say("bench", f"{sizes.mode} run, budget {sizes.budget:.0f} s; logs in {run_dir / 'logs'}")
    results: dict[str, Any] = {"details": {}}
    errors: dict[str, str] = {}  # a scenario that failed: the run fails
    skipped: dict[str, str] = {}  # a scenario the time budget (or a failure before it) left out
    done: set[str] = set()
    interrupted = False
    try:
        for name, needs, scenario, least in PHASES:
            if name not in wanted:
                continue
            if missing := [n for n in needs if n not in done]:
                skipped[name] = f"{', '.join(missing)} did not run"
                continue
            if ctx.time_left() < least:
                skipped[name] = f"{ctx.time_left():.0f} s of the time budget left"
                ctx.say(name, f"skipped: {skipped[name]}")
                continue
            ctx.say(name, "starting")
            try:
                outcome = scenario(ctx)
            except KeyboardInterrupt:
                raise
            except Exception as error:  # noqa: BLE001 - one scenario's failure must not hide the others
                errors[name] = f"{type(error).__name__}: {error}"
                ctx.say(name, f"FAILED: {errors[name]} (traceback in {run_dir / 'logs' / 'bench.log'})")
                with (run_dir / "logs" / "bench.log").open("a") as log:
                    traceback.print_exc(file=log)
                continue
            if details := outcome.pop("details", None):
                results["details"][name] = details
            results.update(outcome)
            done.add(name)
    except KeyboardInterrupt:
        interrupted = True
        ctx.say("bench", "interrupted; stopping everything this run started")
    finally:
        signal.signal(signal.SIGINT, lambda *_: ctx.say("bench", "still stopping; please wait"))
        STOP.set()
        procs.stop_all()
        for problem in ctx.isolation.close():
            ctx.say("bench", f"could not clean up {problem}")
        services.down(started_services)
    if interrupted:
        return 130
    meta |= {
        "finished_at": _now(),
        "seconds": round(ctx.elapsed(), 1),
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "machine": report.machine(),
    }
    details = {**results.pop("details"), **ctx.notes}
    results = {"meta": meta, **results, "errors": errors, "skipped": skipped, "details": details}
    written = report.write(results, args.out)
    ctx.say("bench", f"done in {ctx.elapsed():.0f} s; wrote {', '.join(written)} to {args.out}")
    print((args.out / "latest.md").read_text())
    return 1 if errors else 0


def _install_signal_handlers() -> None:
    def interrupt(signum: int, _frame: object) -> None:
        STOP.set()
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    sys.exit(main())
