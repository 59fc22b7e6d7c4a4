"""Outages answer 503 with Retry-After, never 500 and never a 202; the stack heals itself.

Also: backpressure, a crash between storing and publishing, graceful shutdown,
and logs that never hold a secret. These use their own stacks (other settings)
on the suite's private broker and database.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.services import FerretDB, RabbitMQ
from tests.conftest import Workers, running_stack
from tests.faults.traffic import Audit, Lane, Traffic, audit, settle
from tests.support import Api, wait_until
from tests.support_lanes import ordering_violations


def _expect_unavailable(user: Api, listing_status: int) -> None:
    enqueue = user.call("POST", "/enqueue", json={"action": "echo"})
    assert enqueue.status_code == 503, enqueue.text
    assert enqueue.json()["error"] == "service_unavailable" and int(enqueue.headers["Retry-After"]) >= 1
    ready = user.call("GET", "/readyz")
    assert ready.status_code == 503 and "Retry-After" in ready.headers
    # Reading one's requests needs only the database, so it survives a broker outage.
    assert user.call("GET", "/requests").status_code == listing_status


@pytest.mark.parametrize("service", [0, 1], ids=["broker", "database"])
def test_outage_gives_503_and_the_service_returns_by_itself(
    service: int, fault_api: Api, fault_workers: Workers, private_services: tuple[RabbitMQ, FerretDB]
) -> None:
    down = private_services[service]
    user = fault_api.new_user("outage")
    fault_workers.start(1)
    down.stop()
    try:
        _expect_unavailable(user, listing_status=200 if service == 0 else 503)
    finally:
        down.start()
    request_id = wait_until(lambda: _try_enqueue(user), timeout=30, what="enqueue to work again")
    assert user.wait_terminal([request_id], timeout=60)[0]["status"] == "done"


def _try_enqueue(user: Api) -> str | None:
    response = user.call("POST", "/enqueue", json={"action": "echo"})
    return str(response.json()["request_id"]) if response.status_code == 202 else None


@pytest.fixture(scope="module")
def strict_stack(fault_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A stack with INFO logs captured to a file, and the crash hook armed."""
    log_file = Path(tmp_path_factory.mktemp("strict-logs")) / "stack.log"
    env = {**fault_env, "LOG_LEVEL": "INFO", "FAULT_CRASH_AFTER_STORE": "0.25"}
    with running_stack(env, log_file) as base_url:
        yield base_url, log_file


@pytest.fixture(scope="module")
def limited_stack(fault_env: dict[str, str]) -> Iterator[str]:
    """A stack with a tiny lane limit. No crash hook: an enqueue process counts the lanes
    of what it accepted itself, so one that died forgets them (docs/design.md §4.7)."""
    with running_stack({**fault_env, "LANE_DEPTH_LIMIT": "3"}) as base_url:
        yield base_url


def test_full_lane_answers_429_and_stores_nothing(limited_stack: str, fault_database: Any) -> None:
    user = Api(limited_stack).new_user("backpressure")
    accepted = [user.enqueue("echo", None) for _ in range(3)]
    full = user.call("POST", "/enqueue", json={"action": "echo"}, headers={"Idempotency-Key": "full"})
    assert full.status_code == 429 and full.json()["error"] == "lane_full"
    assert int(full.headers["Retry-After"]) >= 1
    stored = fault_database.requests.count_documents({"_id": {"$in": accepted}})
    user_id = fault_database.requests.find_one({"_id": accepted[0]})["user_id"]
    assert stored == 3 == fault_database.requests.count_documents({"user_id": user_id})
    assert [user.request(i)["status"] for i in accepted] == ["queued"] * 3


def _enqueue_through_crashes(user: Api, key: str | None = None) -> str:
    """Enqueue with an Idempotency-Key, retrying while the armed hook kills the function."""
    headers = {"Idempotency-Key": key or f"k-{time.monotonic_ns()}"}
    for _ in range(50):
        response = user.call("POST", "/enqueue", json={"action": "echo"}, headers=headers)
        if response.status_code in (200, 202):
            return str(response.json()["request_id"])
        assert response.status_code == 503, response.text
        time.sleep(0.1)
    raise AssertionError("never accepted")


def test_enqueue_killed_between_store_and_publish_loses_nothing(
    strict_stack: tuple[str, Path], fault_workers: Workers, fault_database: Any, record_audit: Callable[[Audit], None]
) -> None:
    # Given an enqueue function that dies after storing a quarter of the requests
    api = Api(strict_stack[0])
    fault_workers.start(1, WORKER_SLOTS="4")
    traffic = Traffic(lanes=[Lane(api.new_user("crashy")) for _ in range(6)], per_user=10, action="echo", data={})
    # When clients retry with their Idempotency-Key until accepted
    traffic.start()
    traffic.join(timeout=150)
    # Then every accepted request runs once, in order, with no 5xx other than the router's 503
    result = audit("enqueue killed after store (p=0.25)", traffic, settle(traffic, timeout=120), fault_database)
    record_audit(result)
    assert (result.lost, result.double_outcomes, result.ordering_violations, result.server_errors) == (0, 0, 0, 0), (
        traffic.statuses
    )
    assert traffic.statuses[503] > 0, "the crash hook never fired"


def test_sigterm_lets_the_worker_finish_its_request(fault_api: Api, fault_workers: Workers) -> None:
    user = fault_api.new_user("graceful")
    first = user.enqueue("sleep", {"ms": 1500})
    second = user.enqueue("echo", {"n": 2})
    (worker,) = fault_workers.start(1, WORKER_SLOTS="1")
    wait_until(lambda: user.request(first)["status"] == "processing", timeout=30, what="the sleep to start")

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0

    record = user.request(first)
    assert record["status"] == "done" and record["attempts"] == 1
    assert user.request(second)["status"] == "queued"  # handed over untouched for the next worker
    fault_workers.start(1)
    assert user.wait_terminal([second], timeout=30)[0]["status"] == "done"


def test_logs_never_hold_passwords_hashes_or_tokens(
    strict_stack: tuple[str, Path], fault_workers: Workers, tmp_path: Path
) -> None:
    base_url, stack_log = strict_stack
    worker_log = tmp_path / "worker.log"
    fault_workers.start(1, log_file=worker_log, LOG_LEVEL="DEBUG")
    api = Api(base_url)
    user = api.new_user("secretive")
    password = "correct horse battery"  # what Api.new_user registers with
    assert user.token is not None
    wrong = api.call("POST", "/login", json={"username": user.username, "password": "hunter2-wrong"})  # type: ignore[attr-defined]
    assert wrong.status_code == 401
    request_id = _enqueue_through_crashes(user)
    user.wait_terminal([request_id], timeout=30)
    user.call("POST", "/logout")

    logs = stack_log.read_text(errors="replace") + worker_log.read_text(errors="replace")
    assert request_id in logs, "the logs were not captured"
    for secret in (password, "hunter2-wrong", user.token, user.token.split(".")[2], "$argon2id$"):
        assert secret not in logs


def test_requests_queued_while_no_worker_runs_keep_their_order(
    fault_env: dict[str, str], fault_workers: Workers, fault_database: Any
) -> None:
    # Given requests queued while no worker runs, for longer than the first protocol's
    # lane idle period in its test (partitions never expire)
    env = {**fault_env, "QUEUE_PREFIX": "outliving"}
    with running_stack(env) as base_url:
        user = Api(base_url).new_user("outliving")
        ids = [user.enqueue("echo", {"n": n}) for n in range(3)]
        time.sleep(5)
        # When a request is sent now and a worker comes
        ids.append(user.enqueue("echo", {"n": 3}))
        fault_workers.start(1, QUEUE_PREFIX="outliving")
        records = user.wait_terminal(ids, timeout=60)
    # Then all four run, the older ones first
    assert [r["status"] for r in records] == ["done"] * 4
    assert ordering_violations(records) == []
