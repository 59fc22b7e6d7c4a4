"""The report: latest.json (every figure), latest.md (the table, ratios and targets), PNG plots."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.infra import management_api
from bench.ops import CHURN
from deploy.template import ROOT


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    wanted: str
    met: bool | None  # None: not measured in this run


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines() if ln.startswith("model name")),
        platform.processor(),
    )
    mem_kib = next((int(ln.split()[1]) for ln in _read("/proc/meminfo").splitlines() if ln.startswith("MemTotal")), 0)
    try:
        rabbitmq = management_api("GET", "/api/overview").get("rabbitmq_version")
    except OSError:
        rabbitmq = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rabbitmq": rabbitmq,
        "database": "FerretDB 1.24 (SQLite), embedded launcher",
        "commit": _git("rev-parse", "--short", "HEAD"),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 2)


def targets(r: dict[str, Any]) -> list[Target]:
    out = []
    ratio = _ratio(r.get("lanes_e2e_rps"), r.get("celery_e2e_rps"))
    violations = r.get("lanes_order_violations")
    out.append(
        Target(
            "end to end vs Celery, in order",
            f"{ratio}x, {violations} violations",
            ">= 1.0x, 0 violations",
            None if ratio is None else ratio >= 1.0 and violations == 0,
        )
    )
    ratio = _ratio(r.get("lanes_enqueue_rps"), r.get("bare_enqueue_rps"))
    out.append(Target("enqueue vs bare publish", f"{ratio}x", ">= 0.5x", None if ratio is None else ratio >= 0.5))
    p99 = r.get("lanes_enqueue_p99_ms")
    out.append(Target("enqueue p99 at half peak", f"{p99} ms", "<= 50 ms", None if p99 is None else p99 <= 50))
    p99 = r.get("newcomer_p99_ms")
    left = r.get("details", {}).get("fairness", {}).get("backlog_left_when_last_newcomer_finished")
    out.append(
        Target(
            "newcomer p99 behind a backlog",
            f"{p99} ms ({left} of the backlog still queued)",
            "<= 1000 ms while the backlog drains",
            None if p99 is None else p99 <= 1000 and bool(left),
        )
    )
    ratio = _ratio(r.get("lanes_growth_rps_loaded"), r.get("lanes_growth_rps_empty"))
    out.append(
        Target(
            "end to end with stored history vs empty",
            f"{ratio}x",
            ">= 0.9x",
            None if ratio is None else ratio >= 0.9,
        )
    )
    ratio = _ratio(r.get("lanes_growth_enqueue_p99_ms_loaded"), r.get("lanes_growth_enqueue_p99_ms_empty"))
    out.append(
        Target(
            "enqueue p99 with stored history vs empty", f"{ratio}x", "<= 1.2x", None if ratio is None else ratio <= 1.2
        )
    )
    by_count = r.get("lanes_e2e_rps_by_count") or {}
    if by_count:
        low, high = min(by_count, key=int), max(by_count, key=int)
        ratio = _ratio(by_count[high], by_count[low])
        wanted = ">= 0.7x" + ("" if high == "10000" else " (at 10000 lanes; this run's largest count)")
        out.append(
            Target(f"throughput at {high} vs {low} lanes", f"{ratio}x", wanted, None if ratio is None else ratio >= 0.7)
        )
    ratio = _ratio(r.get("hol_light_p99_ms_bound"), r.get("hol_light_p99_ms_shared"))
    out.append(
        Target(
            "light p99 beside heavy lanes, lanes bound to workers vs one shared pool",
            f"{ratio}x",
            "<= 2x",
            None if ratio is None else ratio <= 2,
        )
    )
    for count, growth in (r.get("worker_rss_growth_mb_by_backlog") or {}).items():
        out.append(
            Target(
                f"worker memory growth, {int(count):,} waiting",
                f"{growth} MB",
                "<= 20 MB",
                growth <= 20,
            )
        )
    return out


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"
    elif isinstance(value, int):
        value = f"{value:,}"
    return f"{value}{unit}"


def markdown(r: dict[str, Any], plots: list[str] | None = None) -> str:
    meta, d = r["meta"], r.get("details", {})
    m = meta["machine"]
    rows = [
        ("Broker: publish, confirm each", "raw_publish_confirm_rps", r.get("raw_publish_confirm_rps"), None, "msg/s"),
        (
            "Broker: publish, 100 confirms in flight",
            "raw_publish_batched_rps",
            r.get("raw_publish_batched_rps"),
            None,
            "msg/s",
        ),
    ]
    for prefetch, value in (r.get("raw_consume_rps") or {}).items():
        rows.append((f"Broker: consume + ack, {prefetch.replace('_', ' ')}", "raw_consume_rps", value, None, "msg/s"))
    rows += [
        (
            "Bare enqueue endpoint (publish + confirm) peak",
            "bare_enqueue_rps",
            r.get("bare_enqueue_rps"),
            None,
            "req/s",
        ),
        (
            "Lanes POST /enqueue peak",
            "lanes_enqueue_rps",
            r.get("lanes_enqueue_rps"),
            r.get("bare_enqueue_rps"),
            "req/s",
        ),
        ("Lanes /enqueue p50 at half peak", "lanes_enqueue_p50_ms", r.get("lanes_enqueue_p50_ms"), None, "ms"),
        ("Lanes /enqueue p99 at half peak", "lanes_enqueue_p99_ms", r.get("lanes_enqueue_p99_ms"), None, "ms"),
    ]
    workloads = d.get("e2e", {}).get("workloads", {})
    for index, (name, pair) in enumerate(workloads.items()):
        suffix = "" if index == 0 else f"_{name}"
        rows += [
            (f"Celery end to end, {name}", f"celery_e2e_rps{suffix}", pair["celery"]["rps"], None, "req/s"),
            (
                f"Lanes end to end, {name}",
                f"lanes_e2e_rps{suffix}",
                pair["lanes"]["rps"],
                pair["celery"]["rps"],
                "req/s",
            ),
            (
                f"Celery ordering violations, {name}",
                f"celery_order_violations{suffix}",
                pair["celery"]["order_violations"],
                None,
                "",
            ),
            (
                f"Lanes ordering violations, {name}",
                f"lanes_order_violations{suffix}",
                pair["lanes"]["order_violations"],
                None,
                "",
            ),
        ]
    rows += [
        ("Newcomer latency p50, behind a backlog", "newcomer_p50_ms", r.get("newcomer_p50_ms"), None, "ms"),
        ("Newcomer latency p99, behind a backlog", "newcomer_p99_ms", r.get("newcomer_p99_ms"), None, "ms"),
    ]
    by_count = r.get("lanes_e2e_rps_by_count") or {}
    memory = r.get("lanes_memory_mb_by_count") or {}
    base = by_count.get(min(by_count, key=int)) if by_count else None
    for count in sorted(by_count, key=int):
        rows.append(
            (f"Worker throughput, {int(count):,} lanes", "lanes_e2e_rps_by_count", by_count[count], base, "req/s")
        )
    for count in sorted(memory, key=int):
        rows.append(
            (f"Partitions' memory, {int(count):,} lanes", "lanes_memory_mb_by_count", memory[count], None, "MB")
        )
    growth = r.get("worker_rss_growth_mb_by_backlog") or {}
    per_request = r.get("broker_bytes_per_waiting_request") or {}
    for count in sorted(growth, key=int):
        rows.append(
            (
                f"Worker memory growth, {int(count):,} waiting",
                "worker_rss_growth_mb_by_backlog",
                growth[count],
                None,
                "MB",
            )
        )
    for count in sorted(per_request, key=int):
        rows.append(
            (
                f"Broker memory per waiting request, {int(count):,} waiting",
                "broker_bytes_per_waiting_request",
                per_request[count],
                None,
                " B",
            )
        )
    rows += [
        (
            "Light lanes' p99 beside heavy ones, one shared pool (1 x 8 slots)",
            "hol_light_p99_ms_shared",
            r.get("hol_light_p99_ms_shared"),
            None,
            "ms",
        ),
        (
            "Light lanes' p99 beside heavy ones, bound to workers (2 x 4 slots)",
            "hol_light_p99_ms_bound",
            r.get("hol_light_p99_ms_bound"),
            r.get("hol_light_p99_ms_shared"),
            "ms",
        ),
    ]
    elastic = r.get("elastic_ratio_by_workers") or {}
    for count in sorted(elastic, key=int):
        rows.append(
            (
                f"Backlog drained by {count} worker(s) vs 1, classic partitions on one node",
                "elastic_ratio_by_workers",
                elastic[count],
                None,
                "x",
            )
        )
    rows.append(
        (
            "Backlog drained on quorum partitions, 3-node cluster vs classic on one node (2 workers)",
            "elastic_quorum_cluster_vs_classic",
            r.get("elastic_quorum_cluster_vs_classic"),
            None,
            "x",
        )
    )
    rows.append(("Cold start: worker start → first result", "cold_start_s", r.get("cold_start_s"), None, "s"))
    stored = d.get("growth", {}).get("records")
    rows += [
        ("Lanes end to end, empty database", "lanes_growth_rps_empty", r.get("lanes_growth_rps_empty"), None, "req/s"),
        (
            f"Lanes end to end, {_fmt(stored)} terminal requests stored",
            "lanes_growth_rps_loaded",
            r.get("lanes_growth_rps_loaded"),
            r.get("lanes_growth_rps_empty"),
            "req/s",
        ),
        (
            "Lanes /enqueue p99, empty database",
            "lanes_growth_enqueue_p99_ms_empty",
            r.get("lanes_growth_enqueue_p99_ms_empty"),
            None,
            "ms",
        ),
        (
            f"Lanes /enqueue p99, {_fmt(stored)} terminal requests stored",
            "lanes_growth_enqueue_p99_ms_loaded",
            r.get("lanes_growth_enqueue_p99_ms_loaded"),
            r.get("lanes_growth_enqueue_p99_ms_empty"),
            "ms",
        ),
        (
            "Database size before reaping",
            "lanes_growth_db_mb_before_reaping",
            r.get("lanes_growth_db_mb_before_reaping"),
            None,
            "MB",
        ),
        (
            "Database size after reaping (dbStats)",
            "lanes_growth_db_mb_after_reaping",
            r.get("lanes_growth_db_mb_after_reaping"),
            r.get("lanes_growth_db_mb_before_reaping"),
            "MB",
        ),
    ]

    lines = [
        f"# Lanes benchmark ({meta['mode']})",
        "",
        f"Run {meta['finished_at']} with `{meta['command']}` in {meta['seconds']:.0f} s on {m['cores']} cores "
        f"({m['cpu']}), {m['memory_gib']} GiB, RabbitMQ {m['rabbitmq']}, {m['database']}, "
        f"Python {m['python']}, commit {m['commit']}. "
        f"Load average before/after: {meta['load_before']} / {meta['load_after']}.",
        "",
        "| figure | key | value | ratio |",
        "|---|---|---:|---:|",
    ]
    for label, key, value, against, unit in rows:
        ratio = _ratio(value, against)
        lines.append(
            f"| {label} | `{key}` | {_fmt(value, ' ' + unit if unit else '')} | {_fmt(ratio, 'x') if ratio else ''} |"
        )
    lines += ["", "| target | measured | wanted | met |", "|---|---|---|---|"]
    for target in targets(r):
        met = "-" if target.met is None else ("yes" if target.met else "**no**")
        lines.append(f"| {target.name} | {target.measured} | {target.wanted} | {met} |")
    if r.get("errors"):
        lines += ["", "Scenarios that failed: " + "; ".join(f"{k}: {v}" for k, v in r["errors"].items())]
    if r.get("skipped"):
        lines += ["", "Scenarios left out: " + "; ".join(f"{k}: {v}" for k, v in r["skipped"].items())]
    lines += _notes(r)
    lines += _cpu_table(r)
    lines += _ops_table(r)
    lines += _profile_tables(d.get("profiles") or {})
    lines += [
        "",
        "Plots: `throughput.png`, `scale.png`, `latency.png`. Every figure, with its details: `latest.json`.",
        "",
    ]
    return "\n".join(lines)


def _notes(r: dict[str, Any]) -> list[str]:
    """What a reader of the table should know: work cut short by the time bounds, retried 503s."""
    d = r.get("details", {})
    notes = []
    for name, pair in d.get("e2e", {}).get("workloads", {}).items():
        for system, run in pair.items():
            if run.get("cut_short"):
                notes.append(f"{system} {name}: {run['cut_short']} (the rate is over what was sent)")
            if run.get("not_completed"):
                notes.append(f"{system} {name}: {run['not_completed']} accepted requests had no result in time")
            if run.get("retried_503"):
                notes.append(f"{system} {name}: {run['retried_503']} answers were 503 and sent again")
    for phase in ("fairness", "coldstart"):
        if retried := (d.get(phase) or {}).get("retried_503"):
            notes.append(f"{phase}: {retried} answers were 503 and sent again")
    for count, detail in (d.get("scale") or {}).items():
        if detail.get("lanes", int(count)) < int(count):
            notes.append(
                f"scale, {int(count):,} lanes: only {detail['lanes']:,} lanes were filled within the time bound"
            )
        if not detail.get("drained"):
            notes.append(
                f"scale, {int(count):,} lanes: the workers' window ended with work left "
                f"({detail['finished']:,} of {detail['queued']:,} finished); the rate is over the window"
            )
    return ["", "Notes:", "", *[f"* {n}" for n in notes]] if notes else []


def _cpu_runs(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    d = r.get("details", {})
    runs = []
    workloads = d.get("e2e", {}).get("workloads", {})
    if workloads:
        name, pair = next(iter(workloads.items()))
        runs += [(f"Lanes e2e {name}", pair["lanes"].get("cpu")), (f"Celery e2e {name}", pair["celery"].get("cpu"))]
    enqueue = d.get("enqueue", {})
    runs += [("Lanes /enqueue peak", enqueue.get("lanes_peak", {}).get("cpu"))]
    runs += [("bare peak", enqueue.get("bare_peak", {}).get("cpu"))]
    for count, detail in (d.get("scale") or {}).items():
        runs.append((f"workers, {int(count):,} lanes", detail.get("cpu")))
    return [(label, cpu) for label, cpu in runs if cpu and cpu.get("cpu_ms_per_request")]


def _cpu_table(r: dict[str, Any]) -> list[str]:
    """CPU milliseconds per request by process group: on 2 cores, the sum bounds throughput."""
    runs = _cpu_runs(r)
    if not runs:
        return []
    groups: list[str] = []
    for _label, cpu in runs:
        groups += [g for g in cpu["cpu_ms_per_request"] if g not in groups]
    lines = [
        "",
        "CPU per request, in milliseconds, by process (from /proc; RabbitMQ and FerretDB are shared with",
        "anything else running on the machine, and `other` is everything else, for the whole run):",
        "",
        *_head("process", [label for label, _ in runs]),
    ]
    for group in groups:
        lines.append(_row(group, [_fmt(cpu["cpu_ms_per_request"].get(group)) for _label, cpu in runs]))
    lines.append(_row("**sum**", [_fmt(round(sum(cpu["cpu_ms_per_request"].values()), 1)) for _label, cpu in runs]))
    lines.append(_row("other, CPU seconds in the run", [_fmt(cpu["cpu_seconds"].get("other")) for _label, cpu in runs]))
    return lines


def _ops_runs(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    runs = []
    for name, pair in r.get("details", {}).get("e2e", {}).get("workloads", {}).items():
        runs += [(f"Lanes e2e {name}", pair["lanes"].get("ops")), (f"Celery e2e {name}", pair["celery"].get("ops"))]
    return [(label, ops) for label, ops in runs if ops and ops.get("per_request")]


def _ops_table(r: dict[str, Any]) -> list[str]:
    """Broker and database operations per request: what a request cost the shared servers,
    in their own counts, whatever the code was meant to do."""
    runs = _ops_runs(r)
    if not runs:
        return []
    lines = [
        "",
        "Broker and database operations per request completed, end to end, from the servers' own counters",
        "(FerretDB's serverStatus, all databases; RabbitMQ's management API: messages in the run's vhost,",
        "queue, channel and connection churn node-wide), counted from the workers being up to the work done",
        "while only that scenario ran; both servers are shared, so anything else using them then counts too.",
        "In brackets, what others' traffic would account for at the rate seen while the run's vhost was quiet:",
        "",
        *_head("operation", [label for label, _ in runs]),
    ]
    for side in ("database", "broker"):
        keys: list[str] = []
        for _label, ops in runs:
            keys += [k for k in ops["per_request"][side] if k not in keys]
        for key in keys:
            lines.append(_row(_ops_label(side, key), [_ops_cell(ops, side, key) for _label, ops in runs]))
    lines.append(_row("requests completed", [_fmt(ops["requests"]) for _label, ops in runs]))
    lines.append(_row("seconds counted", [_fmt(ops["seconds"]) for _label, ops in runs]))
    if unsettled := [label for label, ops in runs if not ops.get("settled")]:
        lines += ["", f"RabbitMQ's figures were still changing when read (12 s at most) for: {', '.join(unsettled)}."]
    return lines


def _head(first: str, labels: list[str]) -> list[str]:
    """A table's header row and its alignment row: a text column, then one number column per run."""
    return [_row(first, labels), "|---|" + "---:|" * len(labels)]


def _row(first: str, cells: list[str]) -> str:
    return f"| {first} | " + " | ".join(cells) + " |"


def _ops_cell(ops: dict[str, Any], side: str, key: str) -> str:
    others = ops.get("background_per_request", {}).get(side, {}).get(key)
    return _fmt(ops["per_request"][side].get(key)) + (f" ({_fmt(others)})" if others else "")


def _ops_label(side: str, key: str) -> str:
    if side == "broker":
        return f"RabbitMQ {key}" + (" (node-wide)" if key in CHURN else "")
    return {
        "writes": "**FerretDB writes** (insert + update + delete + findAndModify)",
        "find": "FerretDB find (+ getMore)",
        "housekeeping": "FerretDB other (hello, ping, createIndexes, ...)",
    }.get(key, f"FerretDB {key}")


def _profile_tables(profiles: dict[str, Any]) -> list[str]:
    lines = []
    for name, summary in profiles.items():
        if not isinstance(summary, dict):
            continue
        lines += [
            "",
            f"Profile of the {name} process during {profiles.get('during')} ({summary['samples']} samples):",
            "",
        ]
        lines += ["| where | share |", "|---|---:|"]
        lines += [f"| {k} | {v} % |" for k, v in summary["by_library_pct"].items()]
        lines += [f"| `{k}` (inclusive) | {v} % |" for k, v in summary["lanes_functions_inclusive_pct"].items()]
    return lines


def plots(r: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    d = r.get("details", {})
    grey, blue, orange = "#999999", "#1f77b4", "#ff7f0e"
    candidates: list[tuple[str, Any, str]] = [
        ("raw publish, confirm each", r.get("raw_publish_confirm_rps"), grey),
        ("raw publish, 100 in flight", r.get("raw_publish_batched_rps"), grey),
        *[(f"raw consume+ack, {k.replace('_', ' ')}", v, grey) for k, v in (r.get("raw_consume_rps") or {}).items()],
        ("bare /enqueue (publish+confirm)", r.get("bare_enqueue_rps"), grey),
        ("Lanes /enqueue", r.get("lanes_enqueue_rps"), blue),
    ]
    for name, pair in d.get("e2e", {}).get("workloads", {}).items():
        candidates.append((f"Celery end to end {name}", pair["celery"]["rps"], orange))
        candidates.append((f"Lanes end to end {name}", pair["lanes"]["rps"], blue))
    bars = [(label, float(v), color) for label, v, color in candidates if isinstance(v, int | float) and v > 0]
    if bars:
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(bars) + 1.2))
        labels, values, colors = zip(*bars, strict=True)
        ax.barh(range(len(bars)), values, color=colors)
        ax.set_yticks(range(len(bars)), labels)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("messages or requests per second (log scale)")
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
        ax.set_title(f"Throughput, one run ({r['meta']['mode']}, {r['meta']['machine']['cores']} cores)")
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=110)
        plt.close(fig)
        written.append("throughput.png")

    by_count = r.get("lanes_e2e_rps_by_count") or {}
    memory = r.get("lanes_memory_mb_by_count") or {}
    if by_count:
        counts = sorted(by_count, key=int)
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
        left.plot([int(c) for c in counts], [by_count[c] for c in counts], "o-", color="#1f77b4")
        left.set_xscale("log")
        left.set_ylim(bottom=0)
        left.set_xlabel("lanes holding work")
        left.set_ylabel("worker throughput, req/s")
        left.set_title("Throughput by lane count")
        right.plot([int(c) for c in counts], [memory.get(c, 0) for c in counts], "o-", color="#2ca02c")
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_xlabel("lanes holding work")
        right.set_ylabel("lane queues' memory in RabbitMQ, MB")
        right.set_title("Broker memory by lane count")
        fig.tight_layout()
        fig.savefig(out / "scale.png", dpi=110)
        plt.close(fig)
        written.append("scale.png")

    latencies = d.get("fairness", {}).get("latencies_ms") or []
    enqueue = d.get("enqueue", {})
    if latencies or enqueue:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
        if latencies:
            ordered = sorted(latencies)
            left.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], color="#1f77b4")
            left.axvline(1000, color="#d62728", linestyle="--", linewidth=1, label="target p99")
            left.set_xlabel("newcomer's first request: send → result, ms")
            left.set_ylabel("fraction of newcomers")
            left.set_title(f"Newcomers behind a {d['fairness'].get('heavy_backlog')}-request backlog")
            left.legend(loc="lower right")
        if enqueue:
            names, p50, p99 = [], [], []
            for label, key in (("Lanes /enqueue", "lanes_half_peak"), ("bare publish", "bare_same_rate")):
                if key in enqueue:
                    names.append(label)
                    p50.append(enqueue[key]["p50_ms"])
                    p99.append(enqueue[key]["p99_ms"])
            x = range(len(names))
            right.bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
            right.bar([i + 0.2 for i in x], p99, width=0.4, label="p99")
            right.axhline(50, color="#d62728", linestyle="--", linewidth=1, label="target p99")
            right.set_xticks(list(x), names)
            right.set_ylabel("ms")
            rate = enqueue.get("lanes_half_peak", {}).get("rate_achieved")
            right.set_title(f"Enqueue latency at {rate} req/s (half of Lanes' peak)")
            right.legend()
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)
        written.append("latency.png")
    return written


def write(r: dict[str, Any], out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    r["targets"] = [t.__dict__ for t in targets(r)]
    (out / "latest.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
    drawn = plots(r, out)
    (out / "latest.md").write_text(markdown(r, drawn))
    return ["latest.json", "latest.md", *drawn]
