"""The `lanes` command (client/lanes_client/cli.py) against a running stack, as a script would use it."""

from __future__ import annotations

import itertools
import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Workers

PASSWORD = "correct horse battery"


class Lanes:
    """Runs `python -m lanes_client` with its own config folder and LANES_URL."""

    def __init__(self, base_url: str, config_dir: Path) -> None:
        self.config_dir = config_dir
        self.env = {**os.environ, "LANES_URL": base_url, "LANES_CONFIG_DIR": str(config_dir)}

    def __call__(self, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lanes_client", *args],
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def json(self, *args: str, stdin: str = "") -> list[Any]:
        result = self("--json", *args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def lanes(http_stack: str, tmp_path: Path) -> Lanes:
    """A logged-in user of the command."""
    command = Lanes(http_stack, tmp_path / "config")
    username = f"cli-{uuid.uuid4().hex[:12]}"
    registered = command("register", "--username", username, "--password-stdin", stdin=PASSWORD + "\n")
    assert registered.returncode == 0, registered.stderr
    logged_in = command("login", "--username", username, "--password-stdin", stdin=PASSWORD + "\n")
    assert logged_in.returncode == 0, logged_in.stderr
    assert f"logged in as {username}" in logged_in.stdout
    return command


def test_login_keeps_the_token_alone_in_a_private_file(lanes: Lanes) -> None:
    token_file = lanes.config_dir / "tokens.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(lanes.config_dir.stat().st_mode) == 0o700
    saved = json.loads(token_file.read_text())
    (entry,) = saved.values()
    assert entry["access_token"] and PASSWORD not in token_file.read_text()


def test_submit_and_wait_prints_the_result(lanes: Lanes, workers: Workers) -> None:
    workers.start(1)
    result = lanes("submit", "echo", "--data", '{"x": 1}', "--wait")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"x": 1}


def test_two_hundred_submissions_with_wait_end_in_order(lanes: Lanes, workers: Workers) -> None:
    workers.start(2)
    lines = "".join(json.dumps({"n": n}) + "\n" for n in range(200))
    records = lanes.json("submit", "echo", "--from", "-", "--wait", stdin=lines)
    assert [record["result"] for record in records] == [{"n": n} for n in range(200)]
    assert {record["status"] for record in records} == {"done"}
    for before, after in itertools.pairwise(records):
        assert after["started_at"] >= before["finished_at"]
    listed = lanes.json("ls", "--status", "done", "--limit", "0")
    assert [record["request_id"] for record in listed] == [record["request_id"] for record in records]


def test_status_ls_and_cancel(lanes: Lanes) -> None:
    (first,) = lanes.json("submit", "sleep", "--data", '{"ms": 10}')
    (second,) = lanes.json("submit", "echo", "--data", '{"n": 2}')
    assert (first["position"], second["position"]) == (0, 1)
    (shown,) = lanes.json("status", second["request_id"])
    assert shown["status"] == "queued" and shown["action"] == "echo"
    (cancelled,) = lanes.json("cancel", second["request_id"])
    assert cancelled["status"] == "cancelled"
    listed = lanes.json("ls")
    assert [(r["request_id"], r["status"]) for r in listed] == [
        (first["request_id"], "queued"),
        (second["request_id"], "cancelled"),
    ]
    assert lanes.json("ls", "--status", "cancelled")[0]["request_id"] == second["request_id"]
    table = lanes("ls")
    assert table.returncode == 0 and second["request_id"] in table.stdout


def test_exit_codes_say_what_happened(lanes: Lanes, http_stack: str, tmp_path: Path, workers: Workers) -> None:
    assert lanes("status", "0" * 32).returncode == 5
    assert lanes("submit", "no-such-action").returncode == 10
    (slow,) = lanes.json("submit", "sleep", "--data", '{"ms": 2000}')
    assert lanes("submit", "echo", "--wait", "--timeout", "0.3").returncode == 9

    workers.start(1, RETRY_BACKOFF_SECONDS="0.1", ENABLE_FAIL_ACTION="true")
    failed = lanes("--json", "submit", "fail", "--data", '{"times": 10}', "--wait")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["status"] == "failed"
    assert "failing on purpose" in json.loads(failed.stderr)["message"]
    assert lanes("cancel", slow["request_id"]).returncode == 6  # done by now: 409

    stranger = Lanes(http_stack, tmp_path / "nobody")
    assert stranger("ls").returncode == 4
    wrong = stranger("--json", "login", "--username", "nobody-at-all", "--password-stdin", stdin="not the password\n")
    assert wrong.returncode == 4 and json.loads(wrong.stderr)["error"] == "invalid_credentials"
    assert stranger("--url", "http://127.0.0.1:9", "ls").returncode == 4  # no token for that URL either
    unreachable = Lanes("http://127.0.0.1:9", tmp_path / "nobody")
    assert unreachable("register", "-u", "someone", "--password-stdin", stdin=PASSWORD + "\n").returncode == 8


def test_watch_follows_the_lane_until_it_is_empty(lanes: Lanes, workers: Workers) -> None:
    lanes.json("submit", "sleep", *itertools.chain.from_iterable(("-d", '{"ms": 100}') for _ in range(10)))
    watch = subprocess.Popen(
        [sys.executable, "-m", "lanes_client", "--json", "watch", "--interval", "0.2", "--until-empty"],
        env=lanes.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watch.stdout is not None
    first = json.loads(watch.stdout.readline())  # the lane before any worker runs
    assert (first["seen"], first["queued"], first["done"]) == (10, 10, 0)
    workers.start(1)
    rest, _ = watch.communicate(timeout=60)
    assert watch.returncode == 0
    last = json.loads(rest.splitlines()[-1])
    assert last == {"queued": 0, "processing": [], "seen": 10, "done": 10, "failed": 0, "cancelled": 0}
    live = lanes("watch", "--until-empty")  # nothing left: one look, then done
    assert live.returncode == 0


def test_logout_revokes_and_forgets_the_token(lanes: Lanes) -> None:
    assert lanes("logout").returncode == 0
    assert json.loads((lanes.config_dir / "tokens.json").read_text()) == {}
    assert lanes("ls").returncode == 4


def test_operators_list_and_requeue_dead_letters(lanes: Lanes, workers: Workers, lanes_env: dict[str, str]) -> None:
    workers.start(1, RETRY_BACKOFF_SECONDS="0.1", ENABLE_FAIL_ACTION="true")
    failed = lanes("--json", "submit", "fail", "--data", '{"times": 10}', "--wait")
    assert failed.returncode == 1
    request_id = json.loads(failed.stdout)["request_id"]

    operator = Lanes(lanes.env["LANES_URL"], lanes.config_dir)
    operator.env = {**lanes.env, **lanes_env}  # the server's settings: MONGO_URI, RABBITMQ_URL
    letters = operator.json("dead-letters", "--limit", "200")
    assert any(letter["_id"] == request_id and letter["attempts"] == 3 for letter in letters)
    table = operator("dead-letters", "--limit", "200")
    assert table.returncode == 0 and request_id in table.stdout

    (again,) = operator.json("requeue", request_id)
    assert again["dead_letter"] == request_id
    (record,) = lanes.json("status", again["requeued_as"])
    assert record["action"] == "fail"
    assert operator("requeue", "0" * 32).returncode == 5


def test_operators_commands_run_no_code_from_the_current_folder(
    lanes: Lanes, lanes_env: dict[str, str], tmp_path: Path
) -> None:
    # Given a folder someone else filled with a `lanes` package of their own
    planted = tmp_path / "planted"
    (planted / "lanes").mkdir(parents=True)
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (planted / "lanes" / "__init__.py").write_text(code)
    (planted / "lanes" / "admin.py").write_text(code)
    # When an operator lists the dead letters from inside it, with PYTHONPATH pointing there too
    env = {**lanes.env, **lanes_env, "PYTHONPATH": str(planted)}
    done = subprocess.run(
        [sys.executable, "-m", "lanes_client", "--json", "dead-letters", "--limit", "1"],
        cwd=planted,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Then Lanes' own admin answered, and none of the planted code ran
    assert done.returncode == 0, done.stderr
    assert not marker.exists()


def test_the_client_needs_nothing_of_the_server(tmp_path: Path) -> None:
    probe = (
        "import sys, lanes_client.cli; "
        "print([m for m in ('lanes', 'flask', 'pymongo', 'pika', 'jwt', 'deploy') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
