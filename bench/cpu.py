"""Where the CPU went during a measurement: per process group, from /proc, read-only.

On a 2-core machine the question behind every figure is which process used the
cores. The shared RabbitMQ and FerretDB count all their work, including other
people's traffic; `other` is everything on the machine that is none of these.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    at: float
    busy: float  # CPU seconds all cores spent not idle, since boot
    groups: dict[str, float]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def _name(pid: int, ours: bool) -> str | None:
    cmdline = _read(f"/proc/{pid}/cmdline").replace("\0", " ")
    if "lanes-ferretdb" in cmdline:
        return "FerretDB (shared)"
    if "beam.smp" in cmdline and "rabbit" in cmdline:
        return "RabbitMQ (shared)"
    if not ours:
        return None
    if pid == os.getpid():
        return "bench client"
    if "nginx" in cmdline.split(" ", 1)[0]:
        return "nginx"
    if "celery" in cmdline:
        return "celery worker"
    if "bench.baseline.app" in cmdline:
        return "baseline web"
    if "wrk" in cmdline.split(" ", 1)[0]:
        return "wrk"
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return "other bench child"
    if "/functions/" in cwd:
        return f"lanes {Path(cwd).name}"
    return "runner" if "deploy.runner" in cmdline else "other bench child"


def snapshot() -> Snapshot:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            stats[int(entry)] = stat
    me = os.getpid()

    def ours(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == me:
                return True
            pid = stats.get(pid, (0, 0.0))[0]
            seen += 1
        return False

    groups: dict[str, float] = {}
    for pid, (_ppid, seconds) in stats.items():
        if (name := _name(pid, ours(pid))) is not None:
            groups[name] = groups.get(name, 0.0) + seconds
    cpu = _read("/proc/stat").splitlines()[0].split()[1:]
    idle = int(cpu[3]) + int(cpu[4])
    busy = (sum(int(x) for x in cpu[:8]) - idle) / TICKS
    return Snapshot(time.monotonic(), busy, groups)


def usage(before: Snapshot, after: Snapshot, requests: int = 0) -> dict[str, object]:
    """CPU seconds per group between two snapshots, busiest first, with `other` (everything
    else on the machine); with `requests`, also CPU milliseconds per request per group."""
    spent = {name: max(0.0, after.groups.get(name, 0.0) - before.groups.get(name, 0.0)) for name in after.groups}
    spent = {k: v for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v >= 0.01}
    busy = after.busy - before.busy
    spent["other"] = max(0.0, busy - sum(spent.values()))
    out: dict[str, object] = {
        "seconds": round(after.at - before.at, 2),
        "machine_busy_cores": round(busy / max(1e-6, after.at - before.at), 2),
        "cpu_seconds": {k: round(v, 2) for k, v in spent.items()},
    }
    if requests:
        out["cpu_ms_per_request"] = {k: round(v * 1000 / requests, 2) for k, v in spent.items() if k != "other"}
    return out
