"""Worker metrics, their merge across processes, and the HTTP instrumentation of a function."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lanes import metrics
from lanes.exposition import DirectoryCollector, scrape_registry
from lanes.settings import Settings
from lanes.web import create_base_app

# A worker process in miniature: the same calls the worker makes, into a shared directory.
WORKER = textwrap.dedent(
    """
    import sys, time
    from lanes import metrics
    metrics.worker_started(int(sys.argv[1]), ["echo"])
    record = {"action": "echo"}
    for _ in range(int(sys.argv[2])):
        metrics.attempt_finished(record, True, 0.01)
        metrics.request_settled(record, "done")
    metrics.slot_busy(1)
    if len(sys.argv) > 4:
        metrics.lanes_seen(*map(int, sys.argv[4:8]))
    print("ready", flush=True)
    if sys.argv[3] == "stay":
        time.sleep(60)
    """
)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text, name).get(tuple(sorted(labels.items())))


def start_worker(
    metrics_dir: Path, slots: int, done: int, stay: bool, lanes: tuple[int, int, int, int] | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    argv = [sys.executable, "-c", WORKER, str(slots), str(done), "stay" if stay else "exit"]
    argv += [str(figure) for figure in lanes or ()]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def test_worker_processes_add_up_and_a_killed_one_keeps_its_counts_but_not_its_slots(tmp_path: Path) -> None:
    # Given two worker processes writing into one directory, one of which died without a word
    gone = start_worker(tmp_path, slots=2, done=3, stay=False)
    gone.wait()
    alive = start_worker(tmp_path, slots=4, done=5, stay=True)
    try:
        collector = DirectoryCollector(lambda: {"worker": tmp_path})

        # When the directory is scraped
        text = generate_latest(_registry_of(collector)).decode()

        # Then counts add up across both, while only the live process's gauges count
        done = value(text, "lanes_requests_processed_total", action="echo", outcome="done", function="worker")
        assert done == 8
        assert value(text, "lanes_request_execution_seconds_count", action="echo", outcome="ok", function="worker") == 8
        assert value(text, "lanes_workers_live", function="worker") == 1
        assert value(text, "lanes_worker_slots", function="worker") == 4
        assert value(text, "lanes_worker_slots_busy", function="worker") == 1
    finally:
        alive.send_signal(signal.SIGKILL)
        alive.wait()
    text = generate_latest(_registry_of(collector)).decode()
    assert value(text, "lanes_requests_processed_total", action="echo", outcome="done", function="worker") == 8
    assert value(text, "lanes_workers_live", function="worker") is None


def test_lanes_seen_by_workers_add_up_but_the_deepest_lane_is_the_deepest_of_all(tmp_path: Path) -> None:
    # Given two live worker processes, each holding its own partitions' lanes
    first = start_worker(tmp_path, slots=2, done=0, stay=True, lanes=(5, 2, 9, 4))
    second = start_worker(tmp_path, slots=2, done=0, stay=True, lanes=(3, 1, 20, 17))
    collector = DirectoryCollector(lambda: {"worker": tmp_path})
    try:
        # When the directory is scraped
        text = generate_latest(_registry_of(collector)).decode()

        # Then the counts are summed over the processes and the deepest lane is the maximum
        assert value(text, "lanes_worker_lanes", function="worker") == 8
        assert value(text, "lanes_worker_lanes_waiting", function="worker") == 3
        assert value(text, "lanes_worker_requests_waiting", function="worker") == 29
        assert value(text, "lanes_worker_lane_depth_max", function="worker") == 17

        # When the process with the deepest lane is killed, its lanes leave the figures
        second.send_signal(signal.SIGKILL)
        second.wait()
        text = generate_latest(_registry_of(collector)).decode()
        assert value(text, "lanes_worker_lanes", function="worker") == 5
        assert value(text, "lanes_worker_requests_waiting", function="worker") == 9
        assert value(text, "lanes_worker_lane_depth_max", function="worker") == 4
    finally:
        for process in (first, second):
            process.send_signal(signal.SIGKILL)
            process.wait()
    text = generate_latest(_registry_of(collector)).decode()
    assert value(text, "lanes_worker_lanes", function="worker") is None


def test_a_worker_starts_seeing_no_lanes() -> None:
    metrics.lanes_seen(4, 1, 6, 3)
    metrics.worker_started(1, ["echo"])
    for name in ("lanes_worker_lanes", "lanes_worker_lanes_waiting", "lanes_worker_requests_waiting"):
        assert metrics.REGISTRY.get_sample_value(name) == 0
    assert metrics.REGISTRY.get_sample_value("lanes_worker_lane_depth_max") == 0


def _registry_of(collector: DirectoryCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def test_two_functions_with_the_same_metric_stay_apart_by_their_function_label(tmp_path: Path) -> None:
    for function, done in (("worker", 2), ("other", 7)):
        (tmp_path / function).mkdir()
        start_worker(tmp_path / function, slots=1, done=done, stay=False).wait()
    settings = Settings(metrics_root=str(tmp_path))

    text = generate_latest(scrape_registry(settings, "status", metrics.REGISTRY)).decode()

    assert value(text, "lanes_requests_processed_total", action="echo", outcome="done", function="worker") == 2
    assert value(text, "lanes_requests_processed_total", action="echo", outcome="done", function="other") == 7
    # One family, listed once: Prometheus refuses a family that appears twice.
    assert text.count("# TYPE lanes_requests_processed_total counter") == 1


def test_queue_wait_is_measured_once_from_acceptance_to_the_first_start() -> None:
    metrics.worker_started(1, ["echo"])
    created = datetime(2026, 1, 1, tzinfo=UTC)
    before = metrics.REGISTRY.get_sample_value("lanes_request_queue_wait_seconds_count", {"action": "echo"}) or 0
    total = metrics.REGISTRY.get_sample_value("lanes_request_queue_wait_seconds_sum", {"action": "echo"}) or 0

    first = {"action": "echo", "attempts": 1, "created_at": created, "started_at": created + timedelta(seconds=2.5)}
    metrics.request_started(first)
    metrics.request_started({**first, "attempts": 2})  # a retry: the wait was counted already

    count = metrics.REGISTRY.get_sample_value("lanes_request_queue_wait_seconds_count", {"action": "echo"})
    assert count == before + 1
    assert metrics.REGISTRY.get_sample_value(
        "lanes_request_queue_wait_seconds_sum", {"action": "echo"}
    ) == pytest.approx(total + 2.5)


@pytest.mark.parametrize("action", ["resize-every-image", None, 42, ""])
def test_an_action_the_registry_does_not_know_is_counted_as_other(action: object) -> None:
    metrics.worker_started(1, ["echo", "sleep"])
    assert metrics.action_label({"action": action}) == "other"
    assert metrics.action_label({"action": "sleep"}) == "sleep"


def test_http_metrics_are_labelled_by_route_never_by_raw_path_and_skip_probes() -> None:
    # Given a function with a parametrised route, and no multiprocess directory (in-process)
    app = create_base_app("status", Settings())
    app.add_url_rule("/requests/<request_id>", "one", lambda request_id: ({"id": request_id}, 200))
    client = app.test_client()

    # When it serves two different ids, a probe and an unknown path
    for request_id in ("a" * 32, "b" * 32):
        assert client.get(f"/requests/{request_id}").status_code == 200
    client.get("/healthz")
    assert client.get("/no/such/route").status_code == 404
    text = client.get("/metrics").get_data(as_text=True)

    # Then the two ids are one series, under the route's rule
    assert value(text, "lanes_http_request_duration_seconds_count", function="status", method="GET",
                 path="/requests/<request_id>", status="200") == 2  # fmt: skip
    assert value(text, "lanes_http_request_total", function="status", method="GET", status="200") == 2
    assert value(text, "lanes_http_request_total", function="status", method="GET", status="404") == 1
    assert "a" * 32 not in text and "/healthz" not in text
    assert value(text, "lanes_http_request_duration_seconds_count", function="status", method="GET",
                 path="unmatched", status="404") == 1  # fmt: skip


def test_two_apps_in_one_process_do_not_collide() -> None:
    first, second = create_base_app("register", Settings()), create_base_app("login", Settings())
    first.test_client().get("/nothing")
    text = second.test_client().get("/metrics").get_data(as_text=True)
    assert value(text, "lanes_http_request_total", function="login", method="GET", status="404") is None


def test_live_gauge_files_of_dead_processes_are_pruned_but_counters_kept(tmp_path: Path) -> None:
    from lanes.multiproc import prune_dead

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in (f"gauge_livesum_{dead.pid}.db", f"counter_{dead.pid}.db", f"gauge_livesum_{os.getpid()}.db"):
        (tmp_path / name).write_bytes(b"")
    prune_dead(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead.pid}.db", f"gauge_livesum_{os.getpid()}.db"]
    )


def test_the_worker_imports_its_metrics_without_flask() -> None:
    # The worker's image installs only its own requirements, which have no Flask.
    script = textwrap.dedent(
        """
        import sys
        for name in ("flask", "werkzeug", "prometheus_flask_exporter", "gunicorn"):
            sys.modules[name] = None
        import lanes.worker, lanes.exposition, lanes.metrics
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_invented_methods_are_one_other_label_and_get_the_error_shape() -> None:
    # Given a function with one route
    app = create_base_app("enqueue", Settings())
    app.add_url_rule("/enqueue", "enqueue", lambda: ({}, 202), methods=["POST"])
    client = app.test_client()

    # When clients send many made-up methods, to a route and to nowhere
    for n in range(50):
        response = client.open("/enqueue" if n % 2 else "/nowhere", method=f"ZABC{n}")
        assert response.status_code in (404, 405) and response.get_json()["error"]
    text = client.get("/metrics").get_data(as_text=True)

    # Then every series names a known method or OTHER, and no invented one
    methods = {dict(labels)["method"] for labels in samples(text, "lanes_http_request_total")}
    assert methods == {"OTHER"}
    assert "ZABC" not in text
