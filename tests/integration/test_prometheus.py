"""A real Prometheus scrapes a running stack under load: every dashboard panel's query returns
data, every alert expression answers as the situation says it should, and the overview
dashboard can be drawn from what Prometheus recorded.

`make dashboard-png` runs this test with LANES_DASHBOARD_PNG set to keep that picture.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import dashboards
from deploy.prometheus import OBSERVABILITY, Prometheus, start
from tests.conftest import Workers
from tests.support import Api, free_port_block, wait_until

ALERTS = yaml.safe_load((OBSERVABILITY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
EXPRESSIONS = {rule["alert"]: rule["expr"] for rule in ALERTS}
# What the load below makes true by the time the panels are read.
FIRING_AFTER_LOAD = {"LanesDeadLettersGrowing"}
METRIC_NAME = re.compile(r"\b(lanes_[a-z_]+|up)\b(?=\s*[{\[)]|\s*$|\s*[=><!])")
SCRAPE_INTERVAL = "1s"


@pytest.fixture
def prometheus(api: Api, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus on a free port, scraping this session's stack every second."""
    warm_up(api)
    server = start([api.base_url.removeprefix("http://")], free_port_block(1), tmp_path / "prometheus", SCRAPE_INTERVAL)
    try:
        yield server
    finally:
        server.stop()


def warm_up(api: Api) -> None:
    """Use the enqueue function's pooled broker connections once before measuring.

    A pooled connection that sat idle through earlier tests may have been dropped by
    the broker, and its first use answers 503; that says nothing about what is measured
    here. Each thread is its own user: one user's enqueues stay one at a time.
    """
    users = [api.new_user(f"warmup{i}") for i in range(8)]
    codes: list[int] = []
    for _ in range(5):
        with ThreadPoolExecutor(max_workers=len(users)) as pool:
            codes = list(
                pool.map(lambda user: user.call("POST", "/enqueue", json={"action": "echo"}).status_code, users)
            )
        if all(code == 202 for code in codes):
            return
    pytest.fail(f"the stack keeps answering {codes}")


def test_every_panel_and_alert_answers_from_a_live_prometheus(
    api: Api, workers: Workers, prometheus: Prometheus, tmp_path: Path
) -> None:
    started = time.time()
    wait_until(lambda: prometheus.query('up{job="lanes"} == 1'), timeout=30, what="the first scrape")

    # Given requests waiting while no worker runs: the no-worker alert's condition holds
    users = [api.new_user(f"observed{i}") for i in range(3)]
    for user in users:
        for _ in range(3):
            user.enqueue("sleep", {"ms": 50})
    wait_until(
        lambda: prometheus.query(EXPRESSIONS["LanesNoWorkersWithBacklog"]),
        timeout=60,
        what="Prometheus to see a backlog with no worker",
    )
    wait_until(lambda: rule_state(prometheus, "LanesNoWorkersWithBacklog") == "pending", timeout=30, what="the rule")

    # When workers start and a mixed load runs: successes, retries, a dead letter, a cancel, refusals
    workers.start(2, WORKER_SLOTS="2", MAX_ATTEMPTS="2", RETRY_BACKOFF_SECONDS="0.05")
    ids = drive_load(api, users)
    for user, request_ids in ids:
        user.wait_terminal(request_ids, timeout=90)
    for recorded in (
        "sum(lanes_requests_dead_lettered_total) >= 1",
        "sum(lanes_requests_retried_total) >= 4",
        "sum(lanes_requests_processed_total{outcome='cancelled'}) >= 1",
        "max(lanes_workers_connected) >= 2",
        "max(lanes_backlog_requests) == 0",
    ):
        wait_until(lambda: prometheus.query(recorded), timeout=60, what=f"Prometheus to see {recorded}")  # noqa: B023
    time.sleep(3)  # a few more scrapes, so every rate has two samples of the last changes

    # Then every panel of every dashboard has data
    empty = [
        f"{q.dashboard} / {q.panel} / {q.ref}: {q.expr}"
        for name in dashboards.names()
        for q in dashboards.panel_queries(name, rate_interval="1m", time_range="5m")
        if not prometheus.query(q.expr)
    ]
    assert empty == [], "panels without data:\n" + "\n".join(empty)
    # The platform view reads kube-state-metrics, cAdvisor and KEDA, which no local stack
    # has: Prometheus must still accept every one of its queries (it raises on a bad one).
    platform = json.loads((dashboards.DASHBOARDS.parent / "platform" / "platform.json").read_text())
    for panel in platform["panels"]:
        for target in panel["targets"]:
            expr = dashboards.substitute(target["expr"], "1m", "5m").replace("$namespace", "lanes|openfaas-fn")
            assert prometheus.query(expr) == [], expr

    # And each alert expression answers as the situation says, over metrics that exist
    for alert, expr in EXPRESSIONS.items():
        answer = prometheus.query(expr)
        assert bool(answer) == (alert in FIRING_AFTER_LOAD), f"{alert}: {expr} answered {answer}"
        for metric in set(METRIC_NAME.findall(expr)):
            assert prometheus.series(metric), f"{alert} reads {metric}, which Prometheus never saw"
    rules = {rule["name"]: rule for rule in prometheus.rules()}
    assert set(rules) == set(EXPRESSIONS)
    assert all(rule["health"] == "ok" for rule in rules.values()), [r.get("lastError") for r in rules.values()]
    assert rules["LanesDeadLettersGrowing"]["state"] == "firing"

    # And the overview dashboard can be drawn from what Prometheus recorded
    minutes = (time.time() - started) / 60 + 0.1  # the whole run, which Prometheus saw from its start
    picture = dashboards.render(prometheus, "overview", tmp_path / "overview.png", minutes=minutes, rate_interval="10s")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 50_000
    if keep := os.environ.get("LANES_DASHBOARD_PNG"):
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(picture, keep)


def drive_load(api: Api, users: list[Api]) -> list[tuple[Api, list[str]]]:
    """A bounded mix of work; returns each user's accepted request ids."""
    accepted: list[tuple[Api, list[str]]] = []
    for index, user in enumerate(users):
        ids = [
            *(user.enqueue("echo", {"n": n}) for n in range(8)),
            user.enqueue("sleep", {"ms": 30 * (index + 1)}),
            user.enqueue("fail", {"times": 1}),  # fails once, then succeeds on its retry
        ]
        accepted.append((user, ids))
    doomed = users[0]
    accepted.append((doomed, [doomed.enqueue("fail", {"times": 5})]))  # two attempts allowed: dead-lettered
    # A cancel: the echo waits behind a sleep in its lane and is cancelled before its turn.
    canceller = api.new_user("canceller")
    running = canceller.enqueue("sleep", {"ms": 1500})
    waiting = canceller.enqueue("echo", {"n": "cancel me"})
    assert canceller.call("DELETE", f"/requests/{waiting}").status_code == 200
    accepted.append((canceller, [running, waiting]))
    # Refusals the enqueue function answers: a bad action, no token.
    assert users[1].call("POST", "/enqueue", json={"action": "no-such-action"}).status_code == 400
    assert api.call("POST", "/enqueue", json={"action": "echo"}).status_code == 401
    for user in users:
        assert user.call("GET", "/requests", params={"limit": 5}).status_code == 200
    return accepted


def rule_state(prometheus: Prometheus, name: str) -> Any:
    return next((rule["state"] for rule in prometheus.rules() if rule["name"] == name), None)
