"""Login throttling that cannot be turned against the account's owner: failures lock the
pair (username, client address), slow the username down from anywhere, and every login
from one address spends its token bucket; the owner from elsewhere always gets in."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from tests.support import Api

PASSWORD = "correct horse battery"


class _BoundAdapter(HTTPAdapter):
    def __init__(self, source: str) -> None:
        self._source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self._source, 0)
        super().init_poolmanager(*args, **kwargs)


def from_address(base_url: str) -> Api:
    """A client whose connections really come from an address of its own (127.x.y.z, an
    address of the loopback network but no trusted proxy's): the router writes it, and
    what the client writes into X-Forwarded-For itself is not believed."""
    address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
    client = Api(base_url, address=address)
    client.session.mount("http://", _BoundAdapter(address))
    del client.session.headers["X-Forwarded-For"]
    return client


def _login(api: Api, username: str, password: str, **kwargs: Any) -> requests.Response:
    return api.call("POST", "/login", json={"username": username, "password": password}, **kwargs)


def test_an_attacker_failing_50_times_does_not_keep_the_owner_out(api: Api) -> None:
    # Given alice, and an attacker at another address trying 50 wrong passwords for her,
    # each time claiming yet another address in X-Forwarded-For
    alice = api.new_user("alice")
    name = alice.username  # type: ignore[attr-defined]
    attacker = from_address(api.base_url)
    answers = [
        _login(attacker, name, f"guess-{n}", headers={"X-Forwarded-For": f"198.51.100.{n + 1}"}).status_code
        for n in range(50)
    ]
    # Then the attacker's address got five tries and is locked, whatever it claimed
    assert answers == [401] * 5 + [429] * 45
    assert _login(attacker, name, PASSWORD).status_code == 429, "even the right password waits at that address"
    # And alice, from her own address, logs in at once: no lock, and five failures are far
    # from slowing her username down (LOGIN_USERNAME_MAX_FAILURES is 20)
    owner = from_address(api.base_url)
    started = time.monotonic()
    response = _login(owner, name, PASSWORD)
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 2.0, "one argon2 hash and a few round trips, nothing more"


def test_five_failures_lock_the_pair_even_for_the_right_password(api: Api) -> None:
    user = api.new_user("locked")
    name = user.username  # type: ignore[attr-defined]
    attacker = Api(api.base_url)
    assert [_login(attacker, name, "wrong password").status_code for _ in range(5)] == [401] * 5

    response = _login(attacker, name, PASSWORD)
    body = response.json()
    assert response.status_code == 429 and body["error"] == "login_throttled"
    assert 1 <= int(response.headers["Retry-After"]) <= 900
    assert response.headers["Cache-Control"] == "no-store"


def test_unknown_usernames_lock_the_same_way(api: Api) -> None:
    name = f"ghost-{uuid.uuid4().hex[:8]}"
    attacker = Api(api.base_url)
    assert [_login(attacker, name, "whatever1").status_code for _ in range(6)] == [401] * 5 + [429]


def test_failures_from_many_addresses_slow_the_username_down_but_never_lock_it(api: Api) -> None:
    # Given a user that 22 addresses each failed for once (LOGIN_USERNAME_MAX_FAILURES is 20)
    user = api.new_user("popular")
    name = user.username  # type: ignore[attr-defined]
    assert {_login(Api(api.base_url), name, "wrong password").status_code for _ in range(22)} == {401}
    # When the owner logs in
    started = time.monotonic()
    response = _login(Api(api.base_url), name, PASSWORD)
    waited = time.monotonic() - started
    # Then the owner is let in, after a delay (0.25 s doubling per failure beyond 20: 1 s now)
    assert response.status_code == 200, response.text
    assert 0.9 <= waited < 3.0, waited


def test_a_success_before_the_limit_clears_the_pair(api: Api) -> None:
    user = api.new_user("forgetful")
    name = user.username  # type: ignore[attr-defined]
    client = Api(api.base_url)
    for _ in range(2):
        assert [_login(client, name, "wrong password").status_code for _ in range(4)] == [401] * 4
        assert _login(client, name, PASSWORD).status_code == 200


def test_login_answers_are_never_cached(api: Api) -> None:
    user = api.new_user("cached")
    name = user.username  # type: ignore[attr-defined]
    for response in (_login(user, name, PASSWORD), _login(user, name, "wrong password")):
        assert response.headers["Cache-Control"] == "no-store", response.status_code


def test_an_overlong_username_costs_no_lookup(api: Api) -> None:
    response = _login(Api(api.base_url), "a" * 65, "password1")
    assert response.status_code == 400 and response.json()["error"] == "invalid_username"
    response = _login(Api(api.base_url), "alice", "p" * 1025)
    assert response.status_code == 400 and response.json()["error"] == "invalid_password"
