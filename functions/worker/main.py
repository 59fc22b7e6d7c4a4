"""The worker function: runs lanes until SIGTERM. Triggered by the ready queue's backlog."""

from __future__ import annotations

from lanes.logs import configure_logging
from lanes.settings import load_settings
from lanes.worker import run


def main() -> None:
    settings = load_settings()
    configure_logging("worker", settings.log_level)
    run(settings)


if __name__ == "__main__":
    main()
