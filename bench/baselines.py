"""Starting the baselines: their HTTP front behind nginx, and Celery workers."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

from bench.baseline.tasks import QUEUE as CELERY_QUEUE
from bench.infra import Isolation, amqp_url, mongo_url, wait_consumers
from bench.lanes_stack import wait_http_ready
from bench.procs import Processes
from deploy.runner import nginx_head
from deploy.template import ROOT
from tests.support import free_port_block

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_config(port: int, upstream_port: int, run_dir: Path) -> str:
    """The runner's nginx shape (one worker, keep-alive upstream), routing the baselines' paths."""
    return (
        nginx_head(run_dir)
        + f"""  upstream baseline {{ server 127.0.0.1:{upstream_port}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port};
    default_type application/json;
    location = /bare {{ proxy_pass http://baseline; }}
    location = /celery {{ proxy_pass http://baseline; }}
    location = /healthz {{ proxy_pass http://baseline; }}
  }}
}}
"""
    )


@dataclass
class Baselines:
    base_url: str
    vhost: str
    database: str
    env: dict[str, str]
    db: Any
    procs: Processes
    celery_workers: list[Popen[bytes]] = field(default_factory=list)

    def start_celery(self, processes: int) -> None:
        """A Celery worker with `processes` pool processes (prefork), consuming the task queue."""
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.baseline.tasks",
            "worker",
            "--pool=prefork",
            f"--concurrency={processes}",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--hostname=bench-{len(self.celery_workers)}@%h",
        ]
        self.celery_workers.append(self.procs.start("celery-worker", argv, self.env, ROOT))
        if not wait_consumers(self.vhost, CELERY_QUEUE, 1, timeout=60):
            raise RuntimeError("the Celery worker did not start consuming within 60 s; see its log")

    def stop_celery(self) -> None:
        for process in self.celery_workers:
            self.procs.stop(process, grace=40)
        self.celery_workers.clear()


def start_baselines(isolation: Isolation, procs: Processes, run_dir: Path) -> Baselines:
    vhost, database = isolation.vhost("baseline"), isolation.database("celery")
    env = {
        **os.environ,
        "BENCH_BARE_URL": amqp_url(vhost),
        "BENCH_CELERY_BROKER": amqp_url(vhost),
        "BENCH_CELERY_RESULTS": mongo_url(database),
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port_block(2)
    nginx_dir = run_dir / "baseline-nginx"
    nginx_dir.mkdir(parents=True, exist_ok=True)
    (nginx_dir / "nginx.conf").write_text(nginx_config(port, port + 1, nginx_dir))
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "bench/baseline/gunicorn.conf.py",
        "--no-control-socket",
        "bench.baseline.app:create_app()",
    ]
    procs.start("baseline-web", gunicorn, {**env, "BIND": f"127.0.0.1:{port + 1}"}, ROOT)
    procs.start("baseline-router", [NGINX, "-c", str(nginx_dir / "nginx.conf"), "-p", str(nginx_dir)], env, ROOT)
    base_url = f"http://127.0.0.1:{port}"
    wait_http_ready(f"{base_url}/healthz", timeout=30)
    return Baselines(base_url, vhost, database, env, isolation.db(database), procs)
