"""Start and stop the embedded RabbitMQ and FerretDB, each bound to 127.0.0.1.

A service whose URL already answers is used as it is and never started or stopped
here, so pointing RABBITMQ_URL or MONGO_URI at existing servers skips these.
The fault suite runs private instances of both (other ports, other directories)
so that it can restart them without touching anyone's running stack.

    python -m deploy.services up | down | status
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, unquote, urlparse, urlunparse
from urllib.request import Request, urlopen

ROOT = Path(__file__).resolve().parent.parent
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def services_dir() -> Path:
    """Where the embedded services keep binaries, data, logs and pid files."""
    return Path(os.environ.get("LANES_SERVICES_DIR", ROOT / ".lanes")).resolve()


def ferretdb_binary() -> Path:
    return services_dir() / "bin" / "lanes-ferretdb"


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _wait(check: Callable[[], bool], what: str, timeout: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise SystemExit(f"{what} did not start within {timeout:.0f}s; see {logs}")


def _log(home: Path, name: str) -> IO[bytes]:
    (home / "logs").mkdir(parents=True, exist_ok=True)
    return (home / "logs" / f"{name}.log").open("ab")


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str


def broker_credentials(home: Path) -> Credentials:
    """The embedded broker's one user: `lanes`, with a password generated on first use and
    kept 0600 under the data folder. RabbitMQ's own `guest` is an administrator whose
    password everyone knows, management UI included; the broker drops it."""
    path = home / "rabbitmq" / "credentials.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = path.with_suffix(".tmp")
        fresh.unlink(missing_ok=True)
        descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump({"user": "lanes", "password": secrets.token_urlsafe(24)}, file)
        os.replace(fresh, path)
    stored = json.loads(path.read_text())
    return Credentials(stored["user"], stored["password"])


@dataclass(frozen=True)
class RabbitMQ:
    """One RabbitMQ node of our own: config, data and logs under `home`."""

    home: Path
    port: int = 5672
    management_port: int = 15672

    @property
    def node(self) -> str:
        return "lanes@localhost" if self.port == 5672 else f"lanes-{self.port}@localhost"

    @property
    def credentials(self) -> Credentials:
        return broker_credentials(self.home)

    @property
    def url(self) -> str:
        return self.amqp_url("/")

    def amqp_url(self, vhost: str) -> str:
        who = self.credentials
        return f"amqp://{who.user}:{who.password}@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    @property
    def management_url(self) -> str:
        who = self.credentials
        return f"http://{who.user}:{who.password}@127.0.0.1:{self.management_port}"

    def management(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        """One call to the management API as the broker's user; the answer's JSON, if any."""
        return _management(self.management_port, self.credentials, method, path, body, timeout)

    def answers(self) -> bool:
        return port_answers(self.port)

    def start(self) -> None:
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            raise SystemExit("rabbitmq-server is not installed; run `make setup`")
        env = self._env()
        log = _log(self.home, "rabbitmq")
        subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")], env=env, stdout=log, stderr=log, start_new_session=True
        )
        _wait(self.answers, "RabbitMQ", 90, self.home / "logs")
        self._ctl("wait", env["RABBITMQ_PID_FILE"], "--timeout", "90")
        self.ensure_user()

    def ensure_user(self) -> None:
        """Make the broker's user the one in credentials.json, and drop `guest`; cheap
        when that is so already (one management call)."""
        who = self.credentials
        deadline = time.monotonic() + 60
        while True:
            try:
                _management(self.management_port, who, "GET", "/api/whoami")
                return
            except HTTPError:
                break  # the API answers, and not for our user: set it up
            except (URLError, OSError):
                if time.monotonic() > deadline:
                    raise SystemExit(f"RabbitMQ's management API did not answer; see {self.home / 'logs'}") from None
                time.sleep(0.5)
        # The password goes in on stdin, never in argv, where any local user could read it
        # (and where one that begins with `-` would be taken for an option).
        self._ctl("add_user", who.user, stdin=who.password)
        self._ctl("change_password", who.user, stdin=who.password)  # a user kept from an earlier file
        self._ctl("set_user_tags", who.user, "administrator")
        self._ctl("set_permissions", "-p", "/", who.user, ".*", ".*", ".*")
        self._ctl("delete_user", "guest")

    def join(self, seed: RabbitMQ) -> None:
        """Make this running node a member of `seed`'s cluster (both share the Erlang cookie
        in $HOME; this node's own users and queues give way to the cluster's)."""
        self._ctl("stop_app")
        self._ctl("join_cluster", seed.node)
        self._ctl("start_app")
        self._ctl("await_startup", "--timeout", "90")

    def kill(self) -> None:
        """SIGKILL the node, as a crash would: nothing is flushed, nothing said to its peers."""
        pid_file = self.home / "rabbitmq" / "rabbitmq.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
            pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        pid_file = self.home / "rabbitmq" / "rabbitmq.pid"
        if pid_file.exists():
            self._ctl("stop", str(pid_file))
            pid_file.unlink(missing_ok=True)

    def _ctl(self, *args: str, stdin: str | None = None) -> None:
        subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self._env(),
            input=None if stdin is None else f"{stdin}\n".encode(),
            check=False,
            capture_output=True,
            timeout=120,
        )

    def _env(self) -> dict[str, str]:
        base = self.home / "rabbitmq"
        base.mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {self.management_port}\n"
            # `guest` (loopback only) exists until ensure_user replaces it with our user.
            "loopback_users.guest = true\n"
            # A laptop's disk is often fuller than RabbitMQ's default alarm assumes.
            "disk_free_limit.absolute = 200MB\n"
            # Work a worker holds shows only in the management API's figures, which the
            # autoscaler reads to grow the workers: refresh them every second, not every 5 s
            # (cheap: the broker has a fixed handful of queues).
            "collect_statistics_interval = 1000\n"
        )
        (base / "enabled_plugins").write_text("[rabbitmq_management].\n")
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(self.port + 20000),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
        }


def start_cluster(home: Path, ports: list[int]) -> list[RabbitMQ]:
    """A RabbitMQ cluster on this machine: a node per port (AMQP there, management on the
    next port), each with its own data folder and node name, all sharing the Erlang
    cookie in $HOME and the first node's broker user. Stopped with `stop_cluster`."""
    nodes = [RabbitMQ(home / f"node{index}", port=port, management_port=port + 1) for index, port in enumerate(ports)]
    try:
        nodes[0].start()
        for node in nodes[1:]:
            # One broker user for the cluster: the seed's, whose password every node keeps.
            (node.home / "rabbitmq").mkdir(parents=True, exist_ok=True)
            shutil.copy(nodes[0].home / "rabbitmq" / "credentials.json", node.home / "rabbitmq" / "credentials.json")
            node.start()
            node.join(nodes[0])

        def all_running() -> bool:
            try:
                running = nodes[0].management("GET", "/api/nodes?columns=name,running")
            except (OSError, ValueError):
                return False
            return sum(1 for node in running if node.get("running")) == len(nodes)

        _wait(all_running, f"{len(nodes)} running nodes", 60, nodes[0].home)
    except BaseException:
        stop_cluster(nodes)
        raise
    return nodes


def stop_cluster(nodes: list[RabbitMQ]) -> None:
    for node in nodes:
        node.stop()
        node.kill()


@dataclass(frozen=True)
class FerretDB:
    """One FerretDB (our launcher, SQLite storage) with its data under `home`."""

    home: Path
    port: int = 27017

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.home / "run" / f"ferretdb-{self.port}.pid"

    def answers(self) -> bool:
        return port_answers(self.port)

    def start(self) -> None:
        binary = ferretdb_binary()
        if not binary.exists():
            raise SystemExit(f"{binary} is missing; run `make setup`")
        argv = [str(binary), "-listen", f"127.0.0.1:{self.port}", "-data", str(self.home / "ferretdb")]
        log = _log(self.home, "ferretdb")
        process = subprocess.Popen([*argv, "-log-level", "error"], stdout=log, stderr=log, start_new_session=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(str(process.pid))
        _wait(self.answers, "FerretDB", 30, self.home / "logs")

    def stop(self) -> None:
        if not self.pid_file.exists():
            return
        pid = int(self.pid_file.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.pid_file.unlink(missing_ok=True)


# Each function reaches the broker as a user of its own, with the rights it needs and no
# more (`function_urls`). Per function: (configure, write, read) permission regexes for
# the queue prefix `p`, and the user's tags. Publishing to a partition is a write on the
# default exchange (`amq.default`); the enqueue function's settled feed is a server-named
# queue (`amq.gen-…`) bound to `<p>.settled`. Every function that checks tokens follows
# `<p>.revocations` the same way; only login publishes there (lanes.revocations).
FUNCTION_TAGS = {"login": "", "enqueue": "", "worker": "", "status": "monitoring"}


def function_permissions(prefix: str) -> dict[str, tuple[str, str, str]]:
    p = re.escape(prefix)
    partitions = rf"{p}\.partition\.[0-9]+"
    settled = rf"{p}\.settled"
    ledgers = rf"{p}\.ledgers"
    feed = r"amq\.gen-.*"
    roster = rf"{p}\.workers(\.busy|\.waiting|\.spare|\.hungry)?|{p}\.sweeper"
    # Deep lanes (lanes.lane.overflow): the exchange a worker spills into, and the queues.
    overflow = rf"{p}\.overflow|{p}\.overflow\..+"
    revoked = rf"{p}\.revocations"
    return {
        # Publish revocations, and follow those published by others (an operator's).
        "login": (f"^({revoked}|{feed})$", f"^({revoked}|{feed})$", f"^({revoked}|{feed})$"),
        # Declare the partitions and publish into them; follow the settled notices sent to
        # its ledger, and the revocations.
        "enqueue": (
            f"^({partitions}|{ledgers}|{revoked}|{feed})$",
            rf"^(amq\.default|{feed})$",
            f"^({ledgers}|{revoked}|{feed})$",
        ),
        # Hold and consume the partitions, publish settled notices (to the ledger that
        # counts each request, or to all for a message that names none), join the roster and
        # the sweeper election, spill deep lanes into their overflow queues and fetch them
        # back; never publish into a partition.
        "worker": (
            f"^({partitions}|{settled}|{ledgers}|{roster}|{overflow})$",
            f"^({settled}|{ledgers}|{overflow})$",
            f"^({partitions}|{roster}|{overflow})$",
        ),
        # Read-only: the management API's figures (tag `monitoring`), the sweeper election,
        # which only consumes an empty queue of its own, and the revocations, through a
        # server-named queue that it may bind (a write on that queue alone).
        "status": (f"^({p}\\.sweeper|{revoked}|{feed})$", f"^({feed})$", f"^({p}\\.sweeper|{revoked}|{feed})$"),
    }


def dead_lettering(base: str, admin: Credentials, vhost: str, prefix: str) -> None:
    """The queue `<prefix>.undeliverable`, bound to the exchange of that name, and a policy
    that makes every partition and overflow queue dead-letter there: what the broker will
    not deliver again (a quorum queue's delivery limit) is kept for an operator, not
    dropped. A policy, not a queue argument, so that it reaches queues declared before it,
    and the functions need no rights on the exchange (lanes.broker.QueueNames.undeliverable)."""
    where = quote(vhost, safe="")
    name = f"{prefix}.undeliverable"
    _management_at(base, admin, "PUT", f"/api/exchanges/{where}/{quote(name)}", {"type": "fanout", "durable": True})
    _management_at(base, admin, "PUT", f"/api/queues/{where}/{quote(name)}", {"durable": True})
    _management_at(base, admin, "POST", f"/api/bindings/{where}/e/{quote(name)}/q/{quote(name)}", {})
    policy = {
        "pattern": rf"^{re.escape(prefix)}\.(partition|overflow)\.",
        "definition": {"dead-letter-exchange": name},
        "apply-to": "queues",
        "priority": 0,
    }
    _management_at(base, admin, "PUT", f"/api/policies/{where}/{quote(prefix)}-undeliverable", policy)


def function_user(admin: Credentials, function: str) -> Credentials:
    """A function's broker user, its password derived from the administrator's: every
    runner of this broker sets the same one, so stacks that share it never lock each
    other out, and only who holds the administrator's password can know it."""
    digest = hmac.new(admin.password.encode(), f"lanes broker user {function}".encode(), hashlib.sha256).digest()
    return Credentials(f"{admin.user}-{function}", base64.urlsafe_b64encode(digest).decode().rstrip("="))


def function_urls(amqp_url: str, management: str, prefix: str) -> dict[str, str]:
    """The AMQP URL of each function (enqueue, worker, status) on `amqp_url`'s broker and
    vhost, as a user of its own with `function_permissions`; made through the management
    API at `management` (http://host:port) as `amqp_url`'s user. Empty when that user is
    no administrator (the operator named the functions' users): then all share `amqp_url`.
    An `amqp_url` naming several nodes (a cluster) gives each function as many."""
    nodes = [urlparse(url.strip()) for url in amqp_url.split(",") if url.strip()]
    amqp = nodes[0]
    admin = Credentials(unquote(amqp.username or "guest"), unquote(amqp.password or "guest"))
    vhost = unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
    base = management.rstrip("/")
    try:
        if "administrator" not in _tags(_management_at(base, admin, "GET", "/api/whoami")):
            return {}
    except (HTTPError, URLError, OSError):
        return {}
    dead_lettering(base, admin, vhost, prefix)
    urls = {}
    for function, (configure, write, read) in function_permissions(prefix).items():
        who = function_user(admin, function)
        body = {"password": who.password, "tags": FUNCTION_TAGS[function]}
        _management_at(base, admin, "PUT", f"/api/users/{quote(who.user, safe='')}", body)
        rights = {"configure": configure, "write": write, "read": read}
        _management_at(
            base, admin, "PUT", f"/api/permissions/{quote(vhost, safe='')}/{quote(who.user, safe='')}", rights
        )
        urls[function] = ",".join(_as_user(node, who) for node in nodes)
    return urls


def _as_user(node: Any, who: Credentials) -> str:
    netloc = f"{quote(who.user, safe='')}:{quote(who.password, safe='')}@{node.hostname}"
    if node.port:
        netloc += f":{node.port}"
    return str(urlunparse(node._replace(netloc=netloc)))


def _tags(whoami: Any) -> list[str]:
    tags = whoami.get("tags", []) if isinstance(whoami, dict) else []
    return tags.split(",") if isinstance(tags, str) else list(tags)


def _management(
    port: int, who: Credentials, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10
) -> Any:
    return _management_at(f"http://127.0.0.1:{port}", who, method, path, body, timeout)


def _management_at(
    base: str, who: Credentials, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10
) -> Any:
    parts = urlparse(base)  # any credentials in it are not these
    data = json.dumps(body or {}).encode() if method in ("PUT", "POST") else None
    request = Request(f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{path}", data=data, method=method)
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{who.user}:{who.password}".encode()).decode())
    request.add_header("Content-Type", "application/json")
    with urlopen(request, timeout=timeout) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def local_broker() -> RabbitMQ:
    """The embedded broker on the default ports, as tests and the benchmark reach it."""
    return RabbitMQ(services_dir(), 5672, int(os.environ.get("RABBITMQ_MANAGEMENT_PORT", "15672")))


def _local_port(url: str, default: int) -> int | None:
    """The port of a loopback URL, or None when the URL names another host."""
    parsed = urlparse(url)
    if parsed.hostname not in (None, "127.0.0.1", "localhost", "::1"):
        return None
    return parsed.port or default


def embedded() -> dict[str, RabbitMQ | FerretDB]:
    """The services the environment's URLs point at, when they are on this machine."""
    found: dict[str, RabbitMQ | FerretDB] = {}
    rabbit_port = _local_port(os.environ.get("RABBITMQ_URL", "amqp://127.0.0.1:5672/"), 5672)
    if rabbit_port is not None:
        management = int(os.environ.get("RABBITMQ_MANAGEMENT_PORT", "15672"))
        found["rabbitmq"] = RabbitMQ(services_dir(), rabbit_port, management)
    mongo_port = _local_port(os.environ.get("MONGO_URI", "mongodb://127.0.0.1:27017/"), 27017)
    if mongo_port is not None:
        found["ferretdb"] = FerretDB(services_dir(), mongo_port)
    return found


def up() -> list[str]:
    """Start what is missing; returns the names of the services this call started."""
    started = []
    for name, service in embedded().items():
        if not service.answers():
            service.start()
            started.append(name)
        elif isinstance(service, RabbitMQ) and (service.home / "rabbitmq" / "rabbitmq.pid").exists():
            service.ensure_user()  # ours, perhaps started by a version that kept `guest`
    return started


def down(names: list[str] | None = None) -> None:
    for name, service in embedded().items():
        if names is None or name in names:
            service.stop()


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
        for name, service in embedded().items():
            print(f"{name}: {'up' if service.answers() else 'down'} on 127.0.0.1:{service.port}")


if __name__ == "__main__":
    main()
