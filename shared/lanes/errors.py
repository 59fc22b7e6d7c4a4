"""The one error tree. Each error knows its HTTP status; `lanes.web` maps it in one place."""

from __future__ import annotations


class LanesError(Exception):
    """Base of every error Lanes raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        return {}


class ConfigError(LanesError):
    """A setting cannot work; raised at start-up, never while serving."""

    code = "config_error"


class ValidationError(LanesError):
    status = 400
    code = "invalid_request"


class AuthError(LanesError):
    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="lanes"'}


class NotFound(LanesError):
    status = 404
    code = "not_found"


class Conflict(LanesError):
    status = 409
    code = "conflict"


class PayloadTooLarge(LanesError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(LanesError):
    status = 415
    code = "unsupported_media_type"


class _RetryLater(LanesError):
    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TooManyRequests(_RetryLater):
    status = 429
    code = "too_many_requests"


class Unavailable(_RetryLater):
    """The broker or the database cannot be reached; nothing was accepted."""

    status = 503
    code = "service_unavailable"


class BrokerError(Exception):
    """RabbitMQ failed; pika's exceptions are translated into this at the boundary."""


class DatabaseError(Exception):
    """MongoDB failed; pymongo's connection errors are translated into this at the boundary."""


def retry_delay(failures: int) -> float:
    """Seconds to wait before trying again after `failures` failures in a row: doubling from
    0.5 s, at most 10 s, so an outage is not hammered and a short one costs little."""
    return min(10.0, 0.25 * 2.0 ** min(failures, 6))
