"""What a running stack writes to its logs: JSON lines that follow a request from the HTTP
function to the worker, and never a password, a password hash, a token or a key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from deploy.template import ROOT
from lanes.tokens import PRIVATE_KEY_NAME
from tests.support import Api, free_port_block, wait_until

# Lines that are not ours to shape: nginx (the local stand-in for a gateway) and the
# runner's own notice on the terminal.
FOREIGN = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[\w+\] |Lanes is serving on )")


def test_logs_are_json_follow_the_request_and_hold_no_secret(
    lanes_env: dict[str, str], database: Any, tmp_path: Path
) -> None:
    # Given a whole stack logging everything it can (DEBUG, gunicorn's access log on)
    port = free_port_block(5)
    log_file = tmp_path / "stack.log"
    env = {**lanes_env, "DATA_DIR": str(tmp_path / "data"), "LOG_LEVEL": "DEBUG", "ACCESS_LOG": "true"}
    with log_file.open("wb") as sink:
        runner = subprocess.Popen(
            [sys.executable, "-m", "deploy.runner", "--port", str(port), "--workers", "1"],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            base = Api(f"http://127.0.0.1:{port}")
            wait_until(base.ready, timeout=90, what="the stack")
            secrets, correlation_id = exercise(base)
        finally:
            runner.terminate()
            runner.wait(timeout=60)
    secrets.append(database.users.find_one({"username": secrets[0]})["password_hash"])
    secrets.append((tmp_path / "data" / "keys" / PRIVATE_KEY_NAME).read_text().splitlines()[1])
    lines = [line for line in log_file.read_text().splitlines() if line.strip()]

    # Then every line of ours is one JSON object
    entries = [json.loads(line) for line in lines if not FOREIGN.match(line)]
    assert len(entries) > 20
    assert {e["function"] for e in entries} >= {"register", "login", "enqueue", "status", "worker"}
    assert any(e["logger"] == "gunicorn.error" for e in entries), "gunicorn's own lines are JSON too"
    access = [e for e in entries if e["message"] == "http access"]
    assert access and all("?" not in str(e.get("path")) for e in access)

    # And the correlation id is logged where the request was accepted and where it ran
    followed = [e for e in entries if e.get("correlation_id") == correlation_id]
    assert {e["function"] for e in followed} >= {"enqueue", "worker"}
    accepted = next(e for e in followed if e["function"] == "enqueue" and e["logger"] == "lanes.http")
    assert accepted["status"] == 202 and accepted["action"] == "echo" and accepted["user_id"] and accepted["request_id"]
    done = next(e for e in followed if e["function"] == "worker")
    assert done["status"] == "done" and done["duration_ms"] >= 0 and done["action"] == "echo"

    # And the failed login is logged with the username and the client address, as a security event
    failed = [e for e in entries if e["logger"] == "lanes.security" and e.get("username") == secrets[0]]
    assert failed and failed[0]["client_address"] == base.address and failed[0]["function"] == "login"

    # And no secret appears anywhere, whole or in part
    text = log_file.read_text()
    for secret in secrets[1:]:
        for piece in {secret, *secret.split(".")[-1:], secret[-24:]}:
            assert piece not in text, f"a secret leaked into the logs: {piece[:6]}…"


def exercise(base: Api) -> tuple[list[str], str]:
    """Register, log in (also wrongly), enqueue, follow, misbehave, log out; returns what must stay secret."""
    username = f"logs-{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}-never-logged"
    assert base.call("POST", "/register", json={"username": username, "password": password}).status_code == 201
    wrong = base.call("POST", "/login", json={"username": username, "password": password + "-wrong"})
    assert wrong.status_code == 401
    token = base.call("POST", "/login", json={"username": username, "password": password}).json()["access_token"]
    user = Api(base.base_url, token)
    correlation_id = f"corr-{uuid.uuid4().hex[:12]}"
    accepted = user.call(
        "POST", "/enqueue", json={"action": "echo", "data": {"n": 1}}, headers={"X-Request-Id": correlation_id}
    )
    assert accepted.status_code == 202 and accepted.headers["X-Request-Id"] == correlation_id
    assert user.wait_terminal([accepted.json()["request_id"]], timeout=60)[0]["status"] == "done"
    # Credentials where they do not belong: a query string, a broken body, a bad token.
    assert user.call("GET", f"/requests?access_token={token}").status_code == 400
    bad_body = f'{{"username": "{username}", "password": "{password}"'
    response = base.call("POST", "/login", data=bad_body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert Api(base.base_url, token + "x").call("GET", "/requests").status_code == 401
    assert user.call("POST", "/logout").status_code == 204
    time.sleep(1.2)  # AUTH_CACHE_SECONDS=1 in the test stack
    assert user.call("GET", "/requests").status_code == 401
    return [username, password, token], correlation_id
