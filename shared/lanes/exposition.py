"""What GET /metrics answers: this function's processes, and where functions share a host, all of them.

Every Lanes process writes its metric values to files in its function's
multiprocess directory (lanes.multiproc). A scrape merges those files per
function and labels every sample with `function`, so the same metric from two
functions stays two series. Two deployments, one mechanism:

* Kubernetes (Knative, OpenFaaS): each pod has its own directory and serves
  its own /metrics; Prometheus finds the pods by their annotations.
* One host (`make run`, the tests): the status function is also given
  METRICS_ROOT, the parent of every function's directory, so the base URL's
  /metrics shows every function and every worker process without any
  process calling another (docs/observability.md says why).

The HTTP side (prometheus-flask-exporter, the /metrics view) is in
lanes.httpmetrics: the worker has no Flask.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from lanes import multiproc
from lanes.settings import Settings


def sources(settings: Settings, function: str) -> dict[str, Path]:
    """The multiprocess directories a scrape reads, by function name."""
    found: dict[str, Path] = {}
    if settings.metrics_root and Path(settings.metrics_root).is_dir():
        for path in sorted(Path(settings.metrics_root).iterdir()):
            if path.is_dir():
                found[path.name] = path
    if settings.prometheus_multiproc_dir:
        found[function] = Path(settings.prometheus_multiproc_dir)
    return found


class DirectoryCollector:
    """Merges each function's multiprocess files and labels every sample with its function."""

    def __init__(self, sources: Callable[[], dict[str, Path]]) -> None:
        self._sources = sources

    def describe(self) -> list[Metric]:
        return []  # names vary with what the processes wrote; nothing to check up front

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for function, path in self._sources().items():
            multiproc.prune_dead(path)
            for metric in _merge(path):
                family = families.get(metric.name)
                if family is None:
                    family = families[metric.name] = Metric(metric.name, metric.documentation, metric.type)
                for sample in metric.samples:
                    family.samples.append(sample._replace(labels={**sample.labels, "function": function}))
        yield from families.values()


def _merge(path: Path) -> Iterable[Metric]:
    files = glob.glob(os.path.join(path, "*.db"))
    try:
        return list(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]
    except FileNotFoundError:
        return []  # the directory was reset under us (its function restarted): next scrape


class RegistryCollector:
    """A registry's metrics, for a process that has no multiprocess directory (in-process tests)."""

    def __init__(self, registry: CollectorRegistry, function: str) -> None:
        self._registry = registry
        self._function = function

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            for index, sample in enumerate(metric.samples):
                metric.samples[index] = sample._replace(labels={**sample.labels, "function": self._function})
            yield metric


def scrape_registry(
    settings: Settings, function: str, fallback: CollectorRegistry, extra: Iterable[Collector] = ()
) -> CollectorRegistry:
    """A registry for one scrape: the merged directories (or the in-process fallback), then extras."""
    scrape = CollectorRegistry(auto_describe=False)
    if settings.prometheus_multiproc_dir or settings.metrics_root:
        scrape.register(DirectoryCollector(lambda: sources(settings, function)))
    else:
        scrape.register(RegistryCollector(fallback, function))
    for collector in extra:
        scrape.register(collector)
    return scrape


def serve(settings: Settings, function: str, fallback: CollectorRegistry) -> None:
    """Serve this process's metrics on METRICS_PORT (a worker pod's scrape target), in a thread."""
    start_http_server(settings.metrics_port, registry=scrape_registry(settings, function, fallback))
