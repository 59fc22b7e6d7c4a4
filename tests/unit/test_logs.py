"""JSON log lines: secrets never written, gunicorn's own lines too, and the correlation id."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest

from lanes.logs import AccessFormatter, JsonFormatter, gunicorn_logconfig, redact
from lanes.settings import Settings
from lanes.web import create_base_app

TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiIxMjMiLCJqdGkiOiJhYmMifQ.c2lnbmF0dXJlLWJ5dGVz"
HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"


def record(message: str, **extra: object) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "lanes.test", "levelno": 20, "levelname": "INFO", "msg": message, **extra})


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"Authorization: Bearer {TOKEN}", TOKEN),
        (f"found user {{'password_hash': '{HASH}'}}", HASH),
        ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----", "MC4CAQAwBQYDK2VwBCIEI"),
        ("cannot connect to amqp://lanes:s3cret-pass@rabbit:5672/%2F", "s3cret-pass"),
    ],
)
def test_anything_shaped_like_a_secret_is_cut_out(text: str, secret: str) -> None:
    assert secret not in redact(text)
    line = JsonFormatter("enqueue").format(record("%s", args=(text,)))
    assert secret not in line and json.loads(line)["function"] == "enqueue"


def test_secret_fields_passed_as_extra_are_dropped() -> None:
    line = json.loads(
        JsonFormatter("login").format(record("login", password="hunter2-long", access_token="x", user_id="u1"))
    )
    assert "password" not in line and "access_token" not in line and line["user_id"] == "u1"


def test_an_exception_holding_a_token_is_logged_without_it() -> None:
    try:
        raise ValueError(f"bad token {TOKEN}")
    except ValueError:
        entry = json.loads(JsonFormatter("status").format(record("failed", exc_info=sys.exc_info())))
    assert entry["error_type"] == "ValueError" and TOKEN not in entry["traceback"]


def test_the_access_log_keeps_chosen_fields_and_no_query_string_or_headers() -> None:
    atoms = {
        "m": "GET",
        "U": "/requests",
        "q": f"token={TOKEN}",
        "s": "200",
        "M": 12,
        "B": 345,
        "h": "127.0.0.1",
        "{authorization}i": f"Bearer {TOKEN}",
        "{x-request-id}o": "corr-1",
        "r": f"GET /requests?token={TOKEN} HTTP/1.1",
    }
    access = logging.makeLogRecord({"name": "gunicorn.access", "levelname": "INFO", "msg": "%(r)s", "args": ()})
    access.args = atoms  # gunicorn passes its atoms as the mapping argument
    entry = json.loads(AccessFormatter("status").format(access))
    assert entry["message"] == "http access"
    assert (entry["method"], entry["path"], entry["status"], entry["duration_ms"]) == ("GET", "/requests", 200, 12)
    assert entry["correlation_id"] == "corr-1"
    assert "token" not in json.dumps(entry) and TOKEN not in json.dumps(entry)


def test_gunicorn_logconfig_makes_gunicorns_own_lines_json() -> None:
    # In a process of its own: dictConfig replaces the logging setup of whoever calls it.
    script = textwrap.dedent(
        """
        import logging, logging.config
        from lanes.logs import gunicorn_logconfig
        logging.config.dictConfig(gunicorn_logconfig("register", "INFO", access=True))
        logging.getLogger("gunicorn.error").info("Booting worker with pid: %s", 4242)
        logging.getLogger("gunicorn.access").info("%(r)s", {"m": "POST", "U": "/register", "s": "201", "M": 3})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    booting, access = (json.loads(line) for line in result.stderr.splitlines())
    assert booting["message"] == "Booting worker with pid: 4242" and booting["function"] == "register"
    assert booting["logger"] == "gunicorn.error"
    assert access["path"] == "/register" and access["status"] == 201


def test_access_log_is_off_unless_asked_for() -> None:
    assert gunicorn_logconfig("login")["loggers"]["gunicorn.access"]["level"] == "WARNING"


@pytest.mark.parametrize(
    ("offered", "kept"),
    [("abc-123", True), ("trace:42.7_x", True), ("", False), ("a" * 200, False), ("x y", False), ("<script>", False)],
)
def test_a_well_formed_request_id_is_kept_and_echoed_anything_else_replaced(offered: str, kept: bool) -> None:
    client = create_base_app("status", Settings()).test_client()
    response = client.get("/healthz", headers={"X-Request-Id": offered} if offered else {})
    echoed = response.headers["X-Request-Id"]
    assert (echoed == offered) is kept
    assert 1 <= len(echoed) <= 128 and "\n" not in echoed
