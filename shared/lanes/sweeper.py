"""The sweeper: the one process of a deployment that purges history (lanes.retention).

Whichever process holds the exclusive consumer of `<prefix>.sweeper` sweeps; the
status function (always running, also while the worker is at zero) and every worker
run a candidate, so retention never waits for unrelated traffic, and two processes
never delete the same documents.

The lane protocol needs no repairs: a request is in its partition from its confirm
on, and runs once a worker holds the partition; nothing has to be woken, and no
queue expires with requests in it (docs/design.md §4).
"""

from __future__ import annotations

import logging
import random
import threading

from lanes.broker import Leadership, QueueNames
from lanes.db import connect
from lanes.errors import DatabaseError
from lanes.retention import Reaper
from lanes.settings import Settings

log = logging.getLogger("lanes.sweeper")


def run_sweeper(settings: Settings, stop: threading.Event) -> None:
    """Reap what is past retention every SWEEP_INTERVAL_SECONDS while this process leads;
    until `stop`."""
    leadership = Leadership(settings, QueueNames.of(settings).sweeper)
    reaper = Reaper(connect(settings), settings)
    interval = settings.sweep_interval_seconds
    try:
        while not stop.wait(interval * random.uniform(0.8, 1.2)):
            if not leadership.held():
                continue
            try:
                # Half an interval at most, so that one pass never runs into the next.
                reaper.reap(budget_seconds=interval / 2)
            except DatabaseError as error:
                log.warning("retention pass failed: %r", error)
    finally:
        leadership.resign()


def start_sweeper(settings: Settings) -> threading.Event:
    """Run the sweeper in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=run_sweeper, args=(settings, stop), name="lanes-sweeper", daemon=True).start()
    return stop
