"""argon2id password hashing through passlib."""

from __future__ import annotations

from passlib.hash import argon2

from lanes.settings import Settings

# Verifying against this hash when a user does not exist keeps the answer time
# of an unknown username close to that of a wrong password.
_DUMMY_PASSWORD = "lanes-dummy-password"


class PasswordHasher:
    def __init__(self, settings: Settings) -> None:
        self._hasher = argon2.using(
            type="ID",
            memory_cost=settings.argon2_memory_kib,
            rounds=settings.argon2_rounds,
            parallelism=1,
        )
        self._dummy_hash = self._hasher.hash(_DUMMY_PASSWORD)

    def hash(self, password: str) -> str:
        return str(self._hasher.hash(password))

    def verify(self, password: str, password_hash: str | None) -> bool:
        """True when password matches; with no hash, spend the same time and answer False."""
        try:
            if password_hash is None:
                self._hasher.verify(password, self._dummy_hash)
                return False
            return bool(self._hasher.verify(password, password_hash))
        except (ValueError, TypeError):
            # passlib refuses a password over 4,096 bytes before hashing: that is a wrong
            # password for every user alike, never an error that only unknown users see.
            return False
