"""Repeated failed logins lock the username and the client address, with Retry-After."""

from __future__ import annotations

import uuid

from tests.support import Api


def _login(api: Api, username: str, password: str) -> tuple[int, dict[str, str], dict[str, str]]:
    response = api.call("POST", "/login", json={"username": username, "password": password})
    return response.status_code, dict(response.headers), response.json()


def test_five_failures_lock_the_username_even_for_the_right_password(api: Api) -> None:
    user = api.new_user("locked")
    name = user.username  # type: ignore[attr-defined]
    attackers = [Api(api.base_url) for _ in range(5)]  # different addresses: the username lock alone
    statuses = [_login(attacker, name, "wrong password")[0] for attacker in attackers]
    assert statuses == [401] * 5

    status, headers, body = _login(Api(api.base_url), name, "correct horse battery")
    assert status == 429 and body["error"] == "login_throttled"
    assert 1 <= int(headers["Retry-After"]) <= 900


def test_unknown_usernames_lock_the_same_way(api: Api) -> None:
    name = f"ghost-{uuid.uuid4().hex[:8]}"
    answers = [_login(Api(api.base_url), name, "whatever1")[0] for _ in range(6)]
    assert answers == [401] * 5 + [429]


def test_one_address_failing_on_many_names_is_locked(api: Api) -> None:
    attacker = Api(api.base_url)
    answers = [_login(attacker, f"spray-{n}-{uuid.uuid4().hex[:6]}", "password1")[0] for n in range(6)]
    assert answers == [401] * 5 + [429]
    bystander = api.new_user("bystander")  # another address is not affected
    assert bystander.token


def test_a_success_before_the_limit_clears_the_username(api: Api) -> None:
    user = api.new_user("forgetful")
    name = user.username  # type: ignore[attr-defined]
    for _ in range(4):
        assert _login(Api(api.base_url), name, "wrong password")[0] == 401
    assert _login(Api(api.base_url), name, "correct horse battery")[0] == 200
    for _ in range(4):
        assert _login(Api(api.base_url), name, "wrong password")[0] == 401
    assert _login(Api(api.base_url), name, "correct horse battery")[0] == 200
