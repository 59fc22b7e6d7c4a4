"""observability/: the Prometheus files pass promtool, the alerts pass their unit tests, the
dashboards are well-formed, and every metric they use is documented and defined."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import dashboards
from deploy.prometheus import OBSERVABILITY, PROMTOOL
from deploy.template import ROOT

PROMETHEUS_DIR = OBSERVABILITY / "prometheus"
METRIC = re.compile(r"\blanes_[a-z_]+\b")
# Suffixes Prometheus adds to a histogram's, a counter's or a gauge histogram's name.
SUFFIXES = ("_bucket", "_count", "_sum", "_gcount", "_gsum", "_total")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_the_local_scrape_config_is_valid() -> None:
    result = promtool("check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_kubernetes_scrape_config_is_valid_apart_from_its_discovery(tmp_path: Path) -> None:
    # Debian's Prometheus is built without Kubernetes discovery, so promtool checks
    # everything else (relabelling, paths, rule files) with the discovery swapped out.
    config = yaml.safe_load((PROMETHEUS_DIR / "kubernetes.yml").read_text())
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
        job["static_configs"] = [{"targets": ["pod:8080"]}]
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    checked = tmp_path / "kubernetes.yml"
    checked.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", checked)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", PROMETHEUS_DIR / "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", PROMETHEUS_DIR / "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_sees_it_fire() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert alerts == fired


@pytest.mark.parametrize("name", dashboards.names())
def test_dashboard_is_well_formed(name: str) -> None:
    board = dashboards.load(name)
    assert board["uid"] == f"lanes-{name}" and board["title"].startswith("Lanes")
    assert any(v["type"] == "datasource" for v in board["templating"]["list"])
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == "${datasource}"


def test_the_dashboards_are_the_ones_the_provisioning_loads() -> None:
    provider = yaml.safe_load((OBSERVABILITY / "grafana/provisioning/dashboards/lanes.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    datasource = yaml.safe_load((OBSERVABILITY / "grafana/provisioning/datasources/lanes.yml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"
    assert dashboards.names() == ["functions", "lanes", "overview"]
    uids = [dashboards.load(name)["uid"] for name in dashboards.names()]
    assert len(set(uids)) == len(uids)


def used_metrics() -> set[str]:
    texts = [(PROMETHEUS_DIR / "alerts.yml").read_text()]
    texts += [json.dumps([q.expr for q in dashboards.panel_queries(name)]) for name in dashboards.names()]
    return {base_name(name) for text in texts for name in METRIC.findall(text)}


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix) and not name.endswith("_seconds_total"):
            return name[: -len(suffix)]
    return name


def documented_metrics() -> set[str]:
    """The metrics docs/metrics.md's tables list; its prose also names metrics that are gone."""
    section = (ROOT / "docs" / "metrics.md").read_text()
    return {base_name(name) for name in re.findall(r"^\| `(lanes_[a-z_]+)`", section, re.M)}


def test_every_metric_the_dashboards_and_alerts_use_is_documented() -> None:
    assert used_metrics() - documented_metrics() == set()


def test_every_metric_the_worker_and_the_status_function_define_is_documented() -> None:
    defining = [ROOT / "shared" / "lanes" / name for name in ("metrics.py", "lanestats.py")]
    defined = {name for path in defining for name in re.findall(r'"(lanes_[a-z_]+)"', path.read_text())}
    assert {"lanes_workers_live", "lanes_backlog_requests"} <= defined
    assert defined - documented_metrics() == set()


def test_every_documented_metric_is_defined_in_the_code() -> None:
    table_names = documented_metrics()
    code = "\n".join(path.read_text() for path in (ROOT / "shared" / "lanes").glob("*.py"))
    # prometheus-flask-exporter names its metrics from our prefix, `lanes`.
    exporter = {
        "lanes_http_request_duration_seconds",
        "lanes_http_request",
        "lanes_http_request_exceptions",
        "lanes_exporter_info",
    }
    assert table_names, "docs/metrics.md lost its metric table"
    missing = {name for name in table_names - exporter if f'"{name}"' not in code}
    assert missing == set()


def all_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard the rendered ConfigMaps carry: Lanes' own and the platform view."""
    paths = sorted((OBSERVABILITY / "grafana").glob("*/*.json"))
    return {path.stem: json.loads(path.read_text()) for path in paths}


def expressions(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in board["panels"] for target in panel.get("targets", ())]


@pytest.mark.parametrize("name", sorted(all_dashboards()))
def test_no_dashboard_turns_missing_series_into_zero(name: str) -> None:
    # `or vector(0)` shows 0 workers when the workers are simply not scraped.
    assert [e for e in expressions(all_dashboards()[name]) if "vector(0)" in e] == []


def le_matchers_prometheus_3_misses(expr: str) -> list[str]:
    """The `le` matchers of an expression that miss a bound written as Prometheus 3 writes it.

    Prometheus 3 writes classic histogram bounds as floats: le="100.0", where 2 wrote le="100"."""
    missed = [match.group(0) for match in re.finditer(r'\ble\s*(=|!=)\s*"[^"]*"', expr)]
    for pattern in re.findall(r'\ble\s*=~\s*"([^"]*)"', expr):
        bound = pattern.split("|")[0]
        if not all(re.fullmatch(pattern, form) for form in (bound, f"{bound}.0")):
            missed.append(pattern)
    return missed


@pytest.mark.parametrize("name", sorted(all_dashboards()))
def test_every_le_matcher_works_on_prometheus_2_and_3(name: str) -> None:
    assert [e for e in expressions(all_dashboards()[name]) if le_matchers_prometheus_3_misses(e)] == []


def test_the_le_matcher_check_tells_the_two_forms_apart() -> None:
    assert le_matchers_prometheus_3_misses('sum(x_bucket{le="100"})') == ['le="100"']
    assert le_matchers_prometheus_3_misses('sum(x_bucket{le=~"100"})') == ["100"]
    assert le_matchers_prometheus_3_misses('sum(x_bucket{le=~"100|100.0"})') == []
    assert le_matchers_prometheus_3_misses("histogram_quantile(0.5, sum by (le) (rate(x_bucket[1m])))") == []


def test_the_platform_dashboard_shows_replicas_keda_pod_starts_and_resources() -> None:
    board = all_dashboards()["platform"]
    assert board["uid"] == "lanes-platform" and board["title"].startswith("Lanes")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert set(variables["namespace"]["query"].split(",")) == {"lanes", "openfaas-fn"}
    text = " ".join(expressions(board))
    for metric in (
        "kube_deployment_status_replicas_available",
        "keda_scaler_metrics_value",
        "keda_scaler_active",
        "kube_pod_start_time",
        "container_cpu_usage_seconds_total",
        "kube_pod_container_resource_requests",
        "container_memory_working_set_bytes",
        "kube_pod_container_resource_limits",
    ):
        assert metric in text, metric
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for expr in expressions({"panels": [panel]}):
            assert 'namespace=~"$namespace"' in expr, expr
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
