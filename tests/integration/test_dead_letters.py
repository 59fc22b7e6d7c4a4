"""A request that fails every attempt becomes a dead letter; an operator can run it again."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import Workers
from tests.support import Api


def _admin(env: dict[str, str], *args: str) -> object:
    result = subprocess.run(
        [sys.executable, "-m", "lanes.admin", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_failing_request_is_dead_lettered_in_order_and_can_be_requeued(
    api: Api, workers: Workers, lanes_env: dict[str, str]
) -> None:
    user = api.new_user("dead")
    failing = user.enqueue("fail", {"times": 3})
    after = user.enqueue("echo", {"after": True})
    workers.start(1, RETRY_BACKOFF_SECONDS="0.1")

    failed, followed = user.wait_terminal([failing, after], timeout=60)
    assert failed["status"] == "failed" and failed["attempts"] == 3
    assert followed["status"] == "done" and followed["started_at"] >= failed["finished_at"]

    letters = _admin(lanes_env, "dead-letters", "--limit", "200")
    assert isinstance(letters, list)
    assert any(letter["_id"] == failing and letter["attempts"] == 3 for letter in letters)

    requeued = _admin(lanes_env, "requeue", failing)
    assert isinstance(requeued, dict) and requeued["dead_letter"] == failing
    (again,) = user.wait_terminal([requeued["requeued_as"]], timeout=60)
    assert again["action"] == "fail" and again["status"] == "failed" and again["attempts"] == 3
    listed = [item["request_id"] for item in user.call("GET", "/requests").json()["items"]]
    assert listed[-1] == requeued["requeued_as"]


def test_requeue_of_an_unknown_request_says_so(lanes_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lanes.admin", "requeue", "0" * 32],
        env=lanes_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "no dead letter" in result.stderr
