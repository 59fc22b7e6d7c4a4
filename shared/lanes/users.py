"""Users and sessions: registration, login, logout, and who a bearer token belongs to."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from lanes.db import now, translate_errors
from lanes.errors import AuthError, Conflict
from lanes.passwords import PasswordHasher
from lanes.revocations import Revocations
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
    def delete(self, username: str) -> str | None:
        """Remove a user; the removed user's id, None when there was none. Their tokens
        stop working once the id is revoked too (`python -m lanes.admin delete-user`)."""
        document = self._users.find_one_and_delete({"_id": username_key(username)})
        return None if document is None else str(document["user_id"])


class Sessions:
    """Login and logout: credentials in, a signed token out; a token in, revoked."""

    def __init__(
        self,
        users: Users,
        tokens: TokenService,
        revocations: Revocations,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self._users = users
        self._tokens = tokens
        self._revocations = revocations
        self._throttle = throttle

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
            self._throttle.record_failure()
            raise
        except Exception:
            self._throttle.release(attempt)
            raise
        self._throttle.record_success(key, attempt)
        return self._tokens.issue(user.id, key)

    def current_user(self, bearer: str) -> tuple[User, Claims]:
        """Who a bearer token speaks for. No database round trip: the signature and claims
        say who, and this process's feed of revocations says whether it still may."""
        claims = self._tokens.verify(bearer)
        self._revocations.check(claims)
        return User(id=claims.user_id, username=claims.username_key), claims

    def logout(self, claims: Claims) -> None:
        self._revocations.revoke_token(claims)
