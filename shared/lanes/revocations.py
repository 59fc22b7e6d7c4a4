"""Revoked tokens and deleted users, as each process learns of them: a feed, not a lookup.

Asking the database on every call whether a token was revoked and its user still exists
cost two finds per request, at enqueue and status alike. Instead every revocation (a
logout's token id, or a deleted user's id) is written once under a time-ordered `_id`,
and each process reads what is new at most every AUTH_CACHE_SECONDS: one find by `_id`
range per process per interval, whatever the traffic, and a request pays a set lookup.

The bound is the one the per-token cache had: a revocation written through another
process takes effect here within AUTH_CACHE_SECONDS (this process's next read); the
process that wrote it knows at once. A process that starts reads back one token
lifetime, every revocation whose token may still be valid.

An `_id` carries its writer's clock. Each read starts SKEW_SECONDS before the previous
read started, so a writer whose clock lags ours by less than that is never missed; what
is read twice is simply known twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database

from lanes.db import time_ordered_id, translate_errors
from lanes.errors import AuthError
from lanes.settings import Settings
from lanes.tokens import LEEWAY_SECONDS, Claims  # a revocation matters as long as its token's `exp` plus this

SKEW_SECONDS = 30.0


class Revocations:
    """This process's view of the `revocations` collection, read as a feed."""

    def __init__(
        self,
        db: Database[dict[str, Any]],
        refresh_seconds: float,
        token_lifetime_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._collection = db.revocations
        self._refresh = refresh_seconds
        self._lifetime = token_lifetime_seconds
        self._clock = clock
        self._tokens: dict[str, float] = {}  # token id -> until when it matters
        self._users: dict[str, float] = {}  # user id -> until when it matters
        self._read_at: float | None = None
        self._reading = threading.Lock()

    @classmethod
    def from_settings(cls, db: Database[dict[str, Any]], settings: Settings) -> Revocations:
        return cls(db, settings.auth_cache_seconds, settings.jwt_expires_seconds)

    def check(self, claims: Claims) -> None:
        """AuthError when the token or its user was revoked (as far as this process knows,
        at most AUTH_CACHE_SECONDS late)."""
        self._catch_up()
        if claims.jti in self._tokens:
            raise AuthError("The token has been revoked.", code="token_revoked")
        if claims.user_id in self._users:
            raise AuthError("The token's user no longer exists.", code="invalid_token")

    @translate_errors
    def revoke_token(self, claims: Claims) -> None:
        self._write("token", claims.jti, float(claims.expires_at))
        self._tokens[claims.jti] = claims.expires_at + LEEWAY_SECONDS

    @translate_errors
    def revoke_user(self, user_id: str) -> None:
        """Every token of this user, issued until now (a user deleted, perhaps re-registered
        under the same name with a new id)."""
        until = self._clock() + self._lifetime
        self._write("user", user_id, until)
        self._users[user_id] = until + LEEWAY_SECONDS

    def _write(self, kind: str, subject: str, until: float) -> None:
        entry = {"_id": time_ordered_id(), "kind": kind, "subject": subject}
        self._collection.insert_one({**entry, "expires_at": datetime.fromtimestamp(until, UTC)})

    def _catch_up(self) -> None:
        if self._read_at is not None and self._clock() - self._read_at < self._refresh:
            return
        with self._reading:  # one read at a time; the others wait for it and use what it read
            started = self._clock()
            if self._read_at is not None and started - self._read_at < self._refresh:
                return
            since = started - self._lifetime - LEEWAY_SECONDS if self._read_at is None else self._read_at - SKEW_SECONDS
            self._read(since, started)
            self._read_at = started

    @translate_errors
    def _read(self, since: float, moment: float) -> None:
        # Filtered by `_id` alone: the one filter FerretDB answers through its index.
        for entry in self._collection.find({"_id": {"$gte": time_ordered_id(since, floor=True)}}):
            until = _seconds(entry.get("expires_at")) + LEEWAY_SECONDS
            known = self._tokens if entry.get("kind") == "token" else self._users
            known[str(entry.get("subject"))] = until
        for known in (self._tokens, self._users):
            for subject in [s for s, until in known.items() if until < moment]:
                del known[subject]


def _seconds(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else 0.0
