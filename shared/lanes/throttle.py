"""Login throttling per username and per client address.

Failures are stored as separate documents (inserts only, so concurrent failures
are never lost to a read-modify-write race) and counted over a sliding window.
After LOGIN_MAX_FAILURES within LOGIN_WINDOW_SECONDS a key is locked for 30 s,
doubling with every further failure up to LOGIN_LOCK_MAX_SECONDS. While locked,
logins are refused without looking at the password, so even the right one waits.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database

from lanes.db import now, translate_errors
from lanes.errors import TooManyRequests
from lanes.settings import Settings

FIRST_LOCK_SECONDS = 30


class LoginThrottle:
    def __init__(self, db: Database[dict[str, Any]], settings: Settings) -> None:
        self._failures = db.login_failures
        self._settings = settings

    @staticmethod
    def keys(username_key: str, address: str | None) -> list[str]:
        keys = [f"user:{username_key}"]
        if address:
            keys.append(f"addr:{address}")
        return keys

    @translate_errors
    def check(self, keys: list[str]) -> None:
        """Raise TooManyRequests while any of the keys is locked."""
        moment = now()
        since = moment - timedelta(seconds=self._settings.login_window_seconds)
        times: dict[str, list[datetime]] = {key: [] for key in keys}
        for failure in self._failures.find({"key": {"$in": keys}, "at": {"$gt": since}}, {"key": 1, "at": 1}):
            times[failure["key"]].append(failure["at"])
        wait = max((self._lock_left(stamps, moment) for stamps in times.values()), default=0.0)
        if wait > 0:
            raise TooManyRequests(
                "Too many failed logins; try again later.", retry_after=math.ceil(wait), code="login_throttled"
            )

    @translate_errors
    def record_failure(self, keys: list[str]) -> None:
        moment = now()
        self._failures.insert_many([{"_id": uuid.uuid4().hex, "key": key, "at": moment} for key in keys])
        self._failures.delete_many({"at": {"$lt": moment - timedelta(seconds=self._settings.login_window_seconds)}})

    @translate_errors
    def record_success(self, username_key: str) -> None:
        self._failures.delete_many({"key": f"user:{username_key}"})

    def _lock_left(self, stamps: list[datetime], moment: datetime) -> float:
        excess = len(stamps) - self._settings.login_max_failures
        if excess < 0:
            return 0.0
        lock = min(self._settings.login_lock_max_seconds, FIRST_LOCK_SECONDS * 2**excess)
        return (max(stamps) + timedelta(seconds=lock) - moment).total_seconds()
