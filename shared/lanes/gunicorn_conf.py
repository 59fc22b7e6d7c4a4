"""What every function's gunicorn.conf.py shares: its metrics directory and JSON logs.

gunicorn runs each function as a master and forked workers. The master empties
the function's metrics directory once, before the first fork (so counts from an
earlier run never leak in), and marks each worker that exits as dead (so its
live gauges leave the sums). The same master and workers log JSON lines through
lanes.logs. Importing this module never imports prometheus_client: the
directory must be chosen before that happens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lanes import multiproc
from lanes.logs import gunicorn_logconfig


def use_metrics_dir(function: str) -> Path:
    """Choose (and create) the function's metrics directory; call at the top of gunicorn.conf.py."""
    return multiproc.use_metrics_dir(function)


def logconfig_dict(function: str, level: str) -> dict[str, Any]:
    """JSON error log, and the access log when ACCESS_LOG is true (read here, like gunicorn's own settings)."""
    access = os.environ.get("ACCESS_LOG", "").strip().lower() in ("1", "true", "yes", "on")
    return gunicorn_logconfig(function, level, access=access)


def on_starting(server: Any) -> None:
    """Master, once, before any worker exists: a clean directory for this run."""
    multiproc.reset(Path(os.environ[multiproc.ENV]))


def child_exit(server: Any, worker: Any) -> None:
    """Master, whenever a worker exits (crash, timeout, restart): drop its live gauges."""
    multiproc.mark_dead(worker.pid, Path(os.environ[multiproc.ENV]))
