"""What every HTTP function shares: the error shape, strict JSON bodies, bearer auth, probes."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from lanes import correlation, validation
from lanes.errors import (
    AuthError,
    BrokerError,
    DatabaseError,
    LanesError,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
    ValidationError,
)
from lanes.httpmetrics import instrument
from lanes.proxies import TrustedProxies
from lanes.settings import Settings
from lanes.tokens import Claims
from lanes.users import Sessions, User

log = logging.getLogger("lanes.http")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def create_base_app(name: str, settings: Settings) -> Flask:
    """A Flask app with Lanes' error mapping, body limit and request logging."""
    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["lanes.settings"] = settings
    _register_error_handlers(app, settings)
    app.before_request(_start_timer)
    app.before_request(correlation.take)
    app.after_request(_log_request)
    app.after_request(correlation.echo)
    instrument(app, name, settings)
    return app


def _register_error_handlers(app: Flask, settings: Settings) -> None:
    @app.errorhandler(LanesError)
    def lanes_error(error: LanesError) -> Response:
        return error_response(error.status, error.code, error.message, error.headers())

    @app.errorhandler(DatabaseError)
    @app.errorhandler(BrokerError)
    def outage(error: Exception) -> Response:
        log.warning("dependency unavailable: %s", error)
        unavailable = Unavailable(
            "A backing service is unavailable; try again.", retry_after=settings.retry_after_seconds
        )
        return error_response(503, unavailable.code, unavailable.message, unavailable.headers())

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 413:
            message = f"The body is larger than {settings.max_body_bytes} bytes."
        else:
            message = error.description or error.name
        code = _HTTP_CODES.get(status, "http_error")
        return error_response(status, code, message)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.error("unexpected error", exc_info=error)
        return error_response(500, "internal_error", "Something went wrong on our side.")


def _start_timer() -> None:
    g.started = time.perf_counter()


def _log_request(response: Response) -> Response:
    if request.path not in ("/healthz", "/readyz", "/metrics"):
        extra: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2),
        }
        if "user_id" in g:
            extra["user_id"] = g.user_id
        if "request_id" in g:
            extra["request_id"] = g.request_id
        if "correlation_id" in g:
            extra["correlation_id"] = g.correlation_id
        if "action" in g:
            extra["action"] = g.action
        log.info("http request", extra=extra)
    return response


def json_body() -> Any:
    """The request's JSON body, strictly: right content type, within the limit, valid JSON."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType("Send the body as application/json.")
    settings: Settings = current_app.extensions["lanes.settings"]
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise PayloadTooLarge(f"The body is larger than {settings.max_body_bytes} bytes.")
    raw = request.get_data(cache=True)
    if len(raw) > settings.max_body_bytes:
        raise PayloadTooLarge(f"The body is larger than {settings.max_body_bytes} bytes.")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValidationError("The body is not valid JSON.", code="invalid_json") from None
    return validation.json_value(body)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Send a bearer token in the Authorization header.", code="missing_token")
    return token.strip()


def client_address(proxies: TrustedProxies) -> str | None:
    """The client's address, believing X-Forwarded-For only as far as `proxies` wrote it."""
    return proxies.client(request.remote_addr, request.headers.getlist("X-Forwarded-For"))


def authenticate(sessions: Sessions) -> tuple[User, Claims]:
    """The caller's user and token claims, or AuthError."""
    user, claims = sessions.current_user(bearer_token())
    g.user_id = user.id
    return user, claims


# /readyz answers from a look this recent: each look opens a broker connection and pings
# the database, and probes, load balancers and curious clients may call it many times a second.
READY_CACHE_SECONDS = 2.0


def health_blueprint(
    checks: dict[str, Callable[[], None]],
    cache_seconds: float = READY_CACHE_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Blueprint:
    """/healthz (the process answers) and /readyz (every dependency answers, looked at
    most once per cache_seconds)."""
    blueprint = Blueprint("health", __name__)
    last: dict[str, Any] = {"at": None, "failed": {}}
    looking = threading.Lock()

    def failures() -> dict[str, str]:
        with looking:  # one look at a time; the others wait for it and share its answer
            if last["at"] is None or clock() - last["at"] >= cache_seconds:
                failed = {}
                for name, check in checks.items():
                    try:
                        check()
                    except Exception as error:  # noqa: BLE001 - any failure means not ready
                        failed[name] = type(error).__name__
                last["at"], last["failed"] = clock(), failed
            return dict(last["failed"])

    @blueprint.get("/healthz")
    # OpenFaaS Community Edition probes every function at this watchdog path and
    # ignores custom probe paths (docs/deploy.md).
    @blueprint.get("/_/health")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @blueprint.get("/readyz")
    def readyz() -> Response:
        failed = failures()
        if failed:
            return error_response(503, "not_ready", f"Not ready: {', '.join(sorted(failed))}.", {"Retry-After": "5"})
        return jsonify({"status": "ready"})

    return blueprint
