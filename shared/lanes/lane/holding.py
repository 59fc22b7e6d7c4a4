"""Taking a partition: free, under a new holder epoch, and — for quorum partitions — by one
process at a time.

A classic partition refuses a second exclusive consumer, so two processes that race for
it cannot both hold it. A quorum queue ignores exclusivity: a quorum partition is a
single-active-consumer queue, and two processes that both see it free and both consume
would leave one of them a standby that believes it holds the partition (and so takes one
fewer, which nobody then holds). So a quorum partition is taken under a short lock in
the database (an insert under `take:<partition>`): whoever holds it checks that the
partition is free and consumes before letting the lock go, and whoever comes next sees
its consumer. A lock left by a process that died mid-take lapses after TAKE_LOCK_SECONDS.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from lanes.broker import PartitionSession, QueueNames
from lanes.db import now, translate_errors
from lanes.lane.attempts import Attempts

TAKE_LOCK_SECONDS = 10.0


class TakeLocks:
    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self._locks = db.take_locks

    @translate_errors
    def acquire(self, partition: str) -> bool:
        key = f"take:{partition}"
        try:
            self._locks.insert_one({"_id": key, "at": now()})
            return True
        except DuplicateKeyError:
            held = self._locks.find_one({"_id": key})
        if held is not None and now() - held["at"] < timedelta(seconds=TAKE_LOCK_SECONDS):
            return False
        # Lapsed: its taker died mid-take. Remove that one lock (not one made since), try again.
        self._locks.find_one_and_delete({"_id": key, "at": held["at"] if held else None})
        try:
            self._locks.insert_one({"_id": key, "at": now()})
            return True
        except DuplicateKeyError:
            return False

    @translate_errors
    def release(self, partition: str) -> None:
        self._locks.find_one_and_delete({"_id": f"take:{partition}"})


def take_partition(
    session: PartitionSession, index: int, *, names: QueueNames, attempts: Attempts, locks: TakeLocks | None
) -> int | None:
    """Consume partition `index` if it is free; its new holder epoch, or None (held by
    another, or taken by another meanwhile). `locks`: for quorum partitions, else None.
    Raises DatabaseError or BrokerError."""
    name = names.partition(index)
    if not session.free(index):
        return None
    if locks is not None and not locks.acquire(name):
        return None
    try:
        if locks is not None and not session.free(index):  # taken while we waited for the lock
            return None
        epoch = attempts.draw_epoch(name)
        return epoch if session.take(index) else None
    finally:
        if locks is not None:
            locks.release(name)
