"""The local runner: the whole stack on one machine, as template.yaml describes it.

Each HTTP function runs as its own gunicorn process on a port of its own; nginx,
a real reverse proxy, serves them all under one base URL the way an OpenFaaS
gateway or a Knative ingress would. The worker is scaled 0..max by lane backlog
(deploy/autoscaler.py), or runs as a fixed number of processes with --workers N.
Ctrl-C (or SIGTERM) stops everything this runner started, in reverse order.

    python -m deploy.runner [--port 8080] [--workers auto|N] [--idle-seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from deploy import services
from deploy.autoscaler import Autoscaler, PartitionQueues, Policy, management_url
from deploy.template import ROOT, Function, Template, load

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class Stack:
    """The processes of one running stack, so they can be stopped together."""

    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        process = subprocess.Popen(argv, env=env, cwd=cwd)
        self.processes.append((name, process))

    def stop(self, grace: float = 25.0) -> None:
        for _name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _name, process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def exited(self) -> list[str]:
        return [name for name, process in self.processes if process.poll() is not None]


def function_env(template: Template, function: Function, base: dict[str, str]) -> dict[str, str]:
    env = {**template.env_of(function), **base}
    for secret in template.secrets:
        if secret.name not in function.secrets:
            # A function gets only the secrets it lists: only `login` may sign tokens.
            env.pop(secret.name, None)
    # Each function's processes share one metrics directory; the status function,
    # which answers the base URL's /metrics, reads all of them (lanes.exposition).
    metrics_root = Path(env.get("DATA_DIR") or ROOT / ".lanes").resolve() / "metrics"
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_root / function.name)
    if function.name == "status":
        env["METRICS_ROOT"] = str(metrics_root)
    # Each function reaches the broker as a user of its own (deploy.services.function_urls).
    own = broker_urls(env).get(function.name)
    if own:
        env["RABBITMQ_URL"] = own
    if function.name == "worker":
        env.pop("RABBITMQ_MANAGEMENT_URL", None)  # the worker never reads the management API
    return env


_BROKER_URLS: dict[tuple[str, str, str], dict[str, str]] = {}


def broker_urls(env: dict[str, str]) -> dict[str, str]:
    """Each function's RABBITMQ_URL, when the runner's own is the broker's administrator (the
    embedded broker, a test's vhost); else none, and every function keeps the one it has."""
    if not env.get("RABBITMQ_URL"):
        return {}
    api = management_url(
        env["RABBITMQ_URL"], env.get("RABBITMQ_MANAGEMENT_URL", ""), int(env.get("RABBITMQ_MANAGEMENT_PORT", "15672"))
    )
    key = (env["RABBITMQ_URL"], api, env.get("QUEUE_PREFIX") or "lanes")
    if key not in _BROKER_URLS:
        _BROKER_URLS[key] = services.function_urls(*key)
    return _BROKER_URLS[key]


# The runner is the local platform: here the `fail` action is on (unless the environment or
# .env says otherwise), since it is how a newcomer sees retries and dead letters.
LOCAL_DEFAULTS = {"ENABLE_FAIL_ACTION": "true"}


def base_env(data_dir: Path, env_file: Path = ROOT / ".env") -> dict[str, str]:
    """The environment every process gets: the runner's own, over the repository's .env
    (each function runs in its own folder, so would not find it), over LOCAL_DEFAULTS."""
    from dotenv import dotenv_values

    dotenv = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    env = {**LOCAL_DEFAULTS, **dotenv, **os.environ}
    env.setdefault("DATA_DIR", str(data_dir))
    env["PYTHONUNBUFFERED"] = "1"
    # No broker named: the embedded one, as its own user (not RabbitMQ's well-known guest).
    env.setdefault("RABBITMQ_URL", services.local_broker().url)
    if not (env.get("JWT_SECRET") or env.get("JWT_PUBLIC_KEY_FILE")):
        from lanes.tokens import ensure_local_keys

        private, public = ensure_local_keys(Path(env["DATA_DIR"]) / "keys")
        env["JWT_PRIVATE_KEY_FILE"], env["JWT_PUBLIC_KEY_FILE"] = str(private), str(public)
    return env


def nginx_head(run_dir: Path) -> str:
    """The start of every nginx config we run: one worker in the foreground, files under
    run_dir, keep-alive upstreams; the caller adds upstreams and the server and closes `http {`."""
    # Started as root, nginx would keep its workers root too with `user root`: the workers,
    # which parse what clients send, run as nobody (the master alone keeps root).
    user = f"user nobody {_nobody_group()};\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {run_dir}/nginx.pid;
error_log stderr warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {run_dir}/client_body;
  proxy_temp_path {run_dir}/proxy;
  fastcgi_temp_path {run_dir}/fastcgi;
  uwsgi_temp_path {run_dir}/uwsgi;
  scgi_temp_path {run_dir}/scgi;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host $host;
  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
"""


def _nobody_group() -> str:
    import grp

    for name in ("nogroup", "nobody"):
        try:
            return grp.getgrnam(name).gr_name
        except KeyError:
            continue
    return "nobody"


def nginx_config(
    template: Template, port: int, ports: dict[str, int], run_dir: Path, max_body_bytes: int = 65536
) -> str:
    upstreams, locations = [], []
    for function in template.http_functions:
        # nginx must drop an idle connection before gunicorn does (its keepalive is 5 s):
        # one reused as gunicorn closes it is reset, and the client would get a 503.
        server = f"server 127.0.0.1:{ports[function.name]}"
        upstreams.append(f"  upstream {function.name} {{ {server}; keepalive 32; keepalive_timeout 4s; }}")
        for route in function.routes:
            match = route.path if route.prefix else f"= {route.path}"
            locations.append(f"    location {match} {{ proxy_pass http://{function.name}; }}")
    return (
        nginx_head(run_dir)
        + f"""  # The router refuses a body over MAX_BODY_BYTES itself (413, Lanes' error shape): a
  # function that answered before reading a large body would close the connection under
  # nginx, and the client would be told to retry (503) what can never succeed.
  client_max_body_size {max_body_bytes};
  # A body that may be accepted fits one buffer, and answers are never spooled to disk:
  # the workers (nobody) need no writable folder, and a request costs at most the limit.
  client_body_buffer_size {max_body_bytes};
  proxy_max_temp_file_size 0;
  # A request line or header over 4 KiB is refused here, in Lanes' error shape, before it
  # could reach gunicorn, whose own refusal (over 8 KiB, gunicorn_conf) is an HTML page.
  large_client_header_buffers 4 4k;
"""
        + f"""  proxy_read_timeout 60s;
{chr(10).join(upstreams)}
  server {{
    listen 127.0.0.1:{port};
    default_type application/json;
{chr(10).join(locations)}
    location / {{ return 404 '{{"error": "not_found", "message": "No such route."}}\\n'; }}
{router_errors()}
  }}
}}
"""
    )


# Errors the router answers itself keep Lanes' error shape too, never nginx's HTML:
# status -> (the statuses it stands for, error code, message). 494 is a header too large;
# 501/505 a transfer coding or HTTP version nginx does not speak, the client's fault.
ROUTER_ERRORS = {
    400: ("400 494 501 505 =400", "bad_request", "Malformed request."),
    405: ("405", "method_not_allowed", "Method not allowed."),
    408: ("408", "request_timeout", "The request was not sent in time."),
    411: ("411", "length_required", "Send a Content-Length."),
    413: ("413", "payload_too_large", "The body is too large."),
    414: ("414", "uri_too_long", "The request line is too long."),
    503: ("502 503 504 =503", "service_unavailable", "The function is unavailable; try again."),
}


def router_errors() -> str:
    """nginx `error_page`s and the internal locations that answer them, from ROUTER_ERRORS."""
    lines = []
    for status, (statuses, error, message) in ROUTER_ERRORS.items():
        body = json.dumps({"error": error, "message": message})
        retry = " add_header Retry-After 5 always;" if status == 503 else ""
        lines.append(f"    error_page {statuses} /_errors/{status};")
        lines.append(f"    location = /_errors/{status} {{ internal;{retry} return {status} '{body}\\n'; }}")
    return "\n".join(lines)


def start(template: Template, port: int, workers: int, data_dir: Path) -> Stack:
    run_dir = data_dir / "run" / f"http-{port}"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = base_env(data_dir)
    stack = Stack()
    ports = {f.name: port + 1 + i for i, f in enumerate(template.http_functions)}
    for function in template.http_functions:
        function_dir = ROOT / function.source
        fenv = function_env(template, function, env)
        fenv["BIND"] = f"127.0.0.1:{ports[function.name]}"
        fenv.setdefault("WEB_CONCURRENCY", "1")
        argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--no-control-socket", function.app]
        stack.start(function.name, argv, fenv, cwd=function_dir)
    max_body_bytes = int(env.get("MAX_BODY_BYTES") or template.env.get("MAX_BODY_BYTES") or 65536)
    (run_dir / "nginx.conf").write_text(nginx_config(template, port, ports, run_dir, max_body_bytes))
    stack.start("router", [NGINX, "-c", str(run_dir / "nginx.conf"), "-p", str(run_dir)], env)
    worker = template.worker
    from lanes.multiproc import reset

    # Worker processes share their directory and none of them owns it: the runner,
    # their platform here, empties it for each new stack.
    reset(Path(function_env(template, worker, env)["PROMETHEUS_MULTIPROC_DIR"]))
    for index in range(workers):
        stack.start(
            f"worker-{index}", worker_argv(worker), function_env(template, worker, env), cwd=ROOT / worker.source
        )
    return stack


def worker_argv(worker: Function) -> list[str]:
    """The worker's command, run by this runner's Python (the one with Lanes installed)."""
    return [sys.executable, *worker.command[1:]] if worker.command[0] == "python" else list(worker.command)


def autoscaler(template: Template, data_dir: Path, idle_seconds: float | None = None) -> Autoscaler:
    """An autoscaler for the template's worker, with the settings its processes get."""
    from lanes.settings import Settings

    worker = template.worker
    base = base_env(data_dir)
    env = function_env(template, worker, base)
    # The platform's own view of the broker (as KEDA's trigger has), not the worker's user.
    settings = Settings.from_env({**env, "RABBITMQ_URL": base["RABBITMQ_URL"]})
    policy = Policy(
        min_workers=worker.scale.get("min", 0),
        max_workers=worker.scale.get("max", 1),
        # What the processes really run: one busy lane per slot.
        lanes_per_worker=settings.worker_slots,
        idle_seconds=worker.scale.get("idle_seconds", 60) if idle_seconds is None else idle_seconds,
        shutdown_seconds=worker.shutdown_seconds,
    )
    api = management_url(
        settings.rabbitmq_url,
        base.get("RABBITMQ_MANAGEMENT_URL", ""),
        int(base.get("RABBITMQ_MANAGEMENT_PORT", "15672")),
    )
    queue = PartitionQueues(settings, api)

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(worker_argv(worker), env=env, cwd=ROOT / worker.source)

    return Autoscaler(policy=policy, queue=queue.read, spawn=spawn)


def wait_ready(port: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("HTTP_PORT", "8080")))
    parser.add_argument(
        "--workers",
        default=os.environ.get("WORKERS", "auto"),
        help="'auto' (default): 0..max by lane backlog; N: exactly N worker processes",
    )
    parser.add_argument("--idle-seconds", type=float, default=None, help="override the worker's scale.idle_seconds")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", ROOT / ".lanes")))
    args = parser.parse_args(argv)
    if args.workers != "auto" and not args.workers.isdigit():
        parser.error("--workers takes 'auto' or a number")

    started_services = services.up()
    stopping = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    template, data_dir = load(), args.data_dir.resolve()
    fixed = 0 if args.workers == "auto" else int(args.workers)
    stack = start(template, args.port, fixed, data_dir)
    scaler, scaler_stop, scaler_thread = None, threading.Event(), None
    if args.workers == "auto":
        from lanes.logs import configure_logging

        configure_logging("runner", os.environ.get("LOG_LEVEL", "INFO"))
        scaler = autoscaler(template, data_dir, args.idle_seconds)
        scaler_thread = threading.Thread(target=scaler.run, args=(scaler_stop,), name="autoscaler", daemon=True)
        scaler_thread.start()
    try:
        if wait_ready(args.port):
            print(f"Lanes is serving on http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
        else:
            print("Lanes did not become ready; see the logs above", file=sys.stderr, flush=True)
        while not stopping:
            if dead := stack.exited():
                print(f"stopping: {', '.join(dead)} exited", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        scaler_stop.set()
        if scaler is not None and scaler_thread is not None:
            scaler_thread.join(timeout=10)  # no worker may start after stop_all
            scaler.stop_all()
        stack.stop()
        services.down(started_services)


if __name__ == "__main__":
    sys.exit(main())
