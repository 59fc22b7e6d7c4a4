"""Login throttling per username and per client address.

Failures are stored as separate documents (inserts only, so concurrent failures
are never lost to a read-modify-write race) and counted over a sliding window.
After LOGIN_MAX_FAILURES within LOGIN_WINDOW_SECONDS a key is locked for 30 s,
doubling with every further failure up to LOGIN_LOCK_MAX_SECONDS. While locked,
logins are refused without looking at the password, so even the right one waits.

An attempt is written down *before* it is decided (`begin`), as a failure that a
correct password takes back: each attempt then counts every attempt written before
it, so however many processes check at once, the last one admitted saw all the others
admitted, and no more than LOGIN_MAX_FAILURES passwords are ever tried per lock. A
check-then-record order would let every process check before any had recorded.
"""

from __future__ import annotations

import ipaddress
import math
import uuid
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database

from lanes.db import now, translate_errors
from lanes.errors import TooManyRequests
from lanes.proxies import parse_address
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
            keys.append(f"addr:{address_key(address)}")
        return keys

    @translate_errors
    def begin(self, keys: list[str]) -> list[str]:
        """Write this attempt down as a failure of every key, then raise TooManyRequests
        (taking it back) if any key was locked by the attempts before it; returns its ids."""
        moment = now()
        ids = [uuid.uuid4().hex for _ in keys]
        self._failures.insert_many([{"_id": i, "key": key, "at": moment} for i, key in zip(ids, keys, strict=True)])
        since = moment - timedelta(seconds=self._settings.login_window_seconds)
        times: dict[str, list[datetime]] = {key: [] for key in keys}
        query = {"key": {"$in": keys}, "at": {"$gt": since}, "_id": {"$nin": ids}}
        for failure in self._failures.find(query, {"key": 1, "at": 1}):
            times[failure["key"]].append(failure["at"])
        wait = max((self._lock_left(stamps, moment) for stamps in times.values()), default=0.0)
        if wait > 0:
            # Refused attempts are not failures: they neither count nor lengthen the lock.
            self.release(ids)
            raise TooManyRequests(
                "Too many failed logins; try again later.", retry_after=math.ceil(wait), code="login_throttled"
            )
        return ids

    @translate_errors
    def record_failure(self) -> None:
        """The attempt `begin` wrote down failed: it stays counted; old failures go."""
        cutoff = now() - timedelta(seconds=self._settings.login_window_seconds)
        self._failures.delete_many({"at": {"$lt": cutoff}})

    @translate_errors
    def release(self, ids: list[str]) -> None:
        """Take back an attempt that was no failure (refused, or the database failed)."""
        self._failures.delete_many({"_id": {"$in": ids}})

    @translate_errors
    def record_success(self, username_key: str, ids: list[str]) -> None:
        self._failures.delete_many({"$or": [{"key": f"user:{username_key}"}, {"_id": {"$in": ids}}]})

    def _lock_left(self, stamps: list[datetime], moment: datetime) -> float:
        excess = len(stamps) - self._settings.login_max_failures
        if excess < 0:
            return 0.0
        lock = min(self._settings.login_lock_max_seconds, FIRST_LOCK_SECONDS * 2**excess)
        return (max(stamps) + timedelta(seconds=lock) - moment).total_seconds()


def address_key(address: str) -> str:
    """The throttle's key for a client address: an IPv6 client by its /64, since one
    host commonly holds a whole /64 and could otherwise take a fresh address per attempt."""
    parsed = parse_address(address)
    if parsed is None:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)
