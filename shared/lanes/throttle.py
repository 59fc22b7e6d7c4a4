"""Login throttling that an attacker cannot turn against the account's owner.

Three limits, each on what the attacker controls and no more:

* A lock on the pair (username, client address): after LOGIN_MAX_FAILURES failures
  within LOGIN_WINDOW_SECONDS that pair is refused for 30 s, doubling with every further
  failure up to LOGIN_LOCK_MAX_SECONDS; while locked, even the right password waits.
  The owner, coming from another address, is a different pair and is not locked.
* A slower limit on the username alone that delays rather than locks: beyond
  LOGIN_USERNAME_MAX_FAILURES failures from anywhere, each attempt at that username
  waits before its password is checked (0.25 s, doubling up to
  LOGIN_USERNAME_DELAY_MAX_SECONDS). Guessing from many addresses gets slower; the
  owner is answered, late at worst, and never refused.
* Per client address, a token bucket in the login function (lanes.ratelimit) spent by
  every attempt, right or wrong, before any password is hashed.

Failures are stored as separate documents (inserts only, so concurrent failures are never
lost to a read-modify-write race) and counted over a sliding window. An attempt is
written down *before* it is decided (`begin`), as a failure that a correct password takes
back: each attempt then counts every attempt written before it, so however many processes
check at once, the last one admitted saw all the others admitted, and no more than
LOGIN_MAX_FAILURES passwords are ever tried per pair and lock. A check-then-record order
would let every process check before any had recorded.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database

from lanes.db import now, translate_errors
from lanes.errors import TooManyRequests
from lanes.proxies import address_key
from lanes.settings import Settings

FIRST_LOCK_SECONDS = 30
FIRST_DELAY_SECONDS = 0.25
NO_ADDRESS = "-"  # the pair's address part when the peer has none (a Unix socket)


@dataclass(frozen=True)
class Attempt:
    """A login attempt written down as a failure: its documents, and whom it was for."""

    ids: list[str]
    pair: str
    username: str
    address: str


class LoginThrottle:
    def __init__(
        self,
        db: Database[dict[str, Any]],
        settings: Settings,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._failures = db.login_failures
        self._settings = settings
        self._sleep = sleep

    @translate_errors
    def begin(self, username_key: str, address: str | None) -> Attempt:
        """Write this attempt down as a failure of its pair and of its username; raise
        TooManyRequests (taking it back) if its pair was locked by the attempts before it;
        wait as long as the username's failures from anywhere ask. Returns the attempt."""
        moment = now()
        client = (address_key(address) if address else None) or NO_ADDRESS
        attempt = Attempt(
            ids=[uuid.uuid4().hex, uuid.uuid4().hex],
            pair=f"pair:{username_key}|{client}",
            username=f"user:{username_key}",
            address=client,
        )
        self._failures.insert_many(
            [
                {"_id": attempt.ids[0], "key": attempt.pair, "at": moment},
                {"_id": attempt.ids[1], "key": attempt.username, "addr": client, "at": moment},
            ]
        )
        since = moment - timedelta(seconds=self._settings.login_window_seconds)
        pair_times: list[datetime] = []
        username_failures = 0
        query = {"key": {"$in": [attempt.pair, attempt.username]}, "at": {"$gt": since}, "_id": {"$nin": attempt.ids}}
        for failure in self._failures.find(query, {"key": 1, "at": 1}):
            if failure["key"] == attempt.pair:
                pair_times.append(failure["at"])
            else:
                username_failures += 1
        wait = self._lock_left(pair_times, moment)
        if wait > 0:
            # Refused attempts are not failures: they neither count nor lengthen the lock.
            self.release(attempt)
            raise TooManyRequests(
                "Too many failed logins; try again later.", retry_after=math.ceil(wait), code="login_throttled"
            )
        delay = self.delay(username_failures)
        if delay > 0:
            self._sleep(delay)
        return attempt

    def delay(self, username_failures: int) -> float:
        """Seconds an attempt waits when its username failed this often within the window."""
        excess = username_failures - self._settings.login_username_max_failures
        if excess < 0:
            return 0.0
        return float(min(self._settings.login_username_delay_max_seconds, FIRST_DELAY_SECONDS * 2 ** min(excess, 32)))

    @translate_errors
    def record_failure(self) -> None:
        """The attempt `begin` wrote down failed: it stays counted; old failures go."""
        cutoff = now() - timedelta(seconds=self._settings.login_window_seconds)
        self._failures.delete_many({"at": {"$lt": cutoff}})

    @translate_errors
    def release(self, attempt: Attempt) -> None:
        """Take back an attempt that was no failure (refused, or the database failed)."""
        self._failures.delete_many({"_id": {"$in": attempt.ids}})

    @translate_errors
    def record_success(self, attempt: Attempt) -> None:
        """The right password: the pair's failures go, and so do the username's failures
        from this address (the owner's own typos); others' failures still count."""
        self._failures.delete_many(
            {
                "$or": [
                    {"key": attempt.pair},
                    {"key": attempt.username, "addr": attempt.address},
                    {"_id": {"$in": attempt.ids}},
                ]
            }
        )

    def _lock_left(self, stamps: list[datetime], moment: datetime) -> float:
        excess = len(stamps) - self._settings.login_max_failures
        if excess < 0:
            return 0.0
        lock = min(self._settings.login_lock_max_seconds, FIRST_LOCK_SECONDS * 2 ** min(excess, 32))
        return (max(stamps) + timedelta(seconds=lock) - moment).total_seconds()
