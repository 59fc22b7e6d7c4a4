"""Listing pages (lanes.requests.Requests.list_owned) against the real database: a page of
records, then their outcomes in one call; `next_after` is None only when nothing is left,
and a status filter looks at LIST_SCAN_MAX records at most per page. The `$in` batch (what
MongoDB gets) and the finds by `_id` (what FerretDB gets) give the same pages."""

from __future__ import annotations

import uuid
from typing import Any

import pymongo.monitoring
import pytest
from pymongo import MongoClient

from lanes import requests as requests_module
from lanes.db import now, time_ordered_id
from lanes.requests import Requests
from lanes.settings import Settings


class Commands(pymongo.monitoring.CommandListener):
    def __init__(self) -> None:
        self.outcome_finds = 0

    def started(self, event: pymongo.monitoring.CommandStartedEvent) -> None:
        self.outcome_finds += event.command_name == "find" and event.command.get("find") == "outcomes"

    def succeeded(self, event: pymongo.monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: pymongo.monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture(scope="module")
def commands() -> Commands:
    return Commands()


@pytest.fixture(scope="module")
def db(lanes_env: dict[str, str], commands: Commands) -> Any:
    settings = Settings.from_env(lanes_env)
    client: MongoClient[dict[str, Any]] = MongoClient(settings.mongo_uri, tz_aware=True, event_listeners=[commands])
    return client.get_database(settings.database_name)


@pytest.fixture(scope="module")
def history(db: Any) -> tuple[str, list[str]]:
    """A user with 45 requests: every third one done, the rest queued."""
    user_id = uuid.uuid4().hex
    ids = sorted(time_ordered_id() for _ in range(45))  # ids of one millisecond are random
    db.requests.insert_many(
        [{"_id": i, "user_id": user_id, "action": "echo", "status": "queued", "created_at": now()} for i in ids]
    )
    done = [{"_id": i, "user_id": user_id, "status": "done", "attempts": 1, "finished_at": now()} for i in ids[::3]]
    db.outcomes.insert_many(done)
    return user_id, ids


def _all_pages(requests: Requests, user_id: str, status: str | None, limit: int) -> list[list[str]]:
    pages, after = [], None
    while True:
        page = requests.list_owned(user_id, status, limit, after)
        pages.append([item["_id"] for item in page.items])
        if page.next_after is None:
            return pages
        after = page.next_after


def _flat(pages: list[list[str]]) -> list[str]:
    return [i for page in pages for i in page]


@pytest.mark.parametrize("batched", [True, False], ids=["in-batch", "by-id"])
def test_pages_are_exact_and_outcomes_come_in_one_call_per_page(
    db: Any, history: tuple[str, list[str]], commands: Commands, batched: bool
) -> None:
    user_id, ids = history
    requests = Requests(db)
    requests._batched = batched
    # 45 records by 15: three full pages, and no fourth (empty) one
    before = commands.outcome_finds
    assert _all_pages(requests, user_id, None, 15) == [ids[0:15], ids[15:30], ids[30:45]]
    assert commands.outcome_finds - before == (3 if batched else 45)
    # by 20: the last page is short, and says nothing is left
    assert _all_pages(requests, user_id, None, 20) == [ids[0:20], ids[20:40], ids[40:45]]
    # a status filter pages over what it looked at
    done = ids[::3]
    assert _flat(_all_pages(requests, user_id, "done", 4)) == done
    assert _flat(_all_pages(requests, user_id, "queued", 100)) == [i for i in ids if i not in done]


def test_a_status_filter_looks_at_scan_max_records_per_page(
    db: Any, history: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id, ids = history
    monkeypatch.setattr(requests_module, "LIST_SCAN_MAX", 10)
    monkeypatch.setattr(requests_module, "LIST_CHUNK", 4)
    requests = Requests(db)
    first = requests.list_owned(user_id, "done", 100, None)
    assert [item["_id"] for item in first.items] == ids[0:10:3] and first.next_after == ids[9]
    pages = _all_pages(requests, user_id, "done", 100)
    assert len(pages) == 5 and _flat(pages) == ids[::3]
    exactly = requests.list_owned(user_id, None, 100, ids[34])  # the last 10: nothing left after them
    assert len(exactly.items) == 10 and exactly.next_after is None
