"""Revoked tokens and deleted users, as each process learns of them: pushed, not looked up.

Asking the database on every call whether a token was revoked and its user still exists
cost two finds per request, at enqueue and status alike. Instead every revocation (a
logout's token id, or a deleted user's id) is written once under a time-ordered `_id`,
and then published on the broker's fanout exchange `<prefix>.revocations`. Each process
that checks tokens listens there through a private queue, in a background thread (a
greenlet under gevent), and applies what it hears to a set in memory: a revocation
written anywhere is refused everywhere as soon as the message arrives (milliseconds),
and a request pays a set lookup, never a round trip.

The message is a hint; the collection is the fact. A process that was not listening (its
broker connection lost, or the publish failed) reads what is new since its last read
each time its listener (re)connects, and, as a backstop, at most every AUTH_CACHE_SECONDS
anyway: one find by `_id` range per process per interval, whatever the traffic. A process
that starts reads back one token lifetime, every revocation whose token may still be valid.

An `_id` carries the database server's clock (its `hello` answer's `localTime`), not the
writer's: an operator's laptop that runs behind writes revocations that are still seen.
Each read starts SKEW_SECONDS before the previous read started, by the reader's clock,
so a reader whose clock differs from the database's by less than that misses nothing;
what is read twice is simply known twice.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database

from lanes.db import time_ordered_id, translate_errors
from lanes.errors import AuthError, BrokerError, DatabaseError
from lanes.settings import Settings
from lanes.tokens import LEEWAY_SECONDS, Claims  # a revocation matters as long as its token's `exp` plus this

SKEW_SECONDS = 30.0

log = logging.getLogger(__name__)


def exchange_name(settings: Settings) -> str:
    return f"{settings.queue_prefix}.revocations"


class Revocations:
    """This process's view of the `revocations` collection: pushed, caught up, polled."""

    def __init__(
        self,
        db: Database[dict[str, Any]],
        refresh_seconds: float,
        token_lifetime_seconds: float,
        clock: Callable[[], float] = time.time,
        publish: Callable[[bytes], None] | None = None,
    ) -> None:
        self._collection = db.revocations
        self._db = db
        self._refresh = refresh_seconds
        self._lifetime = token_lifetime_seconds
        self._clock = clock
        self._publish = publish
        self._tokens: dict[str, float] = {}  # token id -> until when it matters
        self._users: dict[str, float] = {}  # user id -> until when it matters
        self._read_at: float | None = None
        self._stale = False  # a catch-up failed: the next check reads, whatever the interval
        self._reading = threading.Lock()  # one read of the collection at a time
        self._changing = threading.Lock()  # every change to the two dictionaries

    @classmethod
    def from_settings(
        cls, db: Database[dict[str, Any]], settings: Settings, *, publish: Callable[[bytes], None] | None = None
    ) -> Revocations:
        """`publish`: how what this process revokes is pushed to the others
        (lanes.revocation_push), if it revokes at all."""
        return cls(db, settings.auth_cache_seconds, settings.jwt_expires_seconds, publish=publish)

    def check(self, claims: Claims) -> None:
        """AuthError when the token or its user was revoked, as far as this process knows."""
        self._catch_up()
        if claims.jti in self._tokens:
            raise AuthError("The token has been revoked.", code="token_revoked")
        if claims.user_id in self._users:
            raise AuthError("The token's user no longer exists.", code="invalid_token")

    def revoke_token(self, claims: Claims) -> None:
        self._revoke("token", claims.jti, float(claims.expires_at))

    def revoke_user(self, user_id: str) -> None:
        """Every token of this user, issued until now (a user deleted, perhaps re-registered
        under the same name with a new id)."""
        self._revoke("user", user_id, None)

    def apply(self, body: bytes) -> None:
        """A published revocation; anything else is ignored (the collection is the fact)."""
        try:
            entry = json.loads(body)
            kind, subject, until = entry["kind"], str(entry["subject"]), float(entry["until"])
        except (ValueError, TypeError, KeyError):
            return
        self._know(kind, subject, until + LEEWAY_SECONDS)

    def catch_up(self) -> None:
        """Read what is new since the last read, now (a listener that just connected)."""
        try:
            self._catch_up(force=True)
        except DatabaseError:
            self._stale = True

    @translate_errors
    def _revoke(self, kind: str, subject: str, until: float | None) -> None:
        stamp = self._server_time()
        until = stamp + self._lifetime if until is None else until
        entry = {"_id": time_ordered_id(stamp), "kind": kind, "subject": subject}
        self._collection.insert_one({**entry, "expires_at": datetime.fromtimestamp(until, UTC)})
        self._know(kind, subject, until + LEEWAY_SECONDS)
        if self._publish is not None:
            try:
                self._publish(json.dumps({"kind": kind, "subject": subject, "until": until}).encode())
            except BrokerError as error:  # the others read it from the collection
                log.warning("revocation not pushed (read from the collection instead): %s", error)

    def _server_time(self) -> float:
        moment = self._db.client.admin.command("hello").get("localTime")
        if not isinstance(moment, datetime):
            return self._clock()
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()

    def _know(self, kind: str, subject: str, until: float) -> None:
        with self._changing:
            (self._tokens if kind == "token" else self._users)[subject] = until

    def _catch_up(self, *, force: bool = False) -> None:
        force = force or self._stale
        if not force and self._read_at is not None and self._clock() - self._read_at < self._refresh:
            return
        with self._reading:  # one read at a time; the others wait for it and use what it read
            started = self._clock()
            if not force and self._read_at is not None and started - self._read_at < self._refresh:
                return
            since = started - self._lifetime - LEEWAY_SECONDS if self._read_at is None else self._read_at - SKEW_SECONDS
            self._read(since, started)
            self._read_at, self._stale = started, False

    @translate_errors
    def _read(self, since: float, moment: float) -> None:
        # Filtered by `_id` alone: the one filter FerretDB answers through its index.
        entries = list(self._collection.find({"_id": {"$gte": time_ordered_id(since, floor=True)}}))
        with self._changing:
            for entry in entries:
                known = self._tokens if entry.get("kind") == "token" else self._users
                known[str(entry.get("subject"))] = _seconds(entry.get("expires_at")) + LEEWAY_SECONDS
            for known in (self._tokens, self._users):
                for subject in [s for s, until in known.items() if until < moment]:
                    del known[subject]


def _seconds(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else 0.0
