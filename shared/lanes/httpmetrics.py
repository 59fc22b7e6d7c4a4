"""HTTP metrics for every function (prometheus-flask-exporter) and its GET /metrics view."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Flask, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from lanes.exposition import scrape_registry

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
from lanes.settings import Settings

# Probes and scrapes say nothing about traffic and would drown it.
UNTRACKED_PATHS = (r"^/metrics$", r"^/healthz$", r"^/readyz$")
_COLLECTORS = "lanes.metrics_collectors"
# The methods a label may name. Any other token is a valid HTTP method to a server, so
# without this bound every made-up method would add series to every HTTP metric.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"


def path(request: Request) -> str:
    """The route a request matched (`/requests/<request_id>`), never the raw path: ids are unbounded.

    Named `path` because prometheus-flask-exporter names the label after this function.
    """
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def instrument(app: Flask, function: str, settings: Settings) -> None:
    """HTTP metrics for every route of `app` (prometheus-flask-exporter), and GET /metrics."""
    from prometheus_flask_exporter import PrometheusMetrics

    app.wsgi_app = bound_methods(app.wsgi_app)  # type: ignore[method-assign,assignment]
    # A registry of its own: two apps in one process must not collide in the global one.
    own = CollectorRegistry()
    PrometheusMetrics(
        app,
        path=None,
        registry=own,
        defaults_prefix="lanes",
        group_by=path,
        excluded_paths=list(UNTRACKED_PATHS),
    )
    extra: list[Collector] = []
    app.extensions[_COLLECTORS] = extra

    def metrics() -> Response:
        body = generate_latest(scrape_registry(settings, function, own, extra))
        return Response(body, content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])


def bound_methods(wsgi_app: WSGIApplication) -> WSGIApplication:
    """Present any method outside KNOWN_METHODS to Flask as OTHER (answered 405 or 404 by
    routing): prometheus-flask-exporter labels by request.method and has no hook to bound it."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET").upper() not in KNOWN_METHODS:
            environ["REQUEST_METHOD"] = OTHER_METHOD
        return wsgi_app(environ, start_response)

    return app


def add_collector(app: Flask, collector: Collector) -> None:
    """Add metrics computed at scrape time (the status function's lane statistics) to GET /metrics."""
    app.extensions[_COLLECTORS].append(collector)
