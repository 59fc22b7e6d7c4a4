"""The fault suite runs on private RabbitMQ and FerretDB instances, so that it may
restart them under load without touching anyone's running stack, and prints a
table of what each scenario did to the requests it accepted."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from deploy.services import FerretDB, RabbitMQ
from tests.conftest import ROOT, Workers, running_stack
from tests.faults.traffic import Audit
from tests.support import Api, free_port_block

AUDITS: list[Audit] = []


@pytest.fixture(scope="session")
def private_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RabbitMQ, FerretDB]]:
    home = Path(tmp_path_factory.mktemp("fault-services"))
    rabbit_port, ferret_port = free_port_block(2), free_port_block(1)
    broker = RabbitMQ(home, port=rabbit_port, management_port=rabbit_port + 1)
    database = FerretDB(home, port=ferret_port)
    broker.start()
    database.start()
    try:
        yield broker, database
    finally:
        broker.stop()
        database.stop()


@pytest.fixture(scope="session")
def fault_env(private_services: tuple[RabbitMQ, FerretDB], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    broker, database = private_services
    return {
        **os.environ,
        "RABBITMQ_URL": broker.url,
        # The sweeper reads the lanes from this broker's management API, not the default port's.
        "RABBITMQ_MANAGEMENT_URL": broker.management_url,
        "MONGO_URI": database.uri + "lanes_faults",
        "DATA_DIR": str(tmp_path_factory.mktemp("fault-data")),
        "LOG_LEVEL": "WARNING",
        "JWT_SECRET": "",
        "JWT_PUBLIC_KEY_FILE": "",
        "JWT_PRIVATE_KEY_FILE": "",
        "SWEEP_INTERVAL_SECONDS": "3",
        "RETRY_BACKOFF_SECONDS": "0.1",
        # A request killed mid-run waits out its attempt's deadline before it runs again
        # (lanes.lane.fencing): short, for handlers of at most a few seconds.
        "REQUEST_TIMEOUT_SECONDS": "5",
        "FENCE_GRACE_SECONDS": "1",
        # The `journaled` action writes the handler journal that the fencing scenarios judge.
        "ACTIONS_MODULE": "tests.faults.slow_actions",
        "PYTHONPATH": str(ROOT),
        # The `fail` action is off by default; the tests use it for retries and dead letters.
        "ENABLE_FAIL_ACTION": "true",
    }


@pytest.fixture(scope="session")
def fault_stack(fault_env: dict[str, str]) -> Iterator[str]:
    with running_stack(fault_env) as base_url:
        yield base_url


@pytest.fixture
def fault_api(fault_stack: str) -> Api:
    return Api(fault_stack)


@pytest.fixture
def fault_workers(fault_env: dict[str, str]) -> Iterator[Workers]:
    pool = Workers(fault_env)
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def fault_database(fault_env: dict[str, str]) -> Iterator[Any]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(fault_env["MONGO_URI"], tz_aware=True)
    yield client.get_default_database()
    client.close()


@pytest.fixture
def record_audit() -> Any:
    return AUDITS.append


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not AUDITS:
        return
    terminalreporter.section("fault scenarios")
    terminalreporter.write_line(Audit.header())
    for audit in AUDITS:
        terminalreporter.write_line(audit.row())
