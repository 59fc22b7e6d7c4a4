"""Which partitions a worker process holds: a fair share of them, and work passed on to
where slots are free (docs/design.md §4.5). Part of the dispatcher (lanes.lane.dispatcher),
which runs it once a second in its thread, the only one that touches the connection."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable

from lanes.broker import PartitionSession, QueueNames
from lanes.errors import DatabaseError
from lanes.lane.overflow import Overflow
from lanes.lane.scheduler import LaneScheduler, LanesSeen
from lanes.settings import Settings

log = logging.getLogger("lanes.lane")

# How often a worker process looks at how many processes share the partitions.
BALANCE_SECONDS = 1.0
# A partition passed on to a spare process is left free for this long (the spare one
# balances within a second), then taken back by the one that passed it if nobody did.
PASSED_ON_SECONDS = 1.5
# A spare process looks for free partitions while lanes waited elsewhere this long ago.
WAITING_SEEN_SECONDS = 3.0


class Balancing:
    """The dispatcher's holding of partitions: what it takes, lets go and passes on."""

    _settings: Settings
    _names: QueueNames
    _session: PartitionSession
    _scheduler: LaneScheduler
    _overflow: Overflow
    _take_partition: Callable[[PartitionSession, int], int | None]
    _report_lanes: Callable[[LanesSeen], None]
    _idle: int  # slots free
    _epochs: dict[int, int]  # partition held -> its holder epoch
    _draining: set[int]  # held partitions whose lanes start nothing until they are let go
    _waiting_shown: bool
    _waiting_since: float | None  # lanes have waited for a slot here since, at every balance
    _balanced_at: float
    _passed_on: dict[int, float]  # partition -> when this process passed it on
    _waiting_elsewhere_at: float

    def _running_in(self, partition: int) -> bool:
        return self._scheduler.running_in(partition)

    def _balance(self) -> None:
        """Hold a fair share of the partitions, and pass work on to where slots are free.

        Each process takes free partitions up to its share, ceil(partitions / processes),
        and lets the extra ones go while another process is *hungry* (a free slot, less
        than its share), keeping its busiest. Beyond shares, lanes must not wait for a
        slot in one process while another has slots free: a process whose slots are all
        busy and whose lanes have waited for a balance passes on one partition a balance
        in which nothing runs (so it goes at once, its messages back at their partition's
        head in order) while another shows *spare* (free slots, no lane waiting); a spare
        process takes free partitions beyond its share while lanes wait elsewhere
        (docs/design.md §4.5)."""
        now = time.monotonic()
        if now - self._balanced_at < BALANCE_SECONDS:
            return
        self._balanced_at = now
        seen = self._scheduler.summary()
        self._report_lanes(seen)
        self._waiting_shown = seen.lanes_waiting > 0
        if not self._waiting_shown:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = now
        share = math.ceil(self._settings.lane_partitions / self._session.workers())
        held = [p for p in self._session.held if p not in self._draining]
        spare = self._idle > 0 and not self._waiting_shown
        hungry = self._idle > 0 and len(held) < share
        self._session.show(busy=seen.lanes_with_work > 0, waiting=self._waiting_shown, spare=spare, hungry=hungry)
        if self._session.others_showing(self._names.waiting_workers):
            self._waiting_elsewhere_at = now
        if len(held) < share:
            self._take_free(share - len(held), held)
        elif spare and now - self._waiting_elsewhere_at < WAITING_SEEN_SECONDS:
            self._take_free(1, held)
        # Lanes waiting for one balance, not a moment: a partition passed on costs its
        # messages' redelivery and a new holder epoch.
        waited = self._waiting_since is not None and now - self._waiting_since >= BALANCE_SECONDS
        if len(held) > share and self._session.others_showing(self._names.hungry_workers):
            self._let_go_extra(held, share)
        elif waited and self._idle == 0 and self._session.others_showing(self._names.spare_workers):
            self._pass_on(held)

    def _take_free(self, wanted: int, held: list[int]) -> None:
        """Take up to `wanted` free partitions, not one this process passed on just now."""
        count = self._settings.lane_partitions
        now = time.monotonic()
        start = random.randrange(count)
        taken = 0
        for index in [(start + i) % count for i in range(count)]:
            if taken >= wanted:
                return
            if now - self._passed_on.get(index, float("-inf")) < PASSED_ON_SECONDS:
                continue
            if index not in self._session.held and self._take(index):
                held.append(index)
                taken += 1

    def _let_go_extra(self, held: list[int], share: int) -> None:
        """Keep the `share` busiest partitions; an idle one goes at once, a busy one drains."""
        busiest = sorted(held, key=lambda p: (self._running_in(p), self._scheduler.waiting_in(p)), reverse=True)
        for index in busiest[share:]:
            held.remove(index)
            self._draining.add(index)
            if not self._running_in(index):
                self._let_go(index)

    def _pass_on(self, held: list[int]) -> None:
        """Let go of the partition with the most requests waiting and none running, if any."""
        movable = [p for p in held if not self._running_in(p) and self._scheduler.waiting_in(p)]
        if movable:
            index = max(movable, key=self._scheduler.waiting_in)
            held.remove(index)
            self._passed_on[index] = time.monotonic()
            self._let_go(index)

    def _take(self, partition: int) -> bool:
        """Take a free partition under a new holder epoch, drawn before consuming so that
        everything this holding starts carries it."""
        try:
            epoch = self._take_partition(self._session, partition)
        except DatabaseError as error:
            log.warning("cannot take partition %d: %r", partition, error)
            return False
        if epoch is None:
            return False
        try:
            self._overflow.taken(partition)
        except DatabaseError as error:  # its deep lanes unknown, its order could not be kept
            log.warning("cannot read partition %d's deep lanes: %r", partition, error)
            self._session.let_go(partition)
            return False
        self._epochs[partition] = epoch
        return True

    def _let_go(self, partition: int) -> None:
        self._draining.discard(partition)
        for turn in self._scheduler.drop_partition(partition):
            if turn.delivery.overflow:  # fetched and not started: back to its queue's head
                self._session.give_back(turn.delivery)
                self._overflow.fed -= 1
        self._session.let_go(partition)
        self._epochs.pop(partition, None)
        self._overflow.let_go(partition)
