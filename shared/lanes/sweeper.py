"""The sweeper: repairs what a crash between two steps of the lane protocol can leave.

One sweeper works at a time, whichever process holds the exclusive consumer of
`<prefix>.sweeper`; the status function (always running, also while the worker is at
zero) and every worker run one, so a repair never waits for unrelated traffic.

Each sweep costs what the lanes with work cost, never what history holds: one
management API listing of the lanes that hold messages, and for each lane that has
work but no holder, one look at its bell. It

- keeps lanes with work alive: a lane is declared again (restarting its idle timer),
  so the broker never expires a lane that holds requests, whatever the workers do
  (the management API's figures lag by up to 5 s, so LANE_IDLE_SECONDS must be well
  above that; it is 600 s by default);
- wakes lanes whose wake-up was lost: work, no holder, and either a silent bell (a
  broker restart drops the transient ring) or no token waiting anywhere, seen on two
  sweeps in a row. A spare token is harmless (the lane's consumer is exclusive).

After each sweep the same process runs a retention pass (lanes.retention), bounded in
time, so history is purged once, by one process, also while no worker runs.
"""

from __future__ import annotations

import logging
import random
import threading
import urllib.error
from dataclasses import dataclass
from typing import Any

from lanes.broker import ChannelPool, Leadership, QueueMissing, QueueNames, lane_arguments
from lanes.db import connect
from lanes.errors import BrokerError, DatabaseError
from lanes.lanestats import ManagementApi
from lanes.protocol import ring, send_token
from lanes.retention import Reaper
from lanes.settings import Settings

log = logging.getLogger("lanes.sweeper")

MAX_PAGES = 40  # of ManagementApi's pages: 20,000 lanes with work per sweep


@dataclass(frozen=True)
class LaneState:
    name: str
    ready: int
    consumers: int


class Sweeper:
    def __init__(self, settings: Settings, api: ManagementApi | None = None) -> None:
        self._settings = settings
        self._names = QueueNames.of(settings)
        self._api = api or ManagementApi(settings)
        self._pool = ChannelPool(settings, max_idle=1)
        self._unheld_before: set[str] = set()

    def sweep(self) -> int:
        """One pass; returns how many lanes it woke."""
        lanes = self._lanes_with_work()
        with self._pool.channel() as channel:
            for lane in lanes:
                channel.declare(lane.name, lane_arguments(self._settings))
        unheld = {lane.name for lane in lanes if lane.consumers == 0}
        suspects = unheld & self._unheld_before
        self._unheld_before = unheld
        if not suspects:
            return 0
        no_token_waiting = self._tokens_waiting() == 0
        woken = 0
        with self._pool.channel() as channel:
            for name in sorted(suspects):
                user_id = self._names.lane_owner(name)
                if user_id is None:
                    continue
                if ring(channel, self._names, self._settings, user_id) or no_token_waiting:
                    send_token(channel, self._names, user_id)
                    woken += 1
        if woken:
            log.info("sweep woke %d lanes", woken)
        return woken

    def _lanes_with_work(self) -> list[LaneState]:
        regex = "^" + self._names.lane("").replace(".", r"\.")
        lanes: list[LaneState] = []
        for page in range(1, MAX_PAGES + 1):
            listing = self._api.queues(regex, page, columns="name,messages_ready,consumers", most="messages_ready")
            items: list[dict[str, Any]] = listing.get("items") or []
            with_work = [item for item in items if int(item.get("messages_ready") or 0) > 0]
            lanes.extend(
                LaneState(item["name"], int(item["messages_ready"]), int(item.get("consumers") or 0))
                for item in with_work
            )
            # Sorted by work, most first: the first lane without ends the lanes with work.
            if page >= int(listing.get("page_count") or 0) or len(with_work) < len(items):
                break
        return lanes

    def _tokens_waiting(self) -> int:
        try:
            ready = self._api.queue(self._names.ready)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return 0
            raise
        return int(ready.get("messages_ready") or 0)


def run_sweeper(settings: Settings, stop: threading.Event) -> None:
    """Sweep, then reap what is past retention, every SWEEP_INTERVAL_SECONDS while this
    process leads; until `stop`. The election that keeps two sweepers from repairing the
    same lane also keeps two reapers from deleting the same documents."""
    leadership = Leadership(settings, QueueNames.of(settings).sweeper)
    sweeper = Sweeper(settings)
    reaper = Reaper(connect(settings), settings)
    # At least three sweeps per idle period, so that a lane with work is declared again
    # long before the broker would expire it.
    interval = min(settings.sweep_interval_seconds, settings.lane_idle_seconds / 3)
    try:
        while not stop.wait(interval * random.uniform(0.8, 1.2)):
            if not leadership.held():
                continue
            try:
                sweeper.sweep()
            except (BrokerError, QueueMissing, OSError, ValueError) as error:
                log.warning("sweep failed: %r", error)
            try:
                # Half an interval at most, so a backlog of history never delays repairs long.
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
