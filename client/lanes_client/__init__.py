"""Client for Lanes: every user a FIFO lane of requests.

from lanes_client import Client
with Client("http://127.0.0.1:8080") as lanes:
    lanes.login("ada", "a long password")
    result = lanes.submit("echo", {"x": 1}).wait(timeout=30)
"""

from lanes_client.aio import AsyncClient, AsyncRequest
from lanes_client.client import STATUSES, TERMINAL, Client, Request
from lanes_client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    IdempotencyKeyReused,
    InvalidCredentials,
    LaneFull,
    LanesError,
    LoginThrottled,
    NotCancellable,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestCancelled,
    RequestFailed,
    ServerError,
    ServiceUnavailable,
    TokenExpired,
    TooManyRequests,
    Unauthorized,
    UnknownAction,
    UnsupportedMediaType,
    UsernameTaken,
    WaitTimeout,
)

__all__ = [
    "STATUSES",
    "TERMINAL",
    "ApiError",
    "AsyncClient",
    "AsyncRequest",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "IdempotencyKeyReused",
    "InvalidCredentials",
    "LaneFull",
    "LanesError",
    "LoginThrottled",
    "NotCancellable",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "Request",
    "RequestCancelled",
    "RequestFailed",
    "ServerError",
    "ServiceUnavailable",
    "TokenExpired",
    "TooManyRequests",
    "Unauthorized",
    "UnknownAction",
    "UnsupportedMediaType",
    "UsernameTaken",
    "WaitTimeout",
]

__version__ = "0.1.0"
