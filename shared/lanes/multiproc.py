"""Where a process keeps its metrics: one multiprocess directory per function.

prometheus_client decides once, when it is first imported, whether metric values
live in memory or in files under PROMETHEUS_MULTIPROC_DIR. Gunicorn forks several
processes per function and a host may run several worker processes, so every
Lanes process writes files there and /metrics merges them (lanes.exposition).
This module therefore never imports prometheus_client: entry points call
`use_metrics_dir` before anything else does.

Counter and histogram files of exited processes stay (their counts must not go
backwards); files of `live*` gauges belong to one process and are removed when it
exits: by gunicorn's child_exit hook, by the worker on its way out, and by
`prune_dead` for a process that was killed without a chance to say so.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def default_dir(function: str, data_dir: str) -> Path:
    """`DATA_DIR/metrics/<function>`: the local runner's and the tests' convention."""
    return Path(data_dir).resolve() / "metrics" / function


def use_metrics_dir(function: str) -> Path:
    """Point prometheus_client at this function's directory (created if missing) and return it.

    Called at a process edge (gunicorn.conf.py, the worker's main) before
    prometheus_client is imported; an explicit PROMETHEUS_MULTIPROC_DIR wins.
    """
    path = Path(os.environ.get(ENV) or default_dir(function, os.environ.get("DATA_DIR") or ".lanes"))
    path.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(path)
    return path


def reset(path: Path) -> None:
    """Empty a directory at start, so counts of an earlier run do not leak into this one."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def mark_dead(pid: int, path: Path) -> None:
    """Remove the live-gauge files of a process that exited (prometheus_client's bookkeeping)."""
    for file in path.glob(f"gauge_live*_{pid}.db"):
        with contextlib.suppress(FileNotFoundError):
            file.unlink()


def prune_dead(path: Path) -> None:
    """Remove live-gauge files of processes that no longer exist on this host.

    A SIGKILLed process cannot mark itself dead; without this its busy slots would
    be counted forever. Only valid where the directory's writers share our PID
    namespace, which is true for every directory a process can read.
    """
    for file in path.glob("gauge_live*_*.db"):
        match = _LIVE_GAUGE_FILE.match(file.name)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                file.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
