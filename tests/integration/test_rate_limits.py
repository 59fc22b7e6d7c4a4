"""Per-user and per-address limits: 429 with Retry-After in the error shape, refused
before any work (no database round trip, no publish, no password hash)."""

from __future__ import annotations

import importlib.util
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo.monitoring
import pytest
from flask.testing import FlaskClient

from deploy.template import ROOT
from lanes.broker import QueueNames
from lanes.db import connect
from lanes.lane.messages import partition_of
from lanes.passwords import PasswordHasher
from lanes.settings import Settings
from lanes.tokens import TokenService, ensure_local_keys
from lanes.users import Users
from lanes.validation import Credentials, username_key
from tests.support import management_api, wait_until

PASSWORD = "correct horse battery"


class Commands(pymongo.monitoring.CommandListener):
    """Every command any client of this process sends, as the database receives it."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: pymongo.monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: pymongo.monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: pymongo.monitoring.CommandFailedEvent) -> None:
        pass


COMMANDS = Commands()
pymongo.monitoring.register(COMMANDS)  # before the apps below create their clients


@pytest.fixture(scope="module")
def settings(lanes_env: dict[str, str]) -> Settings:
    private, public = ensure_local_keys(Path(lanes_env["DATA_DIR"]) / "keys")
    env = {
        **lanes_env,
        "JWT_PRIVATE_KEY_FILE": str(private),
        "JWT_PUBLIC_KEY_FILE": str(public),
        "AUTH_CACHE_SECONDS": "60",
        # Partitions of its own, which no worker of the suite's stack consumes.
        "QUEUE_PREFIX": f"rate-limits-{uuid.uuid4().hex[:8]}",
        "ENQUEUE_RATE_PER_SECOND": "0.2",
        "ENQUEUE_BURST": "3",
        "REGISTER_PER_MINUTE": "3",
        # A dear hash, so that a call that hashes shows in its duration.
        "ARGON2_MEMORY_KIB": "262144",
    }
    return Settings.from_env(env)


def _client(function: str, settings: Settings) -> FlaskClient:
    spec = importlib.util.spec_from_file_location(f"{function}_app", ROOT / "functions" / function / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.create_app(settings).test_client()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def enqueue(settings: Settings) -> Iterator[FlaskClient]:
    yield _client("enqueue", settings)


@pytest.fixture(scope="module")
def register(settings: Settings) -> Iterator[FlaskClient]:
    yield _client("register", settings)


def _token(settings: Settings) -> tuple[str, str]:
    name = f"limited-{uuid.uuid4().hex[:10]}"
    user = Users(connect(settings), PasswordHasher(Settings(argon2_memory_kib=1024, argon2_rounds=1))).register(
        Credentials(name, PASSWORD)
    )
    issued = TokenService(settings, can_sign=True).issue(user.id, username_key(name))
    return user.id, issued.access_token


def _enqueue(client: FlaskClient, token: str) -> Any:
    return client.post("/enqueue", json={"action": "echo", "data": {}}, headers={"Authorization": f"Bearer {token}"})


def test_enqueue_over_a_users_rate_gets_429_and_costs_no_round_trip(enqueue: FlaskClient, settings: Settings) -> None:
    heavy_id, heavy = _token(settings)
    _light_id, light = _token(settings)
    assert [_enqueue(enqueue, heavy).status_code for _ in range(3)] == [202] * 3  # the burst

    COMMANDS.names.clear()
    refused = _enqueue(enqueue, heavy)
    commands = list(COMMANDS.names)

    assert refused.status_code == 429
    assert refused.json == {"error": "rate_limited", "message": refused.json["message"]}
    assert 1 <= int(refused.headers["Retry-After"]) <= 5  # 0.2/s: one token in 5 s
    assert commands == []  # not even the authentication (cached) asked the database
    assert _enqueue(enqueue, light).status_code == 202  # the others keep their own rate

    # Nothing was published for the refused call: the lane's partition holds the four accepted.
    partition = QueueNames.of(settings).partition(partition_of(heavy_id, settings.lane_partitions))
    vhost = settings.rabbitmq_vhost

    def depth() -> int:
        return int(management_api("GET", f"/api/queues/{vhost}/{partition}").get("messages", -1))

    shared = partition_of(_light_id, settings.lane_partitions) == partition_of(heavy_id, settings.lane_partitions)
    expected = 3 + shared
    wait_until(lambda: depth() == expected, timeout=15, what="the partition's depth to show")
    assert depth() == expected


def test_register_answers_a_taken_name_before_hashing(register: FlaskClient) -> None:
    name = f"taken-{uuid.uuid4().hex[:10]}"
    headers = {"X-Forwarded-For": f"198.51.100.{uuid.uuid4().int % 200 + 1}"}
    started = time.perf_counter()
    assert register.post("/register", json={"username": name, "password": PASSWORD}, headers=headers).status_code == 201
    hashed = time.perf_counter() - started

    COMMANDS.names.clear()
    started = time.perf_counter()
    taken = register.post("/register", json={"username": name.upper(), "password": PASSWORD}, headers=headers)
    refused = time.perf_counter() - started

    assert taken.status_code == 409 and taken.json["error"] == "username_taken"
    assert COMMANDS.names == ["find"]  # one look by `_id`, no insert
    assert refused < hashed / 4, f"409 took {refused:.3f} s, a registration {hashed:.3f} s"


def test_register_is_throttled_per_client_address(register: FlaskClient) -> None:
    crowd = f"203.0.113.{uuid.uuid4().int % 200 + 1}"
    answers = [
        register.post(
            "/register",
            json={"username": f"flood-{uuid.uuid4().hex[:10]}", "password": "x"},  # 400s count too
            headers={"X-Forwarded-For": crowd},
        )
        for _ in range(4)
    ]
    assert [a.status_code for a in answers] == [400, 400, 400, 429]
    assert answers[-1].json["error"] == "register_throttled" and int(answers[-1].headers["Retry-After"]) >= 1
    other = register.post(
        "/register",
        json={"username": f"calm-{uuid.uuid4().hex[:10]}", "password": "x"},
        headers={"X-Forwarded-For": "192.0.2.77"},
    )
    assert other.status_code == 400  # another address is not throttled
