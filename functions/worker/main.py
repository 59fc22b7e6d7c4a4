"""The worker function: runs lanes until SIGTERM. Triggered by the ready queue's backlog."""

from __future__ import annotations

from lanes.actions import build_registry
from lanes.logs import configure_logging
from lanes.multiproc import prune_dead, use_metrics_dir
from lanes.settings import load_settings


def main() -> None:
    # prometheus_client picks in-memory or file-backed values when first imported, so
    # the metrics directory is chosen before anything imports it: every worker process
    # on a host writes into the same one, and /metrics adds them up.
    prune_dead(use_metrics_dir("worker"))
    settings = load_settings()
    configure_logging("worker", settings.log_level)

    from lanes import exposition, metrics
    from lanes.worker import run

    if settings.metrics_port:
        exposition.serve(settings, "worker", metrics.REGISTRY)
    metrics.worker_started(settings.worker_slots, build_registry(settings).names)
    try:
        run(settings)
    finally:
        metrics.worker_stopped()


if __name__ == "__main__":
    main()
