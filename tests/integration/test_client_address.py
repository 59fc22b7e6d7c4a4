"""Login throttling keys the real client behind a platform's proxies, and holds under
concurrent attempts in several login processes."""

from __future__ import annotations

import importlib.util
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from deploy.template import ROOT
from lanes.db import connect
from lanes.passwords import PasswordHasher
from lanes.settings import Settings
from lanes.tokens import ensure_local_keys
from lanes.users import Users
from lanes.validation import Credentials
from tests.conftest import running_stack
from tests.support import Api

# What a Knative pod sees: the queue-proxy at 127.0.0.1 forwards what the ingress and,
# when the revision is at low scale, the activator appended; both live in 10.0.0.0/8.
INGRESS, ACTIVATOR = "10.1.0.4", "10.2.0.9"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def settings(lanes_env: dict[str, str]) -> Settings:
    private, public = ensure_local_keys(Path(lanes_env["DATA_DIR"]) / "keys")
    env = {**lanes_env, "JWT_PRIVATE_KEY_FILE": str(private), "JWT_PUBLIC_KEY_FILE": str(public)}
    return Settings.from_env({**env, "TRUSTED_PROXIES": "127.0.0.1/32,::1/128,10.0.0.0/8"})


def _env(settings: Settings) -> dict[str, str]:
    return {field.name.upper(): str(getattr(settings, field.name)) for field in fields(settings)}


def _app(env: dict[str, str]) -> FlaskClient:
    spec = importlib.util.spec_from_file_location("login_app", ROOT / "functions" / "login" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.create_app(Settings.from_env(env)).test_client()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def login(settings: Settings) -> Iterator[FlaskClient]:
    yield _app(_env(settings))


def _user(settings: Settings) -> str:
    name = f"behind-{uuid.uuid4().hex[:10]}"
    Users(connect(settings), PasswordHasher(settings)).register(Credentials(name, PASSWORD))
    return name


def _login(client: FlaskClient, username: str, password: str, peer: str, forwarded: str | None) -> int:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    response = client.post(
        "/login",
        json={"username": username, "password": password},
        headers=headers,
        environ_overrides={"REMOTE_ADDR": peer},
    )
    assert response.is_json
    return response.status_code


@pytest.mark.parametrize("activator", [True, False])
def test_one_client_failing_behind_a_shared_proxy_does_not_lock_the_others(
    login: FlaskClient, settings: Settings, activator: bool
) -> None:
    # Given a client that fails for a user through the ingress until it is locked out
    chain = f"{INGRESS}, {ACTIVATOR}" if activator else INGRESS
    name = _user(settings)
    attacker = f"198.51.100.{random.randint(1, 120)}"
    tried = [_login(login, name, "wrong1234", "127.0.0.1", f"{attacker}, {chain}") for _ in range(6)]
    assert tried == [401] * 5 + [429]
    # Then the owner, behind the very same proxies, logs in
    owner = f"198.51.100.{random.randint(121, 250)}"
    assert _login(login, name, PASSWORD, "127.0.0.1", f"{owner}, {chain}") == 200


def _forged() -> str:
    return f"{random.randint(1, 223)}.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def test_a_forged_forwarded_for_does_not_dodge_the_lock(login: FlaskClient) -> None:
    attacker = f"203.0.113.{random.randint(1, 250)}"
    # Behind the ingress: the forged entries lie left of what the ingress appended.
    name = f"ghost-{uuid.uuid4().hex[:8]}"
    behind = [_login(login, name, "wrong1234", "127.0.0.1", f"{_forged()}, {attacker}, {INGRESS}") for _ in range(6)]
    assert behind == [401] * 5 + [429]
    # Straight to the pod: a peer that is no proxy is believed about nothing.
    direct = f"192.0.2.{random.randint(1, 250)}"
    straight = [_login(login, name, "wrong1234", direct, f"{_forged()}, {INGRESS}") for _ in range(6)]
    assert straight == [401] * 5 + [429]


def test_a_client_that_names_only_proxies_is_keyed_by_the_peer_never_by_what_it_wrote(login: FlaskClient) -> None:
    # A client writing trusted addresses (or no address at all) is not believed about any of them:
    # its attempts are its peer's, so choosing a new entry each time dodges nothing.
    name = f"ghost-{uuid.uuid4().hex[:8]}"
    sprayed = [
        _login(login, name, "wrong1234", "127.0.0.1", f"10.{random.randint(0, 255)}.0.{n + 1}, {INGRESS}")
        for n in range(3)
    ]
    sprayed += [_login(login, name, "wrong1234", "127.0.0.1", f"not-an-address-{n}, {INGRESS}") for n in range(3)]
    assert sprayed == [401] * 5 + [429]


def test_ipv6_clients_are_locked_by_their_64(login: FlaskClient) -> None:
    prefix = f"2001:db8:{random.randint(1, 0xFFFF):x}:{random.randint(1, 0xFFFF):x}"
    name = f"ghost-{uuid.uuid4().hex[:8]}"
    answers = [_login(login, name, "wrong1234", "127.0.0.1", f"{prefix}::{n + 1:x}, {INGRESS}") for n in range(6)]
    assert answers == [401] * 5 + [429]


def test_one_address_is_held_to_its_logins_per_minute_right_or_wrong(settings: Settings) -> None:
    # Given a login process allowing 6 logins a minute per client address
    login = _app({**_env(settings), "LOGIN_PER_ADDRESS_PER_MINUTE": "6"})
    name = _user(settings)
    client = f"198.51.100.{random.randint(1, 250)}"
    # Then the right password passes six times, and then waits, unhashed
    answers = [_login(login, name, PASSWORD, "127.0.0.1", f"{client}, {INGRESS}") for _ in range(7)]
    assert answers == [200] * 6 + [429]
    # And wrong passwords for many names from one address spend the same bucket
    sprayer = f"203.0.113.{random.randint(1, 250)}"
    sprayed = [
        _login(login, f"spray-{n}-{uuid.uuid4().hex[:6]}", "wrong1234", "127.0.0.1", f"{sprayer}, {INGRESS}")
        for n in range(7)
    ]
    assert sprayed == [401] * 6 + [429]
    # And an IPv6 client is one client across its /64
    prefix = f"2001:db8:{random.randint(1, 0xFFFF):x}:{random.randint(1, 0xFFFF):x}"
    hopping = [_login(login, name, PASSWORD, "127.0.0.1", f"{prefix}::{n + 1:x}, {INGRESS}") for n in range(7)]
    assert hopping == [200] * 6 + [429]
    # And another address is not affected
    assert _login(login, name, PASSWORD, "127.0.0.1", f"192.0.2.{random.randint(1, 250)}, {INGRESS}") == 200


@pytest.fixture(scope="module")
def two_login_processes(lanes_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A stack whose functions run two gunicorn processes each, as a scaled-out login would;
    its own data folder, so its metrics files and keys never touch the suite's stack."""
    data_dir = str(tmp_path_factory.mktemp("two-logins"))
    with running_stack({**lanes_env, "DATA_DIR": data_dir, "WEB_CONCURRENCY": "2", "THREADS": "8"}) as base_url:
        yield base_url


def test_concurrent_wrong_passwords_in_two_processes_never_exceed_the_limit(two_login_processes: str) -> None:
    # Given a user, and 24 wrong passwords for it sent at once from one address (fewer than
    # one process's LOGIN_PER_ADDRESS_PER_MINUTE, so only the lock can refuse them)
    user = Api(two_login_processes).new_user("stormed")
    name: Any = user.username  # type: ignore[attr-defined]
    attacker = Api(two_login_processes)

    def attempt(_: int) -> int:
        response = Api(two_login_processes, address=attacker.address).call(
            "POST", "/login", json={"username": name, "password": "wrong guess"}
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = Counter(pool.map(attempt, range(24)))

    # Then no more than LOGIN_MAX_FAILURES (5) passwords were tried; every other attempt was refused
    assert answers[401] <= 5, answers
    assert answers[401] + answers[429] == 24, answers
    # And the lock counts the passwords that were tried: attempts refused together may have
    # refused each other, so fewer than five may have been tried; five lock even the right one
    expected = 429 if answers[401] == 5 else 200
    assert attacker.call("POST", "/login", json={"username": name, "password": PASSWORD}).status_code == expected
    # And the owner, elsewhere, is let in all the same
    assert user.call("POST", "/login", json={"username": name, "password": PASSWORD}).status_code == 200
