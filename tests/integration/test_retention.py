"""Retention: the reaper deletes exactly what is past it, never open work, and a purged
request answers 404."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import jwt
import pymongo
import pytest

from deploy.services import FerretDB
from lanes.db import connect, ensure_indexes, now
from lanes.requests import Outcome, Requests, body_fingerprint, new_request_id
from lanes.retention import Reaper
from lanes.settings import Settings
from tests.conftest import running_stack
from tests.support import Api, free_port_block, management_api, open_vhost, wait_until

DAY = timedelta(days=1)


@pytest.fixture
def fresh_db(lanes_env: dict[str, str]) -> Iterator[Any]:
    """A database of its own: the reaper walks whole collections."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(lanes_env["MONGO_URI"], tz_aware=True)
    name = f"lanes_retention_{uuid.uuid4().hex[:8]}"
    yield client[name]
    client.drop_database(name)
    client.close()


def _finished(requests: Requests, user: str, status: str = "done", key: str | None = None) -> str:
    request_id = new_request_id()
    if key is not None:
        requests.reserve_key(user, key, request_id, "fp")
    requests.create(request_id, user, "echo", "{}", "fp")
    requests.claim(request_id, 1, now())
    requests.finish(request_id, user, Outcome(status=status, result={"ok": True}), attempts=1)
    return request_id


def _ids(db: Any, collection: str) -> set[str]:
    return {doc["_id"] for doc in db[collection].find({}, {"_id": 1})}


def test_reaper_deletes_exactly_what_is_past_retention_and_nothing_open(fresh_db: Any) -> None:
    # Given: requests finished "now", open requests, and (inserted after them, as
    # time goes) a request that finished two days later; the reaper looks from 8 days on.
    db, requests = fresh_db, Requests(fresh_db)
    done = _finished(requests, "u1", key="k-done")
    failed = _finished(requests, "u1", status="failed")
    requests.record_dead_letter({"_id": failed, "user_id": "u1", "action": "fail"}, "boom", 3)
    requests.mark_requeued(failed, new_request_id())
    unhandled = _finished(requests, "u1", status="failed")
    requests.record_dead_letter({"_id": unhandled, "user_id": "u1", "action": "fail"}, "boom", 3)
    queued = new_request_id()
    requests.reserve_key("u2", "k-open", queued, "fp")
    requests.create(queued, "u2", "echo", "{}", "fp")
    running = new_request_id()
    requests.create(running, "u3", "echo", "{}", "fp")
    requests.claim(running, 1, now())
    cancelled_without_outcome = new_request_id()
    requests.create(cancelled_without_outcome, "u4", "echo", "{}", "fp")
    db.claims.insert_one({"_id": cancelled_without_outcome, "by": "cancel", "at": now(), "attempts": 0})
    refused = new_request_id()
    requests.refuse(refused)
    young = new_request_id()
    later = now() + 2 * DAY
    db.requests.insert_one({"_id": young, "user_id": "u1", "action": "echo", "created_at": later})
    db.claims.insert_one({"_id": young, "by": "worker", "at": later, "attempts": 1})
    db.outcomes.insert_one({"_id": young, "user_id": "u1", "status": "done", "finished_at": later})
    db.revocations.insert_many(
        [
            {"_id": "expired", "kind": "token", "subject": "t1", "expires_at": now() - DAY},
            {"_id": "valid", "kind": "user", "subject": "u1", "expires_at": now() + 30 * DAY},
        ]
    )
    db.login_failures.insert_many([{"_id": "old", "key": "user:x", "at": now()}])

    # When
    reaped = Reaper(db, Settings(retention_days=7)).reap(moment=now() + 8 * DAY)

    # Then: the finished requests and what hangs off them are gone, open work stays.
    gone = {done, failed, unhandled, cancelled_without_outcome}
    assert _ids(db, "requests") == {queued, running, young}
    assert _ids(db, "outcomes") == {young}
    assert _ids(db, "claims") == {running, young}
    assert not gone & (_ids(db, "requests") | _ids(db, "claims") | _ids(db, "outcomes"))
    assert refused not in _ids(db, "claims")
    assert [doc["request_id"] for doc in db.idempotency_keys.find()] == [queued]
    assert _ids(db, "dead_letters") == {unhandled}
    assert _ids(db, "revocations") == {"valid"}
    assert _ids(db, "login_failures") == set()
    assert reaped.counts["outcomes"] == 3 and reaped.counts["claims"] == 5  # 3 with their outcomes
    assert requests.get(done) is None and requests.get(queued) is not None

    # And a second pass finds nothing more to do.
    assert Reaper(db, Settings(retention_days=7)).reap(moment=now() + 8 * DAY).total == 0


def test_retention_zero_keeps_requests_forever(fresh_db: Any) -> None:
    requests = Requests(fresh_db)
    done = _finished(requests, "u1", key="k")
    Reaper(fresh_db, Settings(retention_days=0)).reap(moment=now() + 10_000 * DAY)
    assert requests.get(done) is not None and fresh_db.idempotency_keys.count_documents({}) == 1


@pytest.fixture(scope="module")
def day_retention(lanes_env: dict[str, str]) -> Iterator[tuple[Api, Any]]:
    """A stack of its own (vhost, database, sweeper election) keeping requests one day,
    sweeping every second, with no worker: what the status function does alone."""
    run_id = uuid.uuid4().hex[:8]
    vhost, database = f"lanes-retention-{run_id}", f"lanes_retention_stack_{run_id}"
    vhost_url = open_vhost(vhost)
    env = {
        **lanes_env,
        "RABBITMQ_URL": vhost_url,
        "MONGO_URI": f"mongodb://127.0.0.1:27017/{database}",
        "RETENTION_DAYS": "1",
        "SWEEP_INTERVAL_SECONDS": "1",
    }
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(env["MONGO_URI"], tz_aware=True)
    try:
        with running_stack(env) as base_url:
            yield Api(base_url), client.get_default_database()
    finally:
        management_api("DELETE", f"/api/vhosts/{vhost}")
        client.drop_database(database)
        client.close()


def test_a_purged_request_answers_404_and_its_key_is_bound_anew(day_retention: tuple[Api, Any]) -> None:
    # Given a request of a user that finished two days ago, bound to an Idempotency-Key
    # (stored as the enqueue and the worker store them), and the stack's sweeper running
    api, db = day_retention
    user = api.new_user("retained")
    user_id = jwt.decode(str(user.token), options={"verify_signature": False})["sub"]
    old = new_request_id()
    requests = Requests(db)
    requests.reserve_key(user_id, "once", old, body_fingerprint("echo", {"n": 1}))
    requests.create(old, user_id, "echo", "{}", "fp")
    requests.claim(old, 1, now())
    finished = now() - 2 * DAY
    db.outcomes.insert_one(
        {
            "_id": old,
            "user_id": user_id,
            "action": "echo",
            "status": "done",
            "result_json": "{}",
            "attempts": 1,
            "started_at": finished,
            "finished_at": finished,
        }
    )
    db.idempotency_keys.update_many({}, {"$set": {"created_at": finished}})  # bound at its enqueue
    assert user.call("GET", f"/requests/{old}").status_code == 200

    # When the status function's elected sweeper runs its retention pass (no worker runs)
    wait_until(
        lambda: user.call("GET", f"/requests/{old}").status_code == 404, timeout=20, what="the request to be purged"
    )

    # Then it is gone from listings too, and its key binds a new request
    assert old not in [item["request_id"] for item in user.call("GET", "/requests").json()["items"]]
    wait_until(lambda: db.idempotency_keys.count_documents({}) == 0, timeout=10, what="the key to be purged")
    again = user.call(
        "POST", "/enqueue", json={"action": "echo", "data": {"n": 1}}, headers={"Idempotency-Key": "once"}
    )
    assert again.status_code == 202 and again.json()["request_id"] != old


# Commands a client sends to look after its connection, and our own counter reads.
HOUSEKEEPING = {"hello", "ismaster", "isMaster", "ping", "endSessions", "serverStatus", "buildInfo", "listIndexes"}


@pytest.fixture(scope="module")
def private_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A FerretDB of its own, so its command counters count only this test's commands."""
    server = FerretDB(tmp_path_factory.mktemp("sweep-cost"), port=free_port_block(1))
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


def _work_commands(client: Any) -> dict[str, int]:
    counters = client.admin.command("serverStatus")["metrics"]["commands"]
    return {name: int(c.get("total", 0)) for name, c in counters.items() if name not in HOUSEKEEPING}


def _terminal_records(db: Any, count: int) -> None:
    """Finished requests as the enqueue and the worker store them, inserted in bulk."""
    for start in range(0, count, 1000):
        ids = [new_request_id() for _ in range(min(1000, count - start))]
        at = now()
        db.requests.insert_many(
            [{"_id": i, "user_id": "u", "action": "echo", "data_json": "{}", "created_at": at} for i in ids]
        )
        db.claims.insert_many([{"_id": i, "by": "worker", "at": at, "attempts": 1} for i in ids])
        db.outcomes.insert_many(
            [
                {"_id": i, "user_id": "u", "action": "echo", "status": "done", "result_json": "{}", "finished_at": at}
                for i in ids
            ]
        )


def test_a_retention_pass_reads_the_same_with_0_and_20000_terminal_records(
    private_database: str, lanes_env: dict[str, str]
) -> None:
    settings = Settings(mongo_uri=private_database + "lanes_sweep_cost", rabbitmq_url=lanes_env["RABBITMQ_URL"])
    db = connect(settings)
    ensure_indexes(db)
    reaper = Reaper(db, settings)

    def one_pass() -> dict[str, int]:
        """What run_sweeper does once it leads."""
        before = _work_commands(db.client)
        reaper.reap()
        after = _work_commands(db.client)
        return {name: total - before.get(name, 0) for name, total in after.items() if total != before.get(name, 0)}

    empty = one_pass()
    _terminal_records(db, 20_000)
    started = time.perf_counter()
    full = one_pass()
    seconds = time.perf_counter() - started

    assert full == empty, f"commands of a pass: {empty} with 0, {full} with 20,000 terminal records"
    assert empty.get("find", 0) > 0  # the pass does look at the database
    print(f"one pass with 20,000 terminal records: {full} in {seconds * 1000:.0f} ms")
