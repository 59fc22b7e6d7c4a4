"""Every contested decision is an insert under the request's id: under real concurrency on the
real database, exactly one claimant wins and exactly one outcome is kept."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest

from lanes.db import connect
from lanes.requests import Outcome, Requests
from lanes.settings import Settings


@pytest.fixture
def requests_db(running_services: None) -> Iterator[Requests]:
    settings = Settings(mongo_uri=f"mongodb://127.0.0.1:27017/lanes_decisions_{uuid.uuid4().hex[:10]}")
    yield Requests(connect(settings))
    pymongo.MongoClient(settings.mongo_uri).drop_database(settings.database_name)


def _race(count: int, attempt: Any) -> list[Any]:
    barrier, results = threading.Barrier(count), []
    lock = threading.Lock()

    def run(index: int) -> None:
        barrier.wait()
        result = attempt(index)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_a_start_and_cancels_racing_for_one_request_have_one_winner(requests_db: Requests) -> None:
    for _ in range(20):
        request_id = uuid.uuid4().hex
        claims = _race(8, lambda i, r=request_id: requests_db._claim_for(r, "worker" if i % 2 else "cancel"))
        winners = [c for c in claims if c.fresh]
        assert len(winners) == 1
        assert {c.by for c in claims} == {winners[0].by}  # every loser learns who won


def test_racing_outcomes_keep_one_and_every_writer_sees_it(requests_db: Requests) -> None:
    for _ in range(20):
        request_id = uuid.uuid4().hex
        outcomes = _race(8, lambda i, r=request_id: requests_db.finish(r, "u", Outcome("done", result=i), 1, "echo"))
        assert len({o["result_json"] for o in outcomes}) == 1
        assert requests_db._outcomes.count_documents({"_id": request_id}) == 1
