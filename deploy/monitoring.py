"""Monitoring objects rendered beside the functions: PodMonitors, a PrometheusRule, dashboards.

Every pod is scraped directly (each replica its own series), by the Prometheus
Operator through the PodMonitors or by any Prometheus through the pods'
`prometheus.io/*` annotations (observability/prometheus/kubernetes.yml). Both set
`job="lanes"`, the job the alerts and dashboards read.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from deploy.prometheus import OBSERVABILITY

ALERTS = OBSERVABILITY / "prometheus" / "alerts.yml"
DASHBOARDS = OBSERVABILITY / "grafana" / "dashboards"
PLATFORM_DASHBOARDS = OBSERVABILITY / "grafana" / "platform"
JOB = "lanes"
# The label Grafana's dashboard sidecar (kube-prometheus-stack, the Grafana chart) looks for.
DASHBOARD_LABEL = {"grafana_dashboard": "1"}

Manifest = dict[str, Any]


def scrape_annotations(port: int, path: str = "/metrics") -> dict[str, str]:
    """The annotations observability/prometheus/kubernetes.yml keeps pods by."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": path}


def pod_monitor(name: str, namespace: str, meta_labels: dict[str, str], names: list[str], port: str) -> Manifest:
    """Scrape the container port named `port` of every pod whose app.kubernetes.io/name is one
    of `names`. By name, which every prometheus-operator release reads: `portNumber` exists
    only from v0.79 (prometheus-operator CHANGELOG, 0.79.0)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {
            "selector": {
                "matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": sorted(names)}]
            },
            "namespaceSelector": {"matchNames": [namespace]},
            "podMetricsEndpoints": [
                {
                    "port": port,
                    "path": "/metrics",
                    "relabelings": [
                        {"action": "replace", "targetLabel": "job", "replacement": JOB},
                        {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "pod"},
                    ],
                }
            ],
        },
    }


def prometheus_rule(name: str, namespace: str, meta_labels: dict[str, str]) -> Manifest:
    """observability/prometheus/alerts.yml as a PrometheusRule: the same groups, unchanged."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {"groups": yaml.safe_load(ALERTS.read_text())["groups"]},
    }


def dashboard_config_maps(prefix: str, namespace: str, meta_labels: dict[str, str]) -> list[Manifest]:
    """One ConfigMap per Grafana dashboard, labelled for Grafana's dashboard sidecar."""
    paths = sorted([*DASHBOARDS.glob("*.json"), *PLATFORM_DASHBOARDS.glob("*.json")])
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"{prefix}-dashboard-{path.stem}",
                "namespace": namespace,
                "labels": {**meta_labels, **DASHBOARD_LABEL},
            },
            # Compact JSON: `kubectl apply` keeps a copy in an annotation limited to 256 KiB.
            "data": {f"{prefix}-{path.stem}.json": json.dumps(json.loads(path.read_text()), separators=(",", ":"))},
        }
        for path in paths
    ]
