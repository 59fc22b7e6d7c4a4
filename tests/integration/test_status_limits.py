"""The status routes are cheap to serve and cannot be called without bound: a per-user rate
limit, and a listing page's outcomes looked up the way the database answers best."""

from __future__ import annotations

import uuid
from typing import Any

from lanes.db import is_ferretdb, now
from lanes.requests import outcomes_of
from tests.support import Api


def test_one_user_reading_without_pause_is_held_to_the_rate_and_the_others_are_not(api: Api) -> None:
    # Given a user that reads as fast as it can (past STATUS_BURST in every status process),
    # with the cheapest read there is, a missing request: a listing's speed depends on how
    # much the session's database holds, and a slow one never outruns the rate
    greedy = api.new_user("greedy")
    headers = {"Authorization": f"Bearer {greedy.token}"}
    answers = []
    for _ in range(1500):
        response = greedy.session.get(f"{greedy.base_url}/requests/{'f' * 32}", headers=headers, timeout=30)
        answers.append(response)
        if response.status_code == 429:
            break
    # Then it is told to wait, in the error shape, with Retry-After
    refused = answers[-1]
    assert refused.status_code == 429, [r.status_code for r in answers[-3:]]
    assert refused.json()["error"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1
    assert all(r.status_code == 404 for r in answers[:-1])
    # And another user reads at once
    other = api.new_user("patient")
    assert other.session.get(f"{other.base_url}/requests", headers={"Authorization": f"Bearer {other.token}"}).ok


def test_a_pages_outcomes_are_the_same_batched_or_one_by_one(database: Any) -> None:
    # Given outcomes of some requests among others
    ids = [uuid.uuid4().hex for _ in range(30)]
    database.outcomes.insert_many([{"_id": i, "status": "done", "attempts": 1, "finished_at": now()} for i in ids[::2]])
    page = ids[:20]
    # Then both ways find exactly the page's outcomes
    batched = outcomes_of(database, page, batched=True)
    single = outcomes_of(database, page, batched=False)
    assert batched == single and set(batched) == set(ids[:20:2])
    assert outcomes_of(database, [], batched=not is_ferretdb(database)) == {}
