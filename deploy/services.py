"""Start and stop the embedded RabbitMQ and FerretDB, each bound to 127.0.0.1.

A service whose URL already answers is used as it is and never started or stopped
here, so pointing RABBITMQ_URL or MONGO_URI at existing servers skips these.

    python -m deploy.services up | down | status
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
RABBITMQ_NODE = "lanes@localhost"
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def of(cls, url: str, default_port: int) -> Endpoint:
        parsed = urlparse(url)
        return cls(parsed.hostname or "127.0.0.1", parsed.port or default_port)

    def answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    @property
    def local(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")


def data_dir() -> Path:
    """Where the embedded services keep binaries, data, logs and pid files."""
    return Path(os.environ.get("LANES_SERVICES_DIR", ROOT / ".lanes")).resolve()


def rabbitmq_endpoint() -> Endpoint:
    return Endpoint.of(os.environ.get("RABBITMQ_URL", "amqp://127.0.0.1:5672/"), 5672)


def mongo_endpoint() -> Endpoint:
    return Endpoint.of(os.environ.get("MONGO_URI", "mongodb://127.0.0.1:27017/"), 27017)


def _wait(check: object, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.25)
    raise SystemExit(f"{what} did not start within {timeout:.0f}s; see {data_dir() / 'logs'}")


# -- RabbitMQ -------------------------------------------------------------------------


def _rabbitmq_env(port: int) -> dict[str, str]:
    base = data_dir() / "rabbitmq"
    base.mkdir(parents=True, exist_ok=True)
    management_port = int(os.environ.get("RABBITMQ_MANAGEMENT_PORT", "15672"))
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{port}\n"
        f"management.tcp.ip = 127.0.0.1\n"
        f"management.tcp.port = {management_port}\n"
        "loopback_users.guest = true\n"
        # A laptop's disk is often fuller than RabbitMQ's default alarm assumes.
        "disk_free_limit.absolute = 200MB\n"
    )
    (base / "enabled_plugins").write_text("[rabbitmq_management].\n")
    return {
        **os.environ,
        "RABBITMQ_NODENAME": RABBITMQ_NODE,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_DIST_PORT": str(port + 20000),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
    }


def start_rabbitmq() -> bool:
    """Start the embedded broker unless one answers; True when this call started it."""
    endpoint = rabbitmq_endpoint()
    if endpoint.answers():
        return False
    if not endpoint.local:
        raise SystemExit(f"RABBITMQ_URL points at {endpoint.host}:{endpoint.port}, which does not answer")
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        raise SystemExit("rabbitmq-server is not installed; run `make setup`")
    env = _rabbitmq_env(endpoint.port)
    log = _log_file("rabbitmq")
    subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")], env=env, stdout=log, stderr=log, start_new_session=True)
    _wait(endpoint.answers, "RabbitMQ", 90)
    subprocess.run(
        [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", RABBITMQ_NODE, "wait", env["RABBITMQ_PID_FILE"], "--timeout", "90"],
        env=env,
        check=True,
        capture_output=True,
    )
    return True


def stop_rabbitmq() -> None:
    pid_file = data_dir() / "rabbitmq" / "rabbitmq.pid"
    if not pid_file.exists():
        return
    env = _rabbitmq_env(rabbitmq_endpoint().port)
    subprocess.run(
        [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", RABBITMQ_NODE, "stop", str(pid_file)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    pid_file.unlink(missing_ok=True)


# -- FerretDB -------------------------------------------------------------------------


def ferretdb_binary() -> Path:
    return data_dir() / "bin" / "lanes-ferretdb"


def start_ferretdb() -> bool:
    """Start the embedded FerretDB unless a database answers; True when this call started it."""
    endpoint = mongo_endpoint()
    if endpoint.answers():
        return False
    if not endpoint.local:
        raise SystemExit(f"MONGO_URI points at {endpoint.host}:{endpoint.port}, which does not answer")
    binary = ferretdb_binary()
    if not binary.exists():
        raise SystemExit(f"{binary} is missing; run `make setup`")
    log = _log_file("ferretdb")
    process = subprocess.Popen(
        [
            str(binary),
            "-listen",
            f"127.0.0.1:{endpoint.port}",
            "-data",
            str(data_dir() / "ferretdb"),
            "-log-level",
            "error",
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    _pid_file("ferretdb").write_text(str(process.pid))
    _wait(endpoint.answers, "FerretDB", 30)
    return True


def stop_ferretdb() -> None:
    pid_file = _pid_file("ferretdb")
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)


def _log_file(name: str) -> object:
    logs = data_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return (logs / f"{name}.log").open("ab")


def _pid_file(name: str) -> Path:
    run = data_dir() / "run"
    run.mkdir(parents=True, exist_ok=True)
    return run / f"{name}.pid"


def up() -> list[str]:
    """Start what is missing; returns the names of the services this call started."""
    started = []
    if start_ferretdb():
        started.append("ferretdb")
    if start_rabbitmq():
        started.append("rabbitmq")
    return started


def down(names: list[str] | None = None) -> None:
    if names is None:
        names = ["rabbitmq", "ferretdb"]
    if "rabbitmq" in names:
        stop_rabbitmq()
    if "ferretdb" in names:
        stop_ferretdb()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    if args.command == "up":
        started = up()
        print(f"started: {', '.join(started) or 'nothing (already running)'}")
    elif args.command == "down":
        down()
    else:
        for name, endpoint in (("rabbitmq", rabbitmq_endpoint()), ("database", mongo_endpoint())):
            print(f"{name}: {'up' if endpoint.answers() else 'down'} at {endpoint.host}:{endpoint.port}")


if __name__ == "__main__":
    main()
