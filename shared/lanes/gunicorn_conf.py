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


def settings(function: str, worker_class: str) -> dict[str, Any]:
    """Every gunicorn setting of a function; its gunicorn.conf.py only names the function
    and its default worker class. Environment variables override, as docs/configuration.md lists."""
    use_metrics_dir(function)
    loglevel = os.environ.get("LOG_LEVEL", "info").lower()
    return {
        "bind": os.environ.get("BIND", "0.0.0.0:8080"),
        "workers": int(os.environ.get("WEB_CONCURRENCY", "2")),
        "worker_class": os.environ.get("WORKER_CLASS", worker_class),
        "threads": int(os.environ.get("THREADS", "4")),
        "worker_connections": 200,
        # Functions finish in-flight requests on SIGTERM within the platform's grace period.
        "graceful_timeout": 20,
        "timeout": 30,
        "keepalive": 5,
        # gunicorn's largest request line; the local router refuses at 4 KiB first, in
        # Lanes' error shape (gunicorn's own 414 is an HTML page).
        "limit_request_line": 8190,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": loglevel,
        # JSON lines from gunicorn itself too; ACCESS_LOG=true adds its access log.
        "logconfig_dict": logconfig_dict(function, loglevel),
        "on_starting": on_starting,
        "child_exit": child_exit,
    }
