"""Revocations as a feed (lanes.revocations), against the real database: what a process
learns, how late, and what it costs per request."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pymongo.monitoring
import pytest
from pymongo import MongoClient

from lanes import revocation_push
from lanes.db import time_ordered_id
from lanes.errors import AuthError
from lanes.revocations import Revocations
from lanes.settings import Settings
from lanes.tokens import Claims

LIFETIME = 3600.0


class Finds(pymongo.monitoring.CommandListener):
    def __init__(self) -> None:
        self.count = 0

    def started(self, event: pymongo.monitoring.CommandStartedEvent) -> None:
        self.count += event.command_name == "find"

    def succeeded(self, event: pymongo.monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: pymongo.monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture(scope="module")
def finds() -> Finds:
    return Finds()


@pytest.fixture(scope="module")
def db(lanes_env: dict[str, str], finds: Finds) -> Any:
    settings = Settings.from_env(lanes_env)
    client: MongoClient[dict[str, Any]] = MongoClient(settings.mongo_uri, tz_aware=True, event_listeners=[finds])
    return client.get_database(settings.database_name)


def _claims(user_id: str | None = None) -> Claims:
    return Claims(
        user_id=user_id or uuid.uuid4().hex,
        username_key="ada",
        jti=uuid.uuid4().hex,
        expires_at=int(time.time() + LIFETIME),
    )


def _in(seconds: float) -> datetime:
    return datetime.fromtimestamp(time.time() + seconds, UTC)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_logout_elsewhere_is_refused_here_after_the_refresh_interval(db: Any) -> None:
    clock, claims = Clock(), _claims()
    here = Revocations(db, 5.0, LIFETIME, clock=clock)
    here.check(claims)  # known good, and read
    Revocations(db, 5.0, LIFETIME).revoke_token(claims)  # another process
    clock.now += 4.9
    here.check(claims)  # within AUTH_CACHE_SECONDS this process has not looked yet
    clock.now += 0.2
    with pytest.raises(AuthError) as refused:
        here.check(claims)
    assert refused.value.code == "token_revoked"


def test_the_process_that_revokes_refuses_at_once_and_a_new_process_knows_from_its_start(db: Any) -> None:
    claims = _claims()
    writer = Revocations(db, 60.0, LIFETIME)
    writer.check(claims)
    writer.revoke_token(claims)
    for process in (writer, Revocations(db, 60.0, LIFETIME)):
        with pytest.raises(AuthError):
            process.check(claims)


def test_a_deleted_user_loses_every_token_and_nobody_else_does(db: Any) -> None:
    user_id = uuid.uuid4().hex
    first, second, someone_else = _claims(user_id), _claims(user_id), _claims()
    Revocations(db, 1.0, LIFETIME).revoke_user(user_id)
    reader = Revocations(db, 1.0, LIFETIME)
    for claims in (first, second):
        with pytest.raises(AuthError) as refused:
            reader.check(claims)
        assert refused.value.code == "invalid_token"
    reader.check(someone_else)


def test_a_writer_whose_clock_lags_is_still_seen(db: Any) -> None:
    clock, claims = Clock(), _claims()
    reader = Revocations(db, 1.0, LIFETIME, clock=clock)
    reader.check(claims)
    # Written after the reader's first look, under an id 20 s in the past (a lagging clock).
    lagging = {"_id": time_ordered_id(time.time() - 20), "kind": "token", "subject": claims.jti}
    db.revocations.insert_one({**lagging, "expires_at": _in(LIFETIME)})
    clock.now += 1.0
    with pytest.raises(AuthError):
        reader.check(claims)


def test_requests_cost_one_read_per_interval_whatever_their_number(db: Any, finds: Finds) -> None:
    clock = Clock()
    reader = Revocations(db, 5.0, LIFETIME, clock=clock)
    tokens = [_claims() for _ in range(50)]
    before = finds.count
    for _ in range(4):
        for claims in tokens:
            reader.check(claims)
        clock.now += 5.0
    assert finds.count - before == 4  # 200 checks, one read per interval


def test_a_pushed_revocation_is_refused_elsewhere_without_a_read(lanes_env: dict[str, str], db: Any) -> None:
    settings = Settings.from_env(lanes_env)
    clock, claims = Clock(), _claims()
    here = Revocations(db, 3600.0, LIFETIME, clock=clock)  # its own poll never comes in this test
    connected = threading.Event()
    original = here.catch_up
    here.catch_up = lambda: (original(), connected.set())  # type: ignore[method-assign]
    revocation_push.listen(here, settings)
    assert connected.wait(10)
    here.check(claims)
    publish = revocation_push.publisher(settings)
    Revocations.from_settings(db, settings, publish=publish).revoke_token(claims)  # another process
    deadline = time.monotonic() + 1.0
    while True:
        try:
            here.check(claims)
        except AuthError as refused:
            assert refused.code == "token_revoked"
            break
        assert time.monotonic() < deadline, "not refused within 1 s"
        time.sleep(0.02)


def test_revocations_carry_the_database_servers_time(db: Any) -> None:
    # A writer whose clock runs 10 minutes behind still writes under the server's time.
    claims = _claims()
    Revocations(db, 1.0, LIFETIME, clock=lambda: time.time() - 600).revoke_token(claims)
    written = db.revocations.find_one({"subject": claims.jti})
    stamped = int(written["_id"][:12], 16) / 1000
    assert abs(stamped - time.time()) < 5


def test_delete_user_revokes_before_it_deletes(
    lanes_env: dict[str, str], db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lanes import admin
    from lanes.errors import DatabaseError
    from lanes.validation import username_key

    settings = Settings.from_env(lanes_env)
    name, user_id = f"gone-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    db.users.insert_one({"_id": username_key(name), "user_id": user_id, "username": name})

    def fails(_self: Revocations, _user_id: str) -> None:
        raise DatabaseError("the database went away")

    # A revocation that cannot be written leaves the user in place, to be deleted again.
    with monkeypatch.context() as patched:
        patched.setattr(Revocations, "revoke_user", fails)
        with pytest.raises(DatabaseError):
            admin.delete_user(settings, name)
    assert db.users.find_one({"_id": username_key(name)}) is not None
    assert admin.delete_user(settings, name) == {"deleted": name}
    assert db.users.find_one({"_id": username_key(name)}) is None
    with pytest.raises(AuthError):
        Revocations(db, 1.0, LIFETIME).check(_claims(user_id))


def test_revocations_heard_while_a_read_prunes_never_break_it(db: Any) -> None:
    # A read walks the known revocations to drop the expired ones while the listener adds
    # what it hears: both change them under one lock, so neither sees the other half done.
    clock = Clock()
    reader = Revocations(db, 1.0, LIFETIME, clock=clock)
    reader.check(_claims())
    hearing = threading.Event()
    errors: list[BaseException] = []

    def hear() -> None:
        n = 0
        while not hearing.is_set():
            n += 1
            reader.apply(f'{{"kind": "token", "subject": "t{n}", "until": {time.time() - 60}}}'.encode())

    listener = threading.Thread(target=hear)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns often, as under load
    listener.start()
    try:
        for _ in range(10):
            for n in range(20_000):
                reader.apply(f'{{"kind": "user", "subject": "u{n}", "until": {time.time() - 60}}}'.encode())
            clock.now += 1.0
            try:
                reader.catch_up()  # prunes everything expired
            except RuntimeError as error:  # "dictionary changed size during iteration"
                errors.append(error)
    finally:
        hearing.set()
        listener.join()
        sys.setswitchinterval(interval)
    assert errors == []
