"""When a call may be sent again, and after how long: one policy for the sync and async clients."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from lanes_client.errors import ApiError, ConnectionFailed, LanesError, LoginThrottled, error_from_response

Outcome = httpx.Response | tuple[LanesError, float | None]
"""A response to return, or the error with the delay before the next try (None: raise it)."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5
    max_retry_after: float = 60.0

    def after_transport_error(self, error: httpx.TransportError, what: str, resend: bool, attempt: int) -> Outcome:
        unsent = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
        failed = ConnectionFailed(f"{what}: {error!r}")
        may_retry = attempt < self.retries and (unsent or resend)
        return failed, (backoff(attempt) if may_retry else None)

    def after_answer(self, response: httpx.Response, resend: bool, attempt: int) -> Outcome:
        if response.status_code < 400:
            return response
        error = error_from_response(response)
        return error, self._delay(error, resend, attempt)

    def _delay(self, error: ApiError, resend: bool, attempt: int) -> float | None:
        if attempt >= self.retries or isinstance(error, LoginThrottled):
            return None
        if error.status in (429, 503) or (resend and error.status in (502, 504)):
            if error.retry_after is None:
                return backoff(attempt)
            return error.retry_after if error.retry_after <= self.max_retry_after else None
        return None


def resends(method: str, resend: bool | None) -> bool:
    """Whether a call may be repeated after it may have reached the server (default: reads and cancels)."""
    return method in ("GET", "HEAD", "DELETE") if resend is None else resend


def backoff(attempt: int) -> float:
    """0.2 s, 0.4 s, 0.8 s ... up to 5 s, with jitter so many clients do not retry in step."""
    return float(min(5.0, 0.2 * 2**attempt) * random.uniform(0.75, 1.25))
