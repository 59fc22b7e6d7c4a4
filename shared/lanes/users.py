"""Users and sessions: registration, login, logout, and who a bearer token belongs to."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from lanes.db import now, translate_errors
from lanes.errors import AuthError, Conflict, TooManyRequests
from lanes.passwords import PasswordHasher
from lanes.revocations import Revocations
from lanes.throttle import LoginThrottle
from lanes.tokens import Claims, IssuedToken, TokenService
from lanes.validation import Credentials, username_key

# Failed logins are security events (ASVS 7.2.1): who was tried, from where; never the password.
security_log = logging.getLogger("lanes.security")


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
    def id_of(self, username: str) -> str | None:
        """The user's id, None when there is no such user."""
        document = self._users.find_one({"_id": username_key(username)}, {"user_id": 1})
        return None if document is None else str(document["user_id"])

    @translate_errors
    def delete(self, username: str) -> str | None:
        """Remove a user; the removed user's id, None when there was none. Their tokens
        stop working once the id is revoked, which comes first
        (`python -m lanes.admin delete-user`)."""
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
        """A token for valid credentials; AuthError otherwise, TooManyRequests while throttled.
        Each failure is logged with the username and the client address, never the password."""
        key = username_key(credentials.username)
        if self._throttle is None:
            return self._tokens.issue(self._authenticate(credentials, address).id, key)
        try:
            attempt = self._throttle.begin(key, address)
        except TooManyRequests:
            _log_failure("login refused: throttled", credentials.username, address)
            raise
        try:
            user = self._authenticate(credentials, address)
        except AuthError:
            self._throttle.record_failure()
            raise
        except Exception:
            self._throttle.release(attempt)
            raise
        self._throttle.record_success(attempt)
        return self._tokens.issue(user.id, key)

    def _authenticate(self, credentials: Credentials, address: str | None) -> User:
        try:
            return self._users.authenticate(credentials)
        except AuthError:
            _log_failure("login failed: wrong username or password", credentials.username, address)
            raise

    def current_user(self, bearer: str) -> tuple[User, Claims]:
        """Who a bearer token speaks for. No database round trip: the signature and claims
        say who, and this process's feed of revocations says whether it still may."""
        claims = self._tokens.verify(bearer)
        self._revocations.check(claims)
        return User(id=claims.user_id, username=claims.username_key), claims

    def logout(self, claims: Claims) -> None:
        self._revocations.revoke_token(claims)


def _log_failure(message: str, username: str, address: str | None) -> None:
    security_log.warning(message, extra={"username": username, "client_address": address or "unknown"})
