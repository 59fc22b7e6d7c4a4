"""Sampling profiles of Lanes' processes during a measurement (`--profile`), with py-spy.

py-spy reads the target's memory from outside, so the code under test is unchanged;
sampling still costs CPU on this machine, which is why figures of a profiled run are
marked as such. Each profile is summarised as shares of the samples: by library
(where the time went: MongoDB driver, RabbitMQ client, HTTP framework, ...) and by
Lanes function (inclusive). Samples are of the main thread of a gevent process or
of every thread of a worker; an idle thread is not sampled (py-spy's default).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path
from subprocess import Popen
from typing import Any

from bench.procs import Processes
from deploy.template import ROOT

PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
# A sample counts for the first of these libraries found anywhere on its stack ...
CALLED = (
    ("MongoDB driver (pymongo, bson)", ("(pymongo/", "(bson/")),
    ("RabbitMQ client (pika)", ("(pika/",)),
    ("token verification (PyJWT, cryptography)", ("(jwt/", "(cryptography/")),
    ("logging", ("(logging/",)),
)
# ... or else for the one its innermost frame is in.
LEAF = (
    ("gevent hub and sockets", ("(gevent/",)),
    ("HTTP (flask, werkzeug, gunicorn)", ("(flask/", "(werkzeug/", "(gunicorn/")),
    ("JSON", ("(json/",)),
    ("Lanes code", ("(lanes/", "(app.py", "(main.py")),
)


def gunicorn_worker(root: int, function_dir: str) -> int | None:
    """The PID of the gunicorn worker (not the master) of functions/<function_dir> under `root`."""
    cwd_of, parent = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            parent[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            cwd_of[int(entry)] = os.readlink(f"/proc/{entry}/cwd")
        except (OSError, ValueError):
            continue

    def under_root(pid: int) -> bool:
        for _ in range(16):
            if pid == root:
                return True
            pid = parent.get(pid, 0)
        return False

    suffix = f"/functions/{function_dir}"
    for pid, cwd in cwd_of.items():
        master = parent.get(pid, 0)
        if cwd.endswith(suffix) and cwd_of.get(master, "").endswith(suffix) and under_root(master):
            return pid
    return None


class Profiler:
    def __init__(self, procs: Processes, out: Path) -> None:
        self.procs = procs
        self.out = out
        self._running: list[tuple[str, Popen[bytes], Path]] = []

    def start(self, name: str, pid: int, seconds: float) -> None:
        target = self.out / f"profile-{name}.txt"
        argv = [PY_SPY, "record", "--nonblocking", "--rate", "50", "-p", str(pid)]
        argv += ["-d", str(max(1, round(seconds))), "-f", "raw", "-o", str(target)]
        self._running.append((name, self.procs.start(f"py-spy-{name}", argv, dict(os.environ), ROOT), target))

    def finish(self) -> dict[str, Any]:
        summaries = {}
        for name, process, target in self._running:
            self.procs.stop(process, grace=30, signum=signal.SIGINT)  # on SIGINT py-spy writes what it has
            if target.exists():
                summaries[name] = summarise(target)
        self._running.clear()
        return summaries


def summarise(path: Path, top: int = 12) -> dict[str, Any]:
    """Shares of samples by library (innermost library on the stack) and by Lanes function."""
    total = 0
    libraries: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        libraries[_library(frames)] += samples
        for function in {_short(f) for f in frames if "(lanes/" in f or "(functions/" in f}:
            functions[function] += samples
    share = 100.0 / max(1, total)
    return {
        "samples": total,
        "by_library_pct": {k: round(v * share, 1) for k, v in libraries.most_common()},
        "lanes_functions_inclusive_pct": {k: round(v * share, 1) for k, v in functions.most_common(top)},
    }


def _library(frames: list[str]) -> str:
    for label, fragments in CALLED:
        if any(fragment in frame for frame in frames for fragment in fragments):
            return label
    for label, fragments in LEAF:
        if any(fragment in frames[-1] for fragment in fragments):
            return label
    return "other (interpreter, standard library)"


def _short(frame: str) -> str:
    """`Requests.claim (lanes/requests.py)` from py-spy's `Requests.claim (lanes/requests.py:123)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    return f"{name} ({'/'.join(parts[-2:])})"
