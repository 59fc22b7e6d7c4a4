"""Malformed, oversized, mistyped and hostile input gets a 4xx in the one error shape."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanes import admin
from lanes.settings import Settings
from lanes.tokens import PRIVATE_KEY_NAME
from tests.support import Api

JSON = {"Content-Type": "application/json"}
# (method, path, headers, raw body or None, accepted statuses); "AUTH" is replaced by a valid token.
CASES: list[tuple[str, str, dict[str, str], bytes | None, set[int]]] = [
    ("POST", "/register", JSON, b"{not json", {400}),
    ("POST", "/register", JSON, b"", {400}),
    ("POST", "/register", JSON, b"[]", {400}),
    ("POST", "/register", JSON, b'"alice"', {400}),
    ("POST", "/register", JSON, b'{"username": {"$gt": ""}, "password": "password1"}', {400}),
    ("POST", "/register", JSON, b'{"username": "alice", "password": {"$ne": null}}', {400}),
    ("POST", "/register", JSON, b'{"username": "al\\u0000ce", "password": "password1"}', {400}),
    ("POST", "/register", JSON, '{"username": "ålice", "password": "password1"}'.encode(), {400}),
    ("POST", "/register", JSON, b'{"username": "\xff\xfe", "password": "password1"}', {400}),
    ("POST", "/register", JSON, b'{"username": 12345, "password": "password1"}', {400}),
    ("POST", "/register", JSON, b'{"username": "bob", "password": NaN}', {400}),
    ("POST", "/register", {"Content-Type": "text/plain"}, b'{"username": "bob", "password": "password1"}', {415}),
    ("POST", "/register", {}, None, {415}),
    ("POST", "/register", JSON, b'{"username": "' + b"a" * 70_000 + b'"}', {413}),
    ("POST", "/register", JSON, b"[" * 5000 + b"]" * 5000, {400}),
    ("POST", "/login", JSON, b'{"username": {"$gt": ""}, "password": {"$gt": ""}}', {400}),
    ("POST", "/login", JSON, b'{"username": "x", "password": "y", "role": "admin"}', {400}),
    ("POST", "/login", JSON, b"null", {400}),
    ("POST", "/login", JSON, b'{"username": "' + b"a" * 65 + b'", "password": "password1"}', {400}),
    ("POST", "/login", JSON, b'{"username": "alice", "password": "' + b"p" * 1025 + b'"}', {400}),
    # X-Forwarded-For entries that are no address never become a client's key.
    (
        "POST",
        "/login",
        {**JSON, "X-Forwarded-For": "<script>, unknown, 999.1.1.1, ::g"},
        b'{"username": "nobody-here", "password": "password1"}',
        {401, 429},
    ),
    (
        "POST",
        "/register",
        {**JSON, "X-Forwarded-For": "2001:db8::1%eth0, " + "x" * 2000},
        b'{"username": "a", "password": "password1"}',
        {400, 429},
    ),
    ("POST", "/enqueue", {**JSON, "Authorization": "AUTH"}, b'{"action": {"$where": "1"}}', {400}),
    ("POST", "/enqueue", {**JSON, "Authorization": "AUTH"}, b'{"action": "../../etc/passwd"}', {400}),
    (
        "POST",
        "/enqueue",
        {**JSON, "Authorization": "AUTH"},
        b'{"action": "echo", "data": "' + b"x" * 70_000 + b'"}',
        {413},
    ),
    ("POST", "/enqueue", {**JSON, "Authorization": "AUTH"}, b'{"action": "echo", "priority": 1}', {400}),
    ("POST", "/enqueue", {**JSON, "Authorization": "AUTH", "Idempotency-Key": "x" * 300}, b"{}", {400}),
    ("POST", "/enqueue", {**JSON, "Authorization": "AUTH"}, b"{'action': 'echo'}", {400}),
    (
        "POST",
        "/enqueue",
        {"Authorization": "AUTH", "Content-Type": "application/x-www-form-urlencoded"},
        b"action=echo",
        {415},
    ),
    ("GET", "/requests/..%2F..%2Fusers", {"Authorization": "AUTH"}, None, {400, 404}),
    ("GET", "/requests/%24where", {"Authorization": "AUTH"}, None, {404}),
    ("GET", "/requests?limit=-1", {"Authorization": "AUTH"}, None, {400}),
    ("GET", "/requests?status[$ne]=done", {"Authorization": "AUTH"}, None, {400}),
    ("GET", "/requests?after=%00", {"Authorization": "AUTH"}, None, {400}),
    ("DELETE", "/requests/" + "f" * 32, {"Authorization": "AUTH"}, None, {404}),
    ("PUT", "/enqueue", {"Authorization": "AUTH"}, None, {404, 405}),
    ("GET", "/register", {}, None, {404, 405}),
]


def _assert_error_shape(response: Any, allowed: set[int]) -> None:
    assert response.status_code in allowed, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error", "message"}
    assert isinstance(body["error"], str) and isinstance(body["message"], str)
    assert "Traceback" not in response.text and 'File "' not in response.text


@pytest.fixture(scope="module")
def user(http_stack: str) -> Api:
    return Api(http_stack).new_user("hostile")


@pytest.mark.parametrize(("method", "path", "headers", "body", "allowed"), CASES)
def test_hostile_input_gets_a_clear_4xx(
    user: Api, method: str, path: str, headers: dict[str, str], body: bytes | None, allowed: set[int]
) -> None:
    headers = {k: (f"Bearer {user.token}" if v == "AUTH" else v) for k, v in headers.items()}
    response = user.session.request(method, user.base_url + path, headers=headers, data=body, timeout=30)
    _assert_error_shape(response, allowed)


def _b64(part: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def test_jwt_attacks_are_refused(api: Api, database: Any, lanes_env: dict[str, str]) -> None:
    user = api.new_user("jwt")
    assert user.token is not None
    header, payload, signature = user.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    now = int(time.time())
    deleted = api.new_user("deleted")
    assert deleted.call("GET", "/requests").status_code == 200  # the status function knows the token
    admin.delete_user(Settings.from_env(lanes_env), deleted.username)  # type: ignore[attr-defined]
    revoked = api.new_user("revoked")
    assert revoked.call("POST", "/logout").status_code == 204
    time.sleep(1.2)  # AUTH_CACHE_SECONDS=1 in the test stack: every process has read both

    real_key = (Path(lanes_env["DATA_DIR"]) / "keys" / PRIVATE_KEY_NAME).read_bytes()
    other_key = Ed25519PrivateKey.generate()
    attacks = {
        "missing": None,
        "not bearer": f"Basic {user.token}",
        "garbage": "Bearer garbage",
        "alg none": f"Bearer {_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "tampered payload": f"Bearer {header}.{_b64({**claims, 'sub': uuid.uuid4().hex})}.{signature}",
        "wrong algorithm": "Bearer " + jwt.encode({**claims}, "a-completely-different-secret-key!!", algorithm="HS256"),
        "wrong key": "Bearer " + jwt.encode({**claims}, other_key, algorithm="EdDSA"),
        "expired": "Bearer "
        + jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, real_key, algorithm="EdDSA"),
        "no jti": "Bearer " + jwt.encode({k: v for k, v in claims.items() if k != "jti"}, real_key, algorithm="EdDSA"),
        "revoked": f"Bearer {revoked.token}",
        "deleted user": f"Bearer {deleted.token}",
    }
    for name, authorization in attacks.items():
        headers = {} if authorization is None else {"Authorization": authorization}
        for method, path in (("GET", "/requests"), ("POST", "/enqueue"), ("POST", "/logout")):
            response = api.session.request(method, api.base_url + path, headers=headers, json={}, timeout=30)
            assert response.status_code == 401, (name, path, response.text)
            _assert_error_shape(response, {401})
    # The real key signs valid tokens: the attacks above failed for their flaw alone.
    forged_ok = jwt.encode({**claims, "jti": uuid.uuid4().hex}, real_key, algorithm="EdDSA")
    assert Api(api.base_url, forged_ok).call("GET", "/requests").status_code == 200
