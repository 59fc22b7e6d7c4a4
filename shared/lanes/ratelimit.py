"""Per-key rate limits kept in process memory: a token bucket per user or address.

A limit must cost the call it guards no database or broker round trip, or the
limit itself would be the load. So each process keeps its own buckets: with N
processes serving a route (gunicorn workers, replicas), a key gets up to N times
the rate, and a restarted process starts with full buckets. docs/scaling.md says
what that means when scaling out.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from lanes.errors import TooManyRequests


class RateLimiter:
    """`rate` tokens per second per key, at most `burst` saved up; `rate` 0 lets all pass."""

    MAX_KEYS = 100_000  # memory bound: beyond it, full (idle) buckets are forgotten

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = max(1.0, burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Spend one token of `key`; 0 when it was there, else the seconds until one is."""
        if self._rate <= 0:
            return 0.0
        with self._lock:
            moment = self._clock()
            tokens, at = self._buckets.get(key, (self._burst, moment))
            tokens = min(self._burst, tokens + (moment - at) * self._rate)
            if tokens < 1:
                self._buckets[key] = (tokens, moment)
                return (1 - tokens) / self._rate
            if len(self._buckets) >= self.MAX_KEYS and key not in self._buckets:
                self._forget_idle(moment)
            self._buckets[key] = (tokens - 1, moment)
            return 0.0

    def check(self, key: str, message: str, code: str) -> None:
        """Spend one token of `key`, or raise TooManyRequests with the wait as Retry-After."""
        wait = self.take(key)
        if wait > 0:
            raise TooManyRequests(message, retry_after=retry_after(wait), code=code)

    def _forget_idle(self, moment: float) -> None:
        """Drop buckets that have refilled: forgetting them changes no answer."""
        full = [k for k, (tokens, at) in self._buckets.items() if tokens + (moment - at) * self._rate >= self._burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.MAX_KEYS:
            self._buckets.clear()  # every key busy at once: a brief amnesty beats unbounded memory


def retry_after(wait: float) -> int:
    """Whole seconds for a Retry-After header, at least 1."""
    return max(1, math.ceil(wait))
