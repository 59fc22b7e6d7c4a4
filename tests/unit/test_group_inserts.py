"""Group commit (lanes.inserts) against a collection double that records its commands.

The real database's side (an unordered insert_many reporting each duplicate by its index)
is exercised by tests/integration/test_decisions_under_concurrency.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, BulkWriteError, DuplicateKeyError

from lanes.inserts import GroupInserts


class Collection:
    """Keeps documents by _id and answers like pymongo; each command takes `latency`."""

    def __init__(self, name: str = "db.things", latency: float = 0.01, failure: BaseException | None = None):
        self.full_name = name
        self.latency = latency
        self.failure = failure
        self.stored: dict[Any, dict[str, Any]] = {}
        self.commands: list[int] = []  # documents per command
        self._lock = threading.Lock()

    def insert_one(self, document: dict[str, Any]) -> None:
        self.insert_many([document], ordered=False, one=True)

    def insert_many(self, documents: list[dict[str, Any]], ordered: bool, one: bool = False) -> None:
        assert not ordered
        time.sleep(self.latency)
        with self._lock:
            self.commands.append(len(documents))
            if self.failure is not None:
                raise self.failure
            errors = []
            for index, document in enumerate(documents):
                if document["_id"] in self.stored:
                    errors.append({"index": index, "code": 11000, "errmsg": "E11000 duplicate key"})
                else:
                    self.stored[document["_id"]] = document
        if errors and one:
            raise DuplicateKeyError("E11000 duplicate key", 11000)
        if errors:
            raise BulkWriteError({"writeErrors": errors, "writeConcernErrors": [], "nInserted": 0})


def insert_concurrently(inserts: GroupInserts, jobs: list[tuple[Collection, dict[str, Any]]]) -> list[Any]:
    """Run each insert on its own thread at once; each result is None or the error raised."""
    results: list[Any] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(index: int) -> None:
        collection, document = jobs[index]
        start.wait()
        try:
            inserts.insert(collection, document)  # type: ignore[arg-type]
        except BaseException as error:  # noqa: BLE001 - the test looks at what each caller got
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive(), "an insert never returned"
    return results


def test_one_insert_alone_is_written_at_once_as_one_document() -> None:
    things = Collection(latency=0)
    GroupInserts().insert(things, {"_id": 1})  # type: ignore[arg-type]
    assert things.commands == [1]
    assert 1 in things.stored


def test_concurrent_inserts_share_commands_and_each_is_stored() -> None:
    things = Collection()
    results = insert_concurrently(GroupInserts(), [(things, {"_id": i}) for i in range(40)])
    assert results == [None] * 40
    assert sorted(things.stored) == list(range(40))
    assert sum(things.commands) == 40
    assert len(things.commands) < 40, things.commands  # some waited and went together


def test_a_duplicate_fails_only_its_own_caller() -> None:
    things = Collection()
    things.stored["taken"] = {"_id": "taken"}
    jobs = [(things, {"_id": i}) for i in range(10)] + [(things, {"_id": "taken"})]
    results = insert_concurrently(GroupInserts(), jobs)
    assert results[:10] == [None] * 10
    assert isinstance(results[10], DuplicateKeyError)


def test_two_callers_racing_for_one_id_get_one_success() -> None:
    things = Collection()
    results = insert_concurrently(GroupInserts(), [(things, {"_id": "claim", "by": n}) for n in range(8)])
    assert sum(result is None for result in results) == 1
    assert all(isinstance(result, DuplicateKeyError) for result in results if result is not None)


def test_a_failed_command_fails_every_caller_in_it_and_the_next_ones_still_write() -> None:
    things = Collection(failure=AutoReconnect("connection closed"))
    inserts = GroupInserts()
    results = insert_concurrently(inserts, [(things, {"_id": i}) for i in range(6)])
    assert all(isinstance(result, AutoReconnect) for result in results)
    things.failure = None
    inserts.insert(things, {"_id": "after"})  # type: ignore[arg-type]
    assert "after" in things.stored


def test_collections_are_written_separately() -> None:
    claims, outcomes = Collection("db.claims"), Collection("db.outcomes")
    jobs = [(claims if i % 2 else outcomes, {"_id": i}) for i in range(12)]
    assert insert_concurrently(GroupInserts(), jobs) == [None] * 12
    assert sorted(claims.stored) == [1, 3, 5, 7, 9, 11]
    assert sorted(outcomes.stored) == [0, 2, 4, 6, 8, 10]


def test_an_interrupted_waiter_does_not_keep_the_lead() -> None:
    """A caller interrupted while it waits (a killed greenlet, a timeout) must not be
    handed the lead and leave every later insert waiting for it."""
    things = Collection(latency=0.2)
    inserts = GroupInserts()
    leader = threading.Thread(target=inserts.insert, args=(things, {"_id": "first"}))
    leader.start()
    time.sleep(0.05)  # the leader is writing; the next caller waits

    class Interrupted(BaseException):
        pass

    original = threading.Event.wait
    interrupted_thread = threading.current_thread()

    def interrupted_wait(self: threading.Event, timeout: float | None = None) -> bool:
        if threading.current_thread() is interrupted_thread:
            raise Interrupted
        return original(self, timeout)

    threading.Event.wait = interrupted_wait  # type: ignore[method-assign]
    try:
        with pytest.raises(Interrupted):
            inserts.insert(things, {"_id": "interrupted"})  # type: ignore[arg-type]
    finally:
        threading.Event.wait = original  # type: ignore[method-assign]
    leader.join(timeout=5)
    done = threading.Event()
    threading.Thread(target=lambda: (inserts.insert(things, {"_id": "later"}), done.set())).start()  # type: ignore[func-returns-value]
    assert done.wait(timeout=5), "an insert after the interruption never returned"
    assert "interrupted" not in things.stored
    assert {"first", "later"} <= set(things.stored)
