"""Fixtures that start the real services and an isolated Lanes stack.

Every test session gets its own RabbitMQ vhost and its own database, and its
stack listens on free ports, so a run never touches a developer's `make run`.
Integration tests fail (never skip) when a service cannot be started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymongo
import pytest

from deploy import services
from deploy.template import ROOT
from tests.support import Api, free_port_block, management_api, open_vhost, wait_until

WORKER_MAIN = ROOT / "functions" / "worker" / "main.py"


@pytest.fixture(scope="session")
def running_services() -> Iterator[None]:
    started = services.up()
    yield
    services.down(started)


@pytest.fixture(scope="session")
def lanes_env(running_services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for an isolated stack: own vhost, own database, own data dir."""
    run_id = uuid.uuid4().hex[:10]
    vhost = f"lanes-test-{run_id}"
    vhost_url = open_vhost(vhost)
    database = f"lanes_test_{run_id}"
    env = {
        **os.environ,
        "RABBITMQ_URL": vhost_url,
        "MONGO_URI": f"mongodb://127.0.0.1:27017/{database}",
        "DATA_DIR": str(tmp_path_factory.mktemp("lanes-data")),
        "LOG_LEVEL": "WARNING",
        "JWT_SECRET": "",
        "JWT_PUBLIC_KEY_FILE": "",
        "JWT_PRIVATE_KEY_FILE": "",
        "WORKER_SLOTS": "4",
        # A request killed mid-run waits out its attempt's deadline before it runs again
        # (lanes.lane.fencing): short, for the tests' handlers of at most a few seconds.
        "REQUEST_TIMEOUT_SECONDS": "6",
        "FENCE_GRACE_SECONDS": "1",
        # Short, so that tests of revocation wait little; the bound itself is what they test.
        "AUTH_CACHE_SECONDS": "1",
        # The `fail` action is off by default; the tests use it for retries and dead letters.
        "ENABLE_FAIL_ACTION": "true",
        "TEST_VHOST": vhost,
    }
    yield env
    management_api("DELETE", f"/api/vhosts/{vhost}")
    pymongo.MongoClient(env["MONGO_URI"]).drop_database(database)


@pytest.fixture(scope="session")
def database(lanes_env: dict[str, str]) -> Iterator[Any]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(lanes_env["MONGO_URI"], tz_aware=True)
    yield client.get_default_database()
    client.close()


class Workers:
    """Worker processes a test can start, count and kill."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1, log_file: Path | None = None, **overrides: str) -> list[subprocess.Popen[bytes]]:
        log = log_file.open("ab") if log_file else None
        started = [
            subprocess.Popen(
                [sys.executable, str(WORKER_MAIN)],
                env={**self.env, **overrides},
                cwd=WORKER_MAIN.parent,
                stdout=log,
                stderr=log,
            )
            for _ in range(count)
        ]
        self.processes.extend(started)
        return started

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


@contextmanager
def running_stack(env: dict[str, str], log_file: Path | None = None) -> Iterator[str]:
    """The HTTP functions behind the router, without workers (tests start their own)."""
    port = free_port_block(5)
    log = log_file.open("ab") if log_file else None
    runner = subprocess.Popen(
        [sys.executable, "-m", "deploy.runner", "--port", str(port), "--workers", "0"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: Api(base_url).ready(), timeout=60, what="the stack to become ready")
        yield base_url
    finally:
        runner.terminate()
        try:
            runner.wait(timeout=40)
        except subprocess.TimeoutExpired:
            runner.kill()
        if log:
            log.close()


@pytest.fixture(scope="session")
def http_stack(lanes_env: dict[str, str]) -> Iterator[str]:
    with running_stack(lanes_env) as base_url:
        yield base_url


@pytest.fixture
def workers(lanes_env: dict[str, str]) -> Iterator[Workers]:
    pool = Workers(lanes_env)
    yield pool
    pool.stop_all()


@pytest.fixture
def api(http_stack: str) -> Api:
    return Api(http_stack)
