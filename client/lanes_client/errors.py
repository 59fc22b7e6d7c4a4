"""The client's one error tree: every HTTP error answer of Lanes becomes a typed exception.

The class follows the HTTP status; the more precise classes follow the API's machine
code (`error` in the body), so `except LaneFull` and `except TooManyRequests` both work.
"""

from __future__ import annotations

from typing import Any

import httpx


class LanesError(Exception):
    """Base of every error this package raises."""


class ConnectionFailed(LanesError):
    """Lanes could not be reached, or the connection broke before an answer came."""


class ApiError(LanesError):
    """Lanes answered with an error: `status`, `code` and `message` are the API's own."""

    status = 0

    def __init__(self, message: str, *, status: int = 0, code: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status or type(self).status
        self.code = code
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class BadRequest(ApiError):
    status = 400


class UnknownAction(BadRequest):
    pass


class Unauthorized(ApiError):
    status = 401


class InvalidCredentials(Unauthorized):
    pass


class TokenExpired(Unauthorized):
    """The token is past its `exp`: log in again."""


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class UsernameTaken(Conflict):
    pass


class NotCancellable(Conflict):
    pass


class IdempotencyKeyReused(Conflict):
    pass


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class TooManyRequests(ApiError):
    """429: `retry_after` holds the server's hint in seconds."""

    status = 429


class LaneFull(TooManyRequests):
    pass


class RateLimited(TooManyRequests):
    pass


class LoginThrottled(TooManyRequests):
    pass


class ServiceUnavailable(ApiError):
    """503: the broker or the database is down; nothing was accepted."""

    status = 503


class ServerError(ApiError):
    """Any other 5xx."""

    status = 500


class WaitTimeout(LanesError, TimeoutError):
    """`Request.wait` ran out of time; the request goes on in its lane."""

    def __init__(self, request_id: str, status: str, timeout: float) -> None:
        super().__init__(f"request {request_id} is still {status} after {timeout:g}s")
        self.request_id = request_id
        self.status = status


class RequestFailed(LanesError):
    """The request ended `failed`: `record` is its last state, `error` the handler's message."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.error = record.get("error")
        request_id, attempts = record.get("request_id"), record.get("attempts")
        super().__init__(f"request {request_id} failed after {attempts} attempts: {self.error}")


class RequestCancelled(LanesError):
    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        super().__init__(f"request {record.get('request_id')} was cancelled")


BY_CODE: dict[str, type[ApiError]] = {
    "unknown_action": UnknownAction,
    "invalid_credentials": InvalidCredentials,
    "token_expired": TokenExpired,
    "username_taken": UsernameTaken,
    "not_cancellable": NotCancellable,
    "idempotency_key_reused": IdempotencyKeyReused,
    "lane_full": LaneFull,
    "rate_limited": RateLimited,
    "login_throttled": LoginThrottled,
}

BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: TooManyRequests,
    503: ServiceUnavailable,
}


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (the delta form Lanes sends), or None."""
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> ApiError:
    """The typed error for an error answer, whatever its body holds."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("error") or "")
    message = str(body.get("message") or response.reason_phrase or "error")
    status = response.status_code
    fallback = BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    cls = BY_CODE.get(code, fallback)
    if not issubclass(cls, fallback):
        cls = fallback
    return cls(message, status=status, code=code, retry_after=retry_after(response))
