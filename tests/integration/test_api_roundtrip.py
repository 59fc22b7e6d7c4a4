"""The whole HTTP path on a running stack: register, login, enqueue, status, list, cancel, logout."""

from __future__ import annotations

import time
import uuid

from tests.conftest import Workers
from tests.support import Api, wait_until


def test_register_login_enqueue_and_follow_a_request_to_done(api: Api, workers: Workers) -> None:
    workers.start(1)
    user = api.new_user("roundtrip")

    response = user.call("POST", "/enqueue", json={"action": "echo", "data": {"hello": "lanes"}})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["position"] == 0
    assert response.headers["Location"] == f"/requests/{body['request_id']}"

    (record,) = user.wait_terminal([body["request_id"]], timeout=30)
    assert record["status"] == "done"
    assert record["result"] == {"hello": "lanes"}
    assert record["attempts"] == 1
    for stamp in ("created_at", "started_at", "finished_at"):
        assert record[stamp].endswith("Z") and len(record[stamp]) == len("2026-01-01T00:00:00.000Z")
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]


def test_usernames_are_unique_case_insensitively(api: Api) -> None:
    name = f"Case-{uuid.uuid4().hex[:8]}"
    assert api.call("POST", "/register", json={"username": name, "password": "long enough"}).status_code == 201
    clash = api.call("POST", "/register", json={"username": name.upper(), "password": "long enough"})
    assert clash.status_code == 409
    assert clash.json()["error"] == "username_taken"
    login = api.call("POST", "/login", json={"username": name.lower(), "password": "long enough"})
    assert login.status_code == 200 and login.json()["token_type"] == "Bearer"


def test_wrong_password_and_unknown_user_get_the_same_answer(api: Api) -> None:
    user = api.new_user("login")
    wrong = api.call("POST", "/login", json={"username": user.username, "password": "not the password"})  # type: ignore[attr-defined]
    unknown = api.call("POST", "/login", json={"username": f"nobody-{uuid.uuid4().hex}", "password": "whatever1"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_list_pages_through_own_requests_oldest_first(api: Api) -> None:
    user, other = api.new_user("lister"), api.new_user("other")
    ids = [user.enqueue("echo", {"n": n}) for n in range(5)]
    other.enqueue("echo", {"n": "not mine"})

    first = user.call("GET", "/requests", params={"limit": 2}).json()
    assert [item["request_id"] for item in first["items"]] == ids[:2]
    second = user.call("GET", "/requests", params={"limit": 2, "after": first["next_after"]}).json()
    assert [item["request_id"] for item in second["items"]] == ids[2:4]
    last = user.call("GET", "/requests", params={"limit": 2, "after": second["next_after"]}).json()
    assert [item["request_id"] for item in last["items"]] == ids[4:]
    assert last["next_after"] is None

    queued = user.call("GET", "/requests", params={"status": "queued"}).json()["items"]
    assert {item["request_id"] for item in queued} == set(ids)


def test_other_users_requests_are_not_found(api: Api) -> None:
    owner, stranger = api.new_user("owner"), api.new_user("stranger")
    request_id = owner.enqueue("echo", {"secret": True})
    for method in ("GET", "DELETE"):
        response = stranger.call(method, f"/requests/{request_id}")
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
    assert stranger.call("GET", f"/requests/{'0' * 32}").status_code == 404


def test_cancel_a_queued_request_but_not_a_running_one(api: Api, workers: Workers) -> None:
    user = api.new_user("canceller")
    running = user.enqueue("sleep", {"ms": 1500})
    waiting = user.enqueue("echo", {"n": 2})
    workers.start(1)
    wait_until(lambda: user.request(running)["status"] == "processing", timeout=20, what="the sleep to start")

    cancelled = user.call("DELETE", f"/requests/{waiting}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    started = user.call("DELETE", f"/requests/{running}")
    assert started.status_code == 409 and started.json()["error"] == "not_cancellable"

    first, second = user.wait_terminal([running, waiting], timeout=30)
    assert first["status"] == "done"
    assert second["status"] == "cancelled" and second["attempts"] == 0 and second["started_at"] is None
    assert user.call("DELETE", f"/requests/{waiting}").status_code == 409


def test_idempotency_key_returns_the_original_request(api: Api) -> None:
    user = api.new_user("idem")
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = user.call("POST", "/enqueue", json={"action": "echo", "data": 1}, headers=key)
    again = user.call("POST", "/enqueue", json={"action": "echo", "data": 1}, headers=key)
    changed = user.call("POST", "/enqueue", json={"action": "echo", "data": 2}, headers=key)
    assert first.status_code == 202
    assert again.status_code == 200 and again.json()["request_id"] == first.json()["request_id"]
    assert changed.status_code == 409 and changed.json()["error"] == "idempotency_key_reused"
    # The same key belongs to each user separately.
    other = api.new_user("idem-other")
    assert other.call("POST", "/enqueue", json={"action": "echo", "data": 1}, headers=key).status_code == 202


def test_logout_revokes_the_token_everywhere_within_a_second(api: Api) -> None:
    user = api.new_user("leaver")
    assert user.call("GET", "/requests").status_code == 200  # the status function now knows the token
    assert user.call("POST", "/logout").status_code == 204
    assert user.call("POST", "/logout").status_code == 401  # the function that revoked forgets at once
    deadline = time.monotonic() + 1.0  # SPEC §3.14; pushed, not waited for (lanes.revocations)
    while user.call("GET", "/requests").status_code != 401:
        assert time.monotonic() < deadline, "the status function still accepts the token"
        time.sleep(0.02)
    for _ in range(5):
        after = user.call("GET", "/requests")
        assert after.status_code == 401 and after.json()["error"] == "token_revoked"


def test_unknown_action_is_refused_at_enqueue(api: Api) -> None:
    user = api.new_user("actions")
    response = user.call("POST", "/enqueue", json={"action": "launch_missiles"})
    assert response.status_code == 400 and response.json()["error"] == "unknown_action"


def test_probes_answer(api: Api) -> None:
    assert api.call("GET", "/healthz").json() == {"status": "ok"}
    assert api.call("GET", "/readyz").json() == {"status": "ready"}
    missing = api.call("GET", "/no/such/route")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_any_json_data_comes_back_unchanged(api: Api, workers: Workers) -> None:
    # Keys with '.' or '$' are valid JSON that document databases refuse as field names.
    workers.start(1)
    user = api.new_user("json")
    data = {"a.b": 1, "$where": "x", "": {"x.y": [1, 2.5, None, True]}, "ü": "\u2603", "big": 2**60}
    (record,) = user.wait_terminal([user.enqueue("echo", data)], timeout=30)
    assert record["status"] == "done" and record["result"] == data
