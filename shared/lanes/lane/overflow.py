"""Deep lanes: a worker holds at most LANE_WINDOW requests of one lane; the rest of the
lane waits, in order, in an overflow queue of its own (docs/design.md §4.5.1).

A partition is consumed with a prefetch window, so a worker holds a bounded number of
its messages whatever the backlog. A lane that fills its share of the window would hide
the lanes behind it, so its further messages are *spilled*: published to the lane's
overflow queue (`<prefix>.overflow.<user>`, confirmed) and then acknowledged in the
partition, which frees the window at once. The lane is fed back from the overflow queue
one request at a time, taking its turns in the round like any other lane. The queue
exists only while the lane is deep: shallow lanes, the common case, pay nothing.

Order: the requests a lane had in memory when it went deep come before everything in its
overflow queue, and everything in the queue before what is still in the partition. The
*boundary*, the newest request kept in memory, is written down with the lane's entry in
`deep_lanes` before anything is spilled. A holder that takes the partition over keeps the
lane's partition messages in memory until it has seen the boundary (they are the ones its
predecessor held and did not finish), and spills from there on; if the boundary's outcome
is recorded, everything before it is settled too, and it spills at once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from lanes.broker import PartitionDelivery, PartitionSession
from lanes.db import translate_errors
from lanes.errors import BrokerError, DatabaseError

log = logging.getLogger("lanes.lane")

# A lane whose overflow queue could not be read is not fed again for this long, doubling
# up to the most: RabbitMQ answers a `basic.get` from a queue it cannot reach (a quorum
# queue whose leader died as it was declared, seen on 3.10.8) by closing the whole
# connection, and every lane of the process would pay for each try.
UNREADABLE_BACKOFF_SECONDS = 2.0
UNREADABLE_BACKOFF_MAX_SECONDS = 60.0


@dataclass
class DeepLane:
    partition: int
    # The boundary not yet seen again in the partition: until then, keep what arrives.
    keep_until: str | None = None


class DeepLaneRegistry:
    """`deep_lanes`: one document per deep lane, its partition and its boundary."""

    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self._deep = db.deep_lanes

    @translate_errors
    def mark(self, lane: str, partition: int, boundary: str | None) -> None:
        self._deep.replace_one({"_id": lane}, {"partition": partition, "boundary": boundary}, upsert=True)

    @translate_errors
    def of_partition(self, partition: int) -> dict[str, str | None]:
        return {doc["_id"]: doc.get("boundary") for doc in self._deep.find({"partition": partition})}

    @translate_errors
    def clear(self, lane: str) -> None:
        self._deep.find_one_and_delete({"_id": lane})


class Overflow:
    """The deep lanes of the partitions one worker holds, and which of them to feed next."""

    def __init__(self, registry: DeepLaneRegistry, window: int, settled: Callable[[str], bool], max_fed: int) -> None:
        self._registry = registry
        self._window = window
        self._settled = settled
        self._max_fed = max_fed
        self._deep: dict[str, DeepLane] = {}
        self._hungry: deque[str] = deque()  # deep lanes with nothing in memory, in turn order
        self.fed = 0  # requests fetched from overflow queues and not started yet
        # lane -> (not before, failures): kept across reconnections, which such a failure causes
        self._unreadable: dict[str, tuple[float, int]] = {}

    def taken(self, partition: int) -> None:
        """Learn the partition's deep lanes (DatabaseError: the partition must not be held)."""
        for lane, boundary in self._registry.of_partition(partition).items():
            keep = boundary if boundary is not None and not self._settled(boundary) else None
            self._deep[lane] = DeepLane(partition, keep)
            if keep is None:
                self._hungry.append(lane)

    def let_go(self, partition: int) -> None:
        """Forget a partition's deep lanes here; they stay deep for its next holder."""
        for lane in [lane for lane, deep in self._deep.items() if deep.partition == partition]:
            del self._deep[lane]
        self._hungry = deque(lane for lane in self._hungry if lane in self._deep)

    def reset(self) -> None:
        self._deep.clear()
        self._hungry.clear()
        self.fed = 0

    def spills(self, lane: str, partition: int, request_id: str, held: list[str], crowded: bool = False) -> bool:
        """Whether a partition message of the lane goes to its overflow queue. `held`: the
        lane's requests in memory, oldest first. Marks the lane deep when its window is full,
        or when the partition's window is `crowded` and the lane has a request held already:
        many lanes each within their own window could fill the partition's between them, and
        then nothing behind them (a newcomer) would be delivered until they drained."""
        deep = self._deep.get(lane)
        if deep is None:
            if len(held) < self._window and not (crowded and held):
                return False
            try:
                self._registry.mark(lane, partition, held[-1])
            except DatabaseError as error:  # it waits in memory instead: the window bounds it
                log.warning("cannot mark a deep lane: %r", error)
                return False
            self._deep[lane] = DeepLane(partition)
            return True
        if deep.keep_until is not None:
            if deep.keep_until == request_id:
                deep.keep_until = None  # what follows came after the predecessor went deep
            # Ids are time-ordered: one newer than the boundary was accepted after the lane
            # went deep, and its place is behind the overflow queue, even when the broker
            # gives it back ahead of the boundary (a quorum partition whose leader's node
            # died did: tests/faults/test_cluster.py).
            return request_id > deep.keep_until if deep.keep_until is not None else False
        return True

    def is_deep(self, lane: str) -> bool:
        return lane in self._deep

    def settled(self, lane: str, waiting: int) -> None:
        """The lane's running request settled; with nothing of it in memory it wants feeding."""
        deep = self._deep.get(lane)
        if deep is not None and deep.keep_until is None and waiting == 0 and lane not in self._hungry:
            self._hungry.append(lane)

    def next_to_feed(self, may_feed: Callable[[str, int], bool]) -> str | None:
        """The next deep lane to fetch one request for, in turn, while few enough are fed."""
        if self.fed >= self._max_fed:
            return None
        now = time.monotonic()
        for _ in range(len(self._hungry)):
            lane = self._hungry.popleft()
            readable = self._unreadable.get(lane, (0.0, 0))[0] <= now
            if readable and may_feed(lane, self._deep[lane].partition):
                return lane
            self._hungry.append(lane)
        return None

    def feed(
        self, session: PartitionSession, may_feed: Callable[[str, int], bool]
    ) -> Iterator[tuple[str, PartitionDelivery]]:
        """The next request of each deep lane whose turn comes, fetched from its overflow
        queue; a lane found empty there is shallow again, and its queue is deleted."""
        while (lane := self.next_to_feed(may_feed)) is not None:
            try:
                delivery = session.fetch(lane, self._deep[lane].partition)
            except BrokerError:
                self._unreadable_now(lane)
                raise
            self._unreadable.pop(lane, None)
            if delivery is not None:
                self.fed += 1
                yield lane, delivery
            elif session.drop_overflow(lane):
                self.drained(lane)

    def _unreadable_now(self, lane: str) -> None:
        failures = self._unreadable.get(lane, (0.0, 0))[1] + 1
        pause = min(UNREADABLE_BACKOFF_MAX_SECONDS, UNREADABLE_BACKOFF_SECONDS * 2 ** (failures - 1))
        self._unreadable[lane] = (time.monotonic() + pause, failures)
        if len(self._unreadable) > 10_000:  # a bound; a lane forgotten here is only tried sooner
            self._unreadable.pop(next(iter(self._unreadable)))
        log.warning("cannot read lane %s's overflow queue (try %d); its next try in %.0f s", lane, failures, pause)

    def drained(self, lane: str) -> None:
        """The lane's overflow queue is gone: it is shallow again."""
        self._deep.pop(lane, None)
        try:
            self._registry.clear(lane)
        except DatabaseError as error:  # its next holder finds the entry stale and spills anew
            log.warning("cannot clear a drained lane's entry: %r", error)
