"""GET /metrics on the base URL shows every function and the worker, and counts stay right
across gunicorn's processes and across worker processes that die."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from deploy.template import ROOT
from tests.conftest import Workers
from tests.support import Api, free_port_block, wait_until

HTTP_FUNCTIONS = {"register", "login", "enqueue", "status"}


def scrape(base_url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of a /metrics answer by sample name (strictly parsed, as Prometheus would)."""
    response = requests.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if all(found.get(k) == w for k, w in labels.items()))


def test_the_base_url_shows_every_function_and_the_worker_without_naming_users(api: Api, workers: Workers) -> None:
    # Given one round trip through every function
    workers.start(1)
    user = api.new_user("metrics")
    request_id = user.enqueue("echo", {"n": 1})
    user.wait_terminal([request_id], timeout=30)
    assert user.call("POST", "/logout").status_code == 204

    # When the base URL's /metrics is read
    samples = scrape(api.base_url)

    # Then each HTTP function and the worker is there, under its own name
    functions = {labels["function"] for labels, _ in samples["lanes_http_request_total"]}
    assert functions >= HTTP_FUNCTIONS
    assert total(samples, "lanes_http_request_total", function="enqueue", status="202") >= 1
    assert total(samples, "lanes_requests_processed_total", function="worker", action="echo", outcome="done") >= 1
    assert total(samples, "lanes_request_queue_wait_seconds_count", function="worker", action="echo") >= 1
    assert total(samples, "lanes_workers_live", function="worker") >= 1
    # The lanes a worker holds are the worker's figures; the backlog is the broker's.
    for gauge in ("lanes_worker_lanes", "lanes_worker_requests_waiting", "lanes_worker_lane_depth_max"):
        assert [labels for labels, _ in samples.get(gauge, [])] == [{"function": "worker"}], gauge
    for gauge in ("lanes_backlog_requests", "lanes_workers_connected", "lanes_oldest_pending_age_seconds"):
        assert [labels for labels, _ in samples.get(gauge, [])] == [{}], gauge
    assert total(samples, "lanes_broker_up") == 1 and total(samples, "lanes_database_up") == 1

    # And no label names a user or a request, whatever the metric
    time.sleep(1.2)  # AUTH_CACHE_SECONDS=1 in the test stack
    user_id = user.call("GET", f"/requests/{request_id}").status_code  # the token is revoked: 401
    assert user_id == 401
    values = {value for found in samples.values() for labels, _ in found for value in labels.values()}
    names = {name for found in samples.values() for labels, _ in found for name in labels}
    assert request_id not in values and user.username not in values  # type: ignore[attr-defined]
    assert names <= {"function", "method", "path", "status", "action", "outcome", "le", "version"}


def test_a_killed_worker_keeps_its_counts_and_leaves_the_live_gauges(api: Api, workers: Workers) -> None:
    # Given two workers that ran some requests
    before = total(scrape(api.base_url), "lanes_requests_processed_total", function="worker")
    first, second = workers.start(2, WORKER_SLOTS="3")
    user = api.new_user("killed")
    user.wait_terminal([user.enqueue("echo", {"n": n}) for n in range(6)], timeout=30)
    wait_until(
        lambda: total(scrape(api.base_url), "lanes_workers_live") == 2, timeout=20, what="two workers to be counted"
    )
    assert total(scrape(api.base_url), "lanes_worker_slots") == 6

    # When one of them is killed without a chance to say goodbye
    second.send_signal(signal.SIGKILL)
    second.wait()

    # Then it no longer counts as live, and what it did still counts
    samples = scrape(api.base_url)
    assert total(samples, "lanes_workers_live") == 1
    assert total(samples, "lanes_worker_slots") == 3
    assert total(samples, "lanes_requests_processed_total", function="worker") == before + 6
    assert first.poll() is None


@pytest.fixture
def status_with_two_processes(
    lanes_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """The status function alone under gunicorn with two worker processes, as a container runs it."""
    metrics_dir = tmp_path / "metrics" / "status"
    metrics_dir.mkdir(parents=True)
    (metrics_dir / "counter_999999.db").write_bytes(b"left over from an earlier run")
    port = free_port_block(1)
    env = {
        **lanes_env,
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "2",
        # One request at a time per process, so concurrent requests must spread over both.
        "WORKER_CLASS": "sync",
        "THREADS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "JWT_SECRET": "a-secret-only-this-test-uses-0123456789",
    }
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--no-control-socket", "app:create_app()"]
    master = subprocess.Popen(argv, env=env, cwd=ROOT / "functions" / "status")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: master.poll() is not None or Api(base_url).ready(), timeout=60, what="the status function")
        assert master.poll() is None, "the status function did not start"
        yield base_url, master, metrics_dir
    finally:
        master.terminate()
        master.wait(timeout=30)


def test_gunicorn_processes_count_as_one_function_even_when_one_dies(
    status_with_two_processes: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    base_url, master, metrics_dir = status_with_two_processes
    # The directory was emptied when the master started
    assert not (metrics_dir / "counter_999999.db").exists()

    # When requests arrive eight at a time until both processes have served some
    sent = 0
    while len(served_by(metrics_dir)) < 2 and sent < 400:
        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(pool.map(lambda _: requests.get(f"{base_url}/requests", timeout=10).status_code, range(8)))
        assert codes == [401] * 8
        sent += 8
    assert len(served_by(metrics_dir)) == 2, "both processes should have served requests"

    # Then every scrape, whichever process answers it, counts all of them
    counted = {total(scrape(base_url), "lanes_http_request_total", status="401") for _ in range(6)}
    assert counted == {sent}

    # When one gunicorn worker is killed, the master replaces it and the counts survive
    children = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout.split()
    victim = int(children[0])
    subprocess.run(["kill", "-KILL", str(victim)], check=True)
    wait_until(
        lambda: (
            len(subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout.split()) == 2
            and str(victim)
            not in subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout
        ),
        timeout=30,
        what="gunicorn to replace the killed process",
    )
    wait_until(lambda: Api(base_url).ready(), timeout=30, what="the status function again")
    assert total(scrape(base_url), "lanes_http_request_total", status="401") == sent


def served_by(metrics_dir: Path) -> set[str]:
    """PIDs of the processes that counted a request (each writes its own counter file)."""
    return {path.stem.split("_")[-1] for path in metrics_dir.glob("counter_*.db")}
