"""Users and sessions: registration, login, logout, and who a bearer token belongs to."""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from lanes.db import now, translate_errors
from lanes.errors import AuthError, Conflict
from lanes.passwords import PasswordHasher
from lanes.throttle import LoginThrottle
from lanes.tokens import Claims, IssuedToken, TokenService
from lanes.validation import Credentials, username_key


@dataclass(frozen=True)
class User:
    id: str
    username: str


class Users:
    """The `users` collection is keyed by the lower-cased username, so the unique `_id`
    makes names case-insensitively unique without a find-then-insert race."""

    def __init__(self, db: Database[dict[str, Any]], hasher: PasswordHasher | None = None) -> None:
        self._users = db.users
        self._revoked = db.revoked_tokens
        self._hasher = hasher

    @property
    def hasher(self) -> PasswordHasher:
        if self._hasher is None:
            raise RuntimeError("this function was built without a password hasher")
        return self._hasher

    @translate_errors
    def register(self, credentials: Credentials) -> User:
        """A new user; Conflict when the name is taken. A taken name is answered before
        the password is hashed (19 MiB of argon2 per call), so a flood of taken names
        costs a find by `_id` each; the unique `_id` still settles two racing for one name."""
        key = username_key(credentials.username)
        if self._users.find_one({"_id": key}, {"_id": 1}) is not None:
            raise Conflict("That username is taken.", code="username_taken")
        user = User(id=uuid.uuid4().hex, username=credentials.username)
        document = {
            "_id": key,
            "user_id": user.id,
            "username": user.username,
            "password_hash": self.hasher.hash(credentials.password),
            "created_at": now(),
        }
        try:
            self._users.insert_one(document)
        except DuplicateKeyError:
            raise Conflict("That username is taken.", code="username_taken") from None
        return user

    @translate_errors
    def authenticate(self, credentials: Credentials) -> User:
        """The user these credentials belong to; one answer for unknown user and wrong password."""
        document = self._users.find_one({"_id": username_key(credentials.username)})
        password_hash = document["password_hash"] if document else None
        if not self.hasher.verify(credentials.password, password_hash) or document is None:
            raise AuthError("Wrong username or password.", code="invalid_credentials")
        return User(id=document["user_id"], username=document["username"])

    @translate_errors
    def resolve(self, claims: Claims) -> User:
        """The live user behind verified claims: not revoked, not deleted, not replaced."""
        if self._revoked.find_one({"_id": claims.jti}, {"_id": 1}) is not None:
            raise AuthError("The token has been revoked.", code="token_revoked")
        document = self._users.find_one({"_id": claims.username_key}, {"user_id": 1, "username": 1})
        if document is None or document["user_id"] != claims.user_id:
            raise AuthError("The token's user no longer exists.", code="invalid_token")
        return User(id=document["user_id"], username=document["username"])

    @translate_errors
    def revoke(self, claims: Claims) -> None:
        expires_at = datetime.fromtimestamp(claims.expires_at, UTC)
        with contextlib.suppress(DuplicateKeyError):
            self._revoked.insert_one({"_id": claims.jti, "expires_at": expires_at})

    @translate_errors
    def delete(self, username: str) -> bool:
        """Remove a user (operators' tool); their tokens stop working at once."""
        return self._users.delete_one({"_id": username_key(username)}).deleted_count == 1

    @translate_errors
    def purge_expired_revocations(self) -> int:
        """Drop denylist entries whose tokens have expired anyway."""
        return self._revoked.delete_many({"expires_at": {"$lt": now()}}).deleted_count


class RecentUsers:
    """Who verified tokens belong to, remembered for a few seconds per token id.

    Resolving a token costs two database reads (revocation, user); an enqueue should not
    pay them on every call. The price is the bound of AUTH_CACHE_SECONDS: a token revoked
    (logout) or whose user was deleted through another process keeps working that long
    in a process that saw it just before. 0 turns the cache off."""

    MAX_ENTRIES = 50_000

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._entries: dict[str, tuple[float, User]] = {}

    def get(self, jti: str) -> User | None:
        entry = self._entries.get(jti)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    def put(self, jti: str, user: User) -> None:
        if self._seconds <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            now_ = self._clock()
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now_}
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
        # Each entry lives a random part of the bound, so that entries made together are not
        # all looked up again together (a burst of reads that stalls the requests behind it).
        self._entries[jti] = (self._clock() + self._seconds * random.uniform(0.5, 1.0), user)

    def forget(self, jti: str) -> None:
        self._entries.pop(jti, None)


class Sessions:
    """Login and logout: credentials in, a signed token out; a token in, revoked."""

    def __init__(
        self,
        users: Users,
        tokens: TokenService,
        throttle: LoginThrottle | None = None,
        recent: RecentUsers | None = None,
    ) -> None:
        self._users = users
        self._tokens = tokens
        self._throttle = throttle
        self._recent = recent or RecentUsers(0)

    def login(self, credentials: Credentials, address: str | None = None) -> IssuedToken:
        """A token for valid credentials; AuthError otherwise, TooManyRequests while throttled."""
        key = username_key(credentials.username)
        keys = LoginThrottle.keys(key, address)
        if self._throttle is None:
            return self._tokens.issue(self._users.authenticate(credentials).id, key)
        attempt = self._throttle.begin(keys)
        try:
            user = self._users.authenticate(credentials)
        except AuthError:
            self._throttle.record_failure(attempt)
            raise
        except Exception:
            self._throttle.release(attempt)
            raise
        self._throttle.record_success(key, attempt)
        return self._tokens.issue(user.id, key)

    def current_user(self, bearer: str) -> tuple[User, Claims]:
        claims = self._tokens.verify(bearer)
        user = self._recent.get(claims.jti)
        if user is None:
            user = self._users.resolve(claims)
            self._recent.put(claims.jti, user)
        return user, claims

    def logout(self, claims: Claims) -> None:
        self._users.revoke(claims)
        self._recent.forget(claims.jti)
