"""Settled notices go only where they are needed (lanes.lane.notices, docs/design.md §4.7):
to the ledger of the enqueue process that accepted each request, not to every process."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from lanes.broker import Hints, QueueNames
from lanes.settings import Settings
from tests.support import wait_until
from tests.support_stack import Stack, isolated_stack


@pytest.fixture(scope="module")
def stack(running_services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(tmp_path_factory.mktemp("notices"), ["--workers", "1"]) as running:
        yield running


@pytest.fixture
def listen() -> Iterator[Callable[[Hints], None]]:
    """Start listeners that stop with the test (not reconnecting to a broker gone after it)."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(hints: Hints) -> None:
        threads.append(threading.Thread(target=hints.run, args=(stop,), daemon=True))
        threads[-1].start()

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=10)


def test_a_notice_reaches_the_accepting_ledger_and_no_other(stack: Stack, listen: Callable[[Hints], None]) -> None:
    # Given listeners where notices went before (the fanout every ledger followed) and
    # under another process's ledger key
    settings = Settings.from_env(stack.env)
    names = QueueNames.of(settings)
    to_all: list[bytes] = []
    to_another: list[bytes] = []
    connected = threading.Barrier(3, timeout=30)
    listen(Hints(settings, names.settled, to_all.append, connected.wait, durable=True))
    another = uuid.uuid4().hex
    listen(Hints(settings, names.ledgers, to_another.append, connected.wait, durable=True, routing_key=another))
    connected.wait()
    user = stack.api.new_user("notices")

    # When a lane's requests are accepted together and all settle
    ids = [user.enqueue("echo", {"n": n}) for n in range(5)]
    user.wait_terminal(ids, timeout=30)

    # Then the accepting process's ledger hears of it: a new request has none ahead
    def next_position() -> int:
        response = user.call("POST", "/enqueue", json={"action": "echo", "data": None})
        assert response.status_code == 202, response.text
        user.wait_terminal([response.json()["request_id"]], timeout=30)
        return int(response.json()["position"])

    wait_until(lambda: next_position() == 0, timeout=20, what="a request with none ahead of it")
    # And nothing was announced to every process, or to another one
    assert to_all == [] and to_another == []
