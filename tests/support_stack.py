"""A whole Lanes stack of its own for a test module: own vhost, database, ports and runner.

For tests that need settings the session's stack does not have (a short lane idle
period, quorum queues) or that watch the runner's own workers come and go.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo

from deploy.template import ROOT
from tests.support import Api, free_port_block, management_api, open_vhost, wait_until


@dataclass
class Stack:
    api: Api
    runner: subprocess.Popen[bytes]
    env: dict[str, str]
    database: Any

    @property
    def vhost(self) -> str:
        return self.env["TEST_VHOST"]

    def queues(self) -> list[dict[str, Any]]:
        return list(management_api("GET", f"/api/queues/{self.vhost}?columns=name,messages,type"))

    def worker_pids(self) -> list[int]:
        """Live worker processes started by this stack's runner."""
        return [pid for pid, argv in _children(self.runner.pid) if argv[-1:] == ["main.py"]]


@contextmanager
def isolated_stack(tmp: Path, runner_args: list[str], **settings: str) -> Iterator[Stack]:
    run_id = uuid.uuid4().hex[:10]
    vhost, database = f"lanes-test-{run_id}", f"lanes_test_{run_id}"
    vhost_url = open_vhost(vhost)
    env = {
        **os.environ,
        "RABBITMQ_URL": vhost_url,
        "MONGO_URI": f"mongodb://127.0.0.1:27017/{database}",
        "DATA_DIR": str(tmp),
        "LOG_LEVEL": "WARNING",
        "JWT_SECRET": "",
        "JWT_PUBLIC_KEY_FILE": "",
        "JWT_PRIVATE_KEY_FILE": "",
        "TEST_VHOST": vhost,
        # A request killed mid-run waits out its attempt's deadline (lanes.lane.fencing).
        "REQUEST_TIMEOUT_SECONDS": "6",
        "FENCE_GRACE_SECONDS": "1",
        **settings,
    }
    port = free_port_block(5)
    runner = subprocess.Popen(
        [sys.executable, "-m", "deploy.runner", "--port", str(port), *runner_args], env=env, cwd=ROOT
    )
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(env["MONGO_URI"], tz_aware=True)
    try:
        api = Api(f"http://127.0.0.1:{port}")
        wait_until(api.ready, timeout=60, what="the stack to become ready")
        yield Stack(api=api, runner=runner, env=env, database=client.get_default_database())
    finally:
        runner.terminate()
        try:
            runner.wait(timeout=60)
        except subprocess.TimeoutExpired:
            runner.kill()
        client.drop_database(database)
        client.close()
        management_api("DELETE", f"/api/vhosts/{vhost}")


def _children(parent: int) -> list[tuple[int, list[str]]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            continue  # exited while we looked
        # The command name in field 2 may hold spaces; the fields after ")" do not.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and "Z" not in stat.rsplit(")", 1)[1].split()[0]:
            found.append((int(entry.name), [a.decode(errors="replace") for a in argv]))
    return found
