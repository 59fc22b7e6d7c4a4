"""Fault scenarios: steady traffic from many users, one fault, then an audit.

Each scenario checks that every request answered with 202 (or 200 for a retry
of an accepted one) ends in exactly one terminal status, none is lost, and no
lane ran out of order.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from deploy.services import FerretDB, RabbitMQ
from tests.conftest import Workers
from tests.faults.traffic import Audit, Lane, Traffic, audit, settle
from tests.support import Api

USERS, PER_USER = 8, 12


def _run(
    name: str,
    api: Api,
    database: Any,
    record: Callable[[Audit], None],
    fault: Callable[[], None],
    *,
    action: str = "sleep",
    data: dict[str, Any] | None = None,
) -> Audit:
    traffic = Traffic(
        lanes=[Lane(api.new_user("fault")) for _ in range(USERS)],
        per_user=PER_USER,
        action=action,
        data=data if data is not None else {"ms": 30},
    )
    traffic.start()
    time.sleep(1.0)
    fault()
    traffic.join(timeout=150)
    result = audit(name, traffic, settle(traffic, timeout=120), database)
    record(result)
    return result


def _assert_clean(result: Audit, *, server_errors_allowed: bool = False) -> None:
    assert result.accepted == USERS * PER_USER
    assert (result.lost, result.double_outcomes, result.ordering_violations) == (0, 0, 0), result
    if not server_errors_allowed:
        assert result.server_errors == 0, result


def test_worker_sigkilled_repeatedly(
    fault_api: Api, fault_workers: Workers, fault_database: Any, record_audit: Callable[[Audit], None]
) -> None:
    fault_workers.start(2, WORKER_SLOTS="3")

    def kill_workers() -> None:
        for _ in range(3):
            victim = next(p for p in fault_workers.processes if p.poll() is None)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            fault_workers.start(1, WORKER_SLOTS="3")
            time.sleep(1.0)

    _assert_clean(_run("worker SIGKILL x3", fault_api, fault_database, record_audit, kill_workers))


@pytest.mark.parametrize(("scenario", "service"), [("RabbitMQ restart", 0), ("database restart", 1)])
def test_service_restarted_under_load(
    scenario: str,
    service: int,
    fault_api: Api,
    fault_workers: Workers,
    fault_database: Any,
    private_services: tuple[RabbitMQ, FerretDB],
    record_audit: Callable[[Audit], None],
) -> None:
    restarted = private_services[service]
    fault_workers.start(2, WORKER_SLOTS="3")

    def restart() -> None:
        restarted.stop()
        time.sleep(1.0)
        restarted.start()

    _assert_clean(_run(scenario, fault_api, fault_database, record_audit, restart))


def test_poison_request_fails_alone_while_other_lanes_flow(
    fault_api: Api, fault_workers: Workers, fault_database: Any, record_audit: Callable[[Audit], None]
) -> None:
    fault_workers.start(1, WORKER_SLOTS="3")
    victim = fault_api.new_user("poisoned")
    poison = victim.enqueue("fail", {"times": 1000})
    after = victim.enqueue("echo", {"after": "poison"})

    result = _run("poison request in one lane", fault_api, fault_database, record_audit, lambda: None)

    _assert_clean(result)
    failed, followed = victim.wait_terminal([poison, after], timeout=30)
    assert failed["status"] == "failed" and failed["attempts"] == 3 and "failing on purpose" in failed["error"]
    assert followed["status"] == "done" and followed["started_at"] >= failed["finished_at"]
    assert fault_database.dead_letters.find_one({"_id": poison}) is not None
