"""Probes of the live stack that once gave a 500, an HTML page or a leftover record: each
must get a 4xx in Lanes' error shape and leave nothing behind. The table of answers is
printed at the end of the run (tests/integration/conftest.py)."""

from __future__ import annotations

import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.integration.hostile import TABLE, Row
from tests.support import Api

JSON = {"Content-Type": "application/json"}
# Long enough that the HTTP metrics endpoint shows a fresh scrape (METRICS_CACHE_SECONDS).
METRICS_SETTLE_SECONDS = 5.5


def _nested(depth: int) -> bytes:
    return b'{"action": "echo", "data": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


def _name() -> str:
    return f"probe-{uuid.uuid4().hex[:10]}"


# (probe, method, path, headers, body); "AUTH" stands for the probing user's token, and
# NAME in a body for a fresh username (so that what it left can be looked for).
PROBES: list[tuple[str, str, str, dict[str, str], bytes | None]] = [
    ("register: lone surrogate in password", "POST", "/register", JSON,
     b'{"username": "NAME", "password": "abc\\ud800defgh"}'),
    ("register: lone surrogate in username", "POST", "/register", JSON,
     b'{"username": "NAME\\udfff", "password": "password1"}'),
    ("register: 250 KB body", "POST", "/register", JSON,
     b'{"username": "NAME", "password": "' + b"p" * 250_000 + b'"}'),
    ("login: lone surrogate in password", "POST", "/login", JSON,
     b'{"username": "NAME", "password": "\\ud800\\ud800\\ud800"}'),
    ("login: lone surrogate in username", "POST", "/login", JSON,
     b'{"username": "\\udc00NAME", "password": "password1"}'),
    ("login: 5,000-char password, unknown user", "POST", "/login", JSON,
     b'{"username": "NAME", "password": "' + b"p" * 5000 + b'"}'),
    ("login: 65-char username", "POST", "/login", JSON,
     b'{"username": "NAME' + b"x" * 60 + b'", "password": "password1"}'),
    ("login: X-Forwarded-For of no address", "POST", "/login",
     {**JSON, "X-Forwarded-For": "<script>alert(1)</script>, unknown, 300.1.1.1, 198.51.100.7:80"},
     b'{"username": "NAME", "password": "password1"}'),
    ("login: X-Forwarded-For of 200 entries", "POST", "/login",
     {**JSON, "X-Forwarded-For": ", ".join(f"10.0.{n // 250}.{n % 250 + 1}" for n in range(200))},
     b'{"username": "NAME", "password": "password1"}'),
    ("register: X-Forwarded-For with an IPv6 zone", "POST", "/register",
     {**JSON, "X-Forwarded-For": "fe80::1%eth0, [2001:db8::1]:443"}, b'{"username": "x", "password": "password1"}'),
    ("enqueue: lone surrogate in data", "POST", "/enqueue", {**JSON, "Authorization": "AUTH"},
     b'{"action": "echo", "data": {"text": "a\\ud800b"}}'),
    ("enqueue: lone surrogate in a key", "POST", "/enqueue", {**JSON, "Authorization": "AUTH"},
     b'{"action": "echo", "data": {"\\udbff": 1}}'),
    ("enqueue: 1e999 in data", "POST", "/enqueue", {**JSON, "Authorization": "AUTH"},
     b'{"action": "echo", "data": {"x": 1e999}}'),
    ("enqueue: -1e999 with an Idempotency-Key", "POST", "/enqueue",
     {**JSON, "Authorization": "AUTH", "Idempotency-Key": "probe-key"}, b'{"action": "echo", "data": -1e999}'),
    ("enqueue: nesting 101 deep", "POST", "/enqueue", {**JSON, "Authorization": "AUTH"}, _nested(101)),
    ("enqueue: nesting 950 deep", "POST", "/enqueue", {**JSON, "Authorization": "AUTH"}, _nested(950)),
    ("enqueue: 250 KB body", "POST", "/enqueue", {**JSON, "Authorization": "AUTH"},
     b'{"action": "echo", "data": "' + b"x" * 250_000 + b'"}'),
    ("list: limit=\u00b2", "GET", "/requests?limit=%C2%B2", {"Authorization": "AUTH"}, None),
    ("list: limit=\u0663 (Arabic-Indic 3)", "GET", "/requests?limit=%D9%A3", {"Authorization": "AUTH"}, None),
    ("list: limit of 3,000 digits", "GET", "/requests?limit=" + "9" * 3000, {"Authorization": "AUTH"}, None),
    ("list: after= + 5,000 chars", "GET", "/requests?after=" + "a" * 5000, {"Authorization": "AUTH"}, None),
    ("status: 9,000-char path", "GET", "/requests/" + "f" * 9000, {"Authorization": "AUTH"}, None),
    ("any: 6 KB header", "GET", "/requests", {"Authorization": "AUTH", "X-Padding": "p" * 6000}, None),
    ("any: invented method ZABC", "ZABC", "/enqueue", {"Authorization": "AUTH"}, None),
    ("any: TRACE", "TRACE", "/register", {}, None),
]  # fmt: skip

# Requests no HTTP client library sends: (probe, raw request head).
RAW_PROBES: list[tuple[str, bytes]] = [
    ("raw: garbage request line", b"\x16\x03\x01 hello\r\n\r\n"),
    ("raw: unknown transfer coding", b"POST /register HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
    ("raw: HTTP/2.0 request line", b"GET /requests HTTP/2.0\r\nHost: x\r\n\r\n"),
    (
        "raw: two Content-Lengths",
        b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ),
]


@pytest.fixture(scope="module")
def prober(http_stack: str, database: Any) -> tuple[Api, str]:
    user = Api(http_stack).new_user("prober")
    document = database.users.find_one({"_id": user.username.lower()})  # type: ignore[attr-defined]
    return user, document["user_id"]


def _left(database: Any, user_id: str, name: str) -> int:
    """Documents anywhere in the database that name the probing user or the probe's username
    (a probe's share is the difference it makes)."""
    pattern = {"$regex": re.escape(user_id) + "|" + re.escape(name.lower())}
    found = 0
    for collection in database.list_collection_names():
        found += database[collection].count_documents({"$or": [{"user_id": user_id}, {"_id": pattern}]})
    return found


def _is_json_error(status: int, content_type: str, text: str) -> bool:
    return content_type.startswith("application/json") and '"error"' in text and "Traceback" not in text


@pytest.mark.parametrize(("probe", "method", "path", "headers", "body"), PROBES, ids=[p[0] for p in PROBES])
def test_hostile_probe_gets_a_4xx_in_the_error_shape_and_leaves_nothing(
    prober: tuple[Api, str],
    database: Any,
    probe: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
) -> None:
    user, user_id = prober
    name = _name()
    headers = {k: (f"Bearer {user.token}" if v == "AUTH" else v) for k, v in headers.items()}
    data = body.replace(b"NAME", name.encode()) if body is not None else None
    before = _left(database, user_id, name)
    response = user.session.request(method, user.base_url + path, headers=headers, data=data, timeout=30)
    row = Row(
        probe,
        response.status_code,
        _is_json_error(response.status_code, response.headers.get("Content-Type", ""), response.text),
        _left(database, user_id, name) - before,
    )
    TABLE.rows.append(row)
    assert row.ok, (row, response.text[:300])


@pytest.mark.parametrize(("probe", "raw"), RAW_PROBES, ids=[p[0] for p in RAW_PROBES])
def test_malformed_http_gets_a_4xx_in_the_error_shape(http_stack: str, probe: str, raw: bytes) -> None:
    address = urlparse(http_stack)
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(raw)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, text = answer.decode("latin-1").partition("\r\n\r\n")
    status = int(head.split(" ", 2)[1])
    content_type = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]
                         if line.lower().startswith("content-type:")), "")  # fmt: skip
    row = Row(probe, status, _is_json_error(status, content_type, text), 0)
    TABLE.rows.append(row)
    assert row.ok, (row, answer[:300])


def _http_series(api: Api) -> set[str]:
    text = api.call("GET", "/metrics").text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("lanes_http") and "method=" in line}


def test_invented_methods_add_no_metric_series(api: Api) -> None:
    # Given the series one invented method makes (its bounded label) on a route and off any
    for path in ("/enqueue", "/nowhere"):
        api.call("ZZZZ", path)
    time.sleep(METRICS_SETTLE_SECONDS)
    before = _http_series(api)

    # When 500 more made-up methods arrive
    for n in range(500):
        # nginx takes a method of capital letters (and '_', '-') as a method it forwards.
        invented = "X" + "".join(chr(ord("A") + int(digit)) for digit in f"{n:03d}") + "METHOD"
        answer = api.call(invented, "/enqueue" if n % 2 else "/nowhere")
        assert answer.status_code in (404, 405) and answer.json()["error"]
    time.sleep(METRICS_SETTLE_SECONDS)
    after = _http_series(api)

    # Then no series is new, and none names an invented method
    TABLE.new_series = len(after - before)
    assert after - before == set()
    assert not [series for series in after if "METHOD" in series or "ZZZZ" in series]


def test_router_workers_do_not_run_as_root(http_stack: str, lanes_env: dict[str, str]) -> None:
    # The router of this stack: the nginx master started with this stack's config.
    config = f"{lanes_env['DATA_DIR']}/run/http-{urlparse(http_stack).port}/nginx.conf"
    processes = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            command = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        processes[status.parent.name] = (fields["PPid"].strip(), int(fields["Uid"].split()[1]), command)
    masters = [pid for pid, (_, _, command) in processes.items() if config in command]
    assert len(masters) == 1, masters
    workers = [uid for parent, uid, _ in processes.values() if parent == masters[0]]
    assert workers and 0 not in workers, workers
