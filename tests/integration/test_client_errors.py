"""Every error answer of the API reaches a client user as a typed error carrying its code."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lanes_client import (
    ApiError,
    BadRequest,
    Client,
    Conflict,
    ConnectionFailed,
    IdempotencyKeyReused,
    InvalidCredentials,
    LaneFull,
    LoginThrottled,
    NotCancellable,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TokenExpired,
    TooManyRequests,
    Unauthorized,
    UnknownAction,
    UnsupportedMediaType,
    UsernameTaken,
)
from lanes_client.errors import error_from_response

from tests.conftest import Workers, running_stack
from tests.integration.client_support import PASSWORD, an_address, new_client


def answer(status: int, code: str, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    return httpx.Response(status, json={"error": code, "message": "m"}, headers=headers)


@pytest.mark.parametrize(
    ("status", "code", "expected", "kind"),
    [
        (400, "invalid_body", BadRequest, BadRequest),
        (400, "unknown_action", UnknownAction, BadRequest),
        (401, "missing_token", Unauthorized, Unauthorized),
        (401, "invalid_credentials", InvalidCredentials, Unauthorized),
        (401, "token_expired", TokenExpired, Unauthorized),
        (404, "not_found", NotFound, NotFound),
        (409, "username_taken", UsernameTaken, Conflict),
        (409, "not_cancellable", NotCancellable, Conflict),
        (409, "idempotency_key_reused", IdempotencyKeyReused, Conflict),
        (413, "payload_too_large", PayloadTooLarge, PayloadTooLarge),
        (415, "unsupported_media_type", UnsupportedMediaType, UnsupportedMediaType),
        (429, "lane_full", LaneFull, TooManyRequests),
        (429, "rate_limited", RateLimited, TooManyRequests),
        (429, "login_throttled", LoginThrottled, TooManyRequests),
        (429, "register_throttled", TooManyRequests, TooManyRequests),
        (503, "service_unavailable", ServiceUnavailable, ServiceUnavailable),
        (502, "bad_gateway", ServerError, ServerError),
        (400, "lane_full", BadRequest, BadRequest),  # a code never outranks its status
    ],
)
def test_each_code_has_its_class(status: int, code: str, expected: type, kind: type) -> None:
    error = error_from_response(answer(status, code, "7"))
    assert type(error) is expected and isinstance(error, kind) and isinstance(error, ApiError)
    assert (error.status, error.code, error.message, error.retry_after) == (status, code, "m", 7.0)


def test_an_answer_that_is_not_json_still_has_a_class() -> None:
    error = error_from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(error, ServerError) and error.code == "" and error.retry_after is None


def test_the_live_api_errors_arrive_typed(http_stack: str, workers: Workers) -> None:
    client = new_client(http_stack, "typed")
    anonymous = Client(http_stack, headers={"X-Forwarded-For": an_address()})

    with pytest.raises(BadRequest) as invalid:
        anonymous.register("no spaces allowed", PASSWORD)
    assert invalid.value.code == "invalid_username"
    taken = f"taken-{uuid.uuid4().hex[:10]}"
    anonymous.register(taken, PASSWORD)
    with pytest.raises(UsernameTaken):
        anonymous.register(taken.upper(), PASSWORD)
    with pytest.raises(InvalidCredentials):
        anonymous.login(f"nobody-{uuid.uuid4().hex}", "not the password")
    with pytest.raises(Unauthorized) as missing:
        anonymous.get_record("0" * 32)
    assert missing.value.code == "missing_token"
    with pytest.raises(Unauthorized) as garbage:
        Client(http_stack, token="not.a.token").get_record("0" * 32)
    assert garbage.value.code == "invalid_token"

    with pytest.raises(UnknownAction):
        client.submit("no-such-action")
    with pytest.raises(BadRequest) as bad_status:
        client.list_requests(status="finished-ish")
    assert bad_status.value.code == "invalid_status"
    with pytest.raises(PayloadTooLarge):
        client.submit("echo", "x" * 70_000)
    with pytest.raises(NotFound):
        client.get("0" * 32)

    first = client.submit("echo", {"n": 1}, idempotency_key="same-key")
    assert client.submit("echo", {"n": 1}, idempotency_key="same-key").id == first.id
    with pytest.raises(IdempotencyKeyReused):
        client.submit("echo", {"n": 2}, idempotency_key="same-key")
    workers.start(1)
    first.wait(timeout=30)
    with pytest.raises(NotCancellable):
        first.cancel()


def test_a_revoked_token_is_refused(http_stack: str) -> None:
    client = new_client(http_stack, "revoked")
    token = client.token
    client.logout()
    stale = Client(http_stack, token=token)
    deadline = time.monotonic() + 5
    while True:
        try:
            stale.list_requests()
        except Unauthorized as error:
            assert error.code == "token_revoked"
            break
        assert time.monotonic() < deadline, "the revoked token was still accepted"
        time.sleep(0.2)


def test_login_lock_is_reported_at_once_not_waited_out(http_stack: str) -> None:
    client = Client(http_stack, headers={"X-Forwarded-For": an_address()})
    name = f"locked-{uuid.uuid4().hex[:10]}"
    client.register(name, PASSWORD)
    for _ in range(5):
        with pytest.raises(InvalidCredentials):
            client.login(name, "not the password")
    started = time.monotonic()
    with pytest.raises(LoginThrottled) as locked:
        client.login(name, PASSWORD)
    assert time.monotonic() - started < 1.0
    assert locked.value.retry_after and locked.value.retry_after >= 1


def test_an_unreachable_server_is_a_connection_error() -> None:
    with pytest.raises(ConnectionFailed):
        Client("http://127.0.0.1:9", retries=1).login("someone", PASSWORD)


@pytest.fixture(scope="module")
def tight_stack(lanes_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second stack: a lane of two, a burst of three enqueues, tokens that last a second (+ 5 s leeway)."""
    env = {
        **lanes_env,
        "DATA_DIR": str(tmp_path_factory.mktemp("tight-stack")),
        "LANE_DEPTH_LIMIT": "2",
        "ENQUEUE_BURST": "3",
        "ENQUEUE_RATE_PER_SECOND": "0.1",
        "JWT_EXPIRES_SECONDS": "1",
    }
    with running_stack(env, Path(env["DATA_DIR"]) / "stack.log") as base_url:
        yield base_url


def test_a_full_lane_then_the_rate_limit_then_an_expired_token(tight_stack: str) -> None:
    client = new_client(tight_stack, "tight", retries=0)
    logged_in = time.monotonic()
    client.submit("echo", {"n": 1})
    client.submit("echo", {"n": 2})
    with pytest.raises(LaneFull) as full:
        client.submit("echo", {"n": 3})
    assert full.value.status == 429 and full.value.retry_after and full.value.retry_after >= 1
    with pytest.raises(RateLimited) as limited:
        client.submit("echo", {"n": 4})
    assert limited.value.retry_after and limited.value.retry_after >= 1

    patient = Client(tight_stack, token=client.token, retries=1, max_retry_after=0.5)
    started = time.monotonic()
    with pytest.raises(TooManyRequests):  # the hint is longer than this client will wait: at once
        patient.submit("echo", {"n": 5})
    assert time.monotonic() - started < 1.0

    time.sleep(max(0.0, logged_in + 7.5 - time.monotonic()))  # exp 1 s + leeway 5 s
    with pytest.raises(TokenExpired):
        client.list_requests()
