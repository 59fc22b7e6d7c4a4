"""A logout is refused by the other functions within a second, pushed on the broker's
`<prefix>.revocations` fanout (lanes.revocations), also after the broker restarted; a
logout while the broker is down is caught up from the collection when it returns.

The stack polls the collection only every 60 s here, so what these measure is the push
and the catch-up, not the backstop."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from deploy.services import FerretDB, RabbitMQ
from tests.conftest import running_stack
from tests.support import Api, wait_until

BINDINGS = "/api/exchanges/%2F/lanes.revocations/bindings/source"


@pytest.fixture(scope="module")
def push_stack(fault_env: dict[str, str]) -> Iterator[str]:
    with running_stack({**fault_env, "AUTH_CACHE_SECONDS": "60"}) as base_url:
        yield base_url


def _listeners(broker: RabbitMQ) -> int:
    try:
        return len(broker.management("GET", BINDINGS))
    except Exception:  # noqa: BLE001 - not declared yet, or the broker is still starting
        return 0


def _in_use(user: Api) -> None:
    """The token works at enqueue and status (each process has read what it must)."""
    assert user.call("POST", "/enqueue", json={"action": "echo"}).status_code == 202
    assert user.call("GET", "/requests").status_code == 200


def _refused_within(user: Api, seconds: float) -> float:
    """Seconds until both enqueue and status answer 401; fails past `seconds`."""
    started = time.monotonic()
    pending = {("POST", "/enqueue"), ("GET", "/requests")}
    while pending:
        for method, path in list(pending):
            kwargs = {"json": {"action": "echo"}} if method == "POST" else {}
            if user.call(method, path, **kwargs).status_code == 401:
                pending.discard((method, path))
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"still accepted after {elapsed:.2f} s: {sorted(pending)}"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_logout_is_refused_everywhere_within_a_second_also_after_a_broker_restart(
    push_stack: str, private_services: tuple[RabbitMQ, FerretDB]
) -> None:
    broker = private_services[0]
    api = Api(push_stack)
    user = api.new_user("revoked")
    _in_use(user)
    listening = _listeners(broker)
    assert listening >= 3  # at least login, enqueue and status
    assert user.call("POST", "/logout").status_code == 204
    _refused_within(user, 1.0)

    broker.stop()
    broker.start()
    wait_until(lambda: _listeners(broker) >= listening, timeout=30, what="every listener to reconnect")
    again = api.new_user("revoked")
    wait_until(
        lambda: again.call("POST", "/enqueue", json={"action": "echo"}).status_code == 202, timeout=30, what="enqueue"
    )
    _in_use(again)
    assert again.call("POST", "/logout").status_code == 204
    _refused_within(again, 1.0)


def test_a_logout_while_the_broker_is_down_is_caught_up_when_it_returns(
    push_stack: str, private_services: tuple[RabbitMQ, FerretDB]
) -> None:
    broker = private_services[0]
    user = Api(push_stack).new_user("missed")
    _in_use(user)
    listening = _listeners(broker)
    broker.stop()
    try:
        assert user.call("POST", "/logout").status_code == 204  # written; the push fails
    finally:
        broker.start()
    # Well before the 60 s backstop: each listener reads the collection as it reconnects.
    wait_until(lambda: _listeners(broker) >= listening, timeout=30, what="every listener to reconnect")
    _refused_within(user, 1.0)
