"""Admission on the enqueue side: one confirmed publish per request to its lane's
partition, and the per-process ledger that gives a lane's depth and `position`."""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from lanes.broker import ChannelPool, Hints, QueueMissing, QueueNames, Refused, partition_arguments
from lanes.errors import BrokerError, DatabaseError
from lanes.lane.messages import LaneMessage, partition_of
from lanes.settings import Settings

if TYPE_CHECKING:
    from lanes.requests import Requests


class LaneFull(Exception):
    """The lane holds LANE_DEPTH_LIMIT requests already (as this process's ledger counts)."""


class LaneLedger:
    """Per user, the requests this process accepted and has not heard settled: the lane's
    depth (LANE_DEPTH_LIMIT) and each new request's `position`.

    A request is entered before its publish, so two concurrent enqueues of one user
    cannot both pass the limit. Settles arrive on the settled feed, addressed to this
    ledger's `key` (the messages carry it); one lost there (a worker killed before it
    sent it, this process reconnecting) leaves an entry behind. So a lane that looks full
    is confirmed first: `verify` (a read by `_id`) drops its oldest entries whose outcome
    is recorded — a few, at most once a second per lane, so that a client hammering a
    full lane does not turn each refusal into database reads; and `audit` looks at each
    lane whose oldest entry is older than AUDIT_AFTER_SECONDS, so that a lost notice
    inflates `position` for that long at most."""

    VERIFIED_PER_LOOK = 3
    LOOK_EVERY_SECONDS = 1.0
    AUDIT_AFTER_SECONDS = 30.0

    def __init__(self, limit: int, verify: Callable[[str], bool]) -> None:
        self.key = uuid.uuid4().hex
        self._limit = limit
        self._verify = verify
        self._open: dict[str, OrderedDict[str, float]] = {}  # lane -> request id -> when entered
        self._owner: dict[str, str] = {}
        self._looked_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def enter(self, user_id: str, request_id: str) -> int:
        """Count the request in its lane; returns how many of the lane's are ahead of it."""
        with self._lock:
            lane = self._open.setdefault(user_id, OrderedDict())
            look = len(lane) >= self._limit and self._may_look(user_id)
            oldest = list(itertools.islice(lane, self.VERIFIED_PER_LOOK)) if look else []
        if oldest:
            self.settle([request for request in oldest if self._verify(request)])  # reads outside the lock
        with self._lock:
            lane = self._open.setdefault(user_id, OrderedDict())
            if len(lane) >= self._limit:
                raise LaneFull
            lane[request_id] = time.monotonic()
            self._owner[request_id] = user_id
            return len(lane) - 1

    def _may_look(self, user_id: str) -> bool:
        now = time.monotonic()
        if now - self._looked_at.get(user_id, float("-inf")) < self.LOOK_EVERY_SECONDS:
            return False
        if len(self._looked_at) > 10_000:
            self._looked_at.clear()
        self._looked_at[user_id] = now
        return True

    def settle(self, request_ids: Iterable[str]) -> None:
        with self._lock:
            for request_id in request_ids:
                user_id = self._owner.pop(request_id, None)
                if user_id is None:
                    continue
                lane = self._open.get(user_id)
                if lane is not None:
                    lane.pop(request_id, None)
                    if not lane:
                        del self._open[user_id]

    def audit(self) -> None:
        """Drop settled entries from the head of each lane entered too long ago: a lane
        runs in order, so its oldest entry unsettled means the rest are too."""
        stale = time.monotonic() - self.AUDIT_AFTER_SECONDS
        with self._lock:
            heads = [(lane, next(iter(ids))) for lane, ids in self._open.items() if next(iter(ids.values())) < stale]
        for lane, head in heads:
            request_id: str | None = head
            while request_id is not None and self._verify(request_id):  # reads outside the lock
                self.settle([request_id])
                with self._lock:
                    ids = self._open.get(lane)
                    request_id = next(iter(ids), None) if ids else None

    def on_settled_body(self, body: bytes) -> None:
        try:
            request_ids = json.loads(body)
        except ValueError:
            return
        if isinstance(request_ids, list):
            self.settle(str(request_id) for request_id in request_ids)


class PartitionPublisher:
    """The enqueue side: one confirmed publish per request; one per process."""

    def __init__(self, settings: Settings, pool: ChannelPool, ledger: LaneLedger) -> None:
        self._settings = settings
        self._pool = pool
        self._names = QueueNames.of(settings)
        self._ledger = ledger
        self._declared = False

    def publish(self, message: LaneMessage, accepted_at: float) -> int:
        """Put the request at the tail of its lane, durably; returns how many wait ahead of it.

        Raises LaneFull, or BrokerError when the message did not reach the broker's disk."""
        position = self._ledger.enter(message.user_id, message.request_id)
        message = dataclasses.replace(message, ledger=self._ledger.key)
        partition = self._names.partition(partition_of(message.user_id, self._settings.lane_partitions))
        try:
            with self._pool.channel() as channel:
                if not self._declared:
                    for index in range(self._settings.lane_partitions):
                        channel.declare(self._names.partition(index), partition_arguments(self._settings))
                    self._declared = True
                try:
                    channel.publish(partition, message.body(), headers=message.headers(), timestamp=accepted_at)
                except Refused:  # a partition has no length limit: the broker is in trouble
                    raise BrokerError("RabbitMQ refused the request") from None
                except QueueMissing:  # deleted by hand since this process declared it
                    self._declared = False
                    raise BrokerError("the lane's partition is missing") from None
        except BaseException:
            self._ledger.settle([message.request_id])
            raise
        return position


def partition_publisher(settings: Settings, pool: ChannelPool, requests: Requests) -> PartitionPublisher:
    """The enqueue process's publisher, with its ledger fed by the settled feed and audited."""

    def settled(request_id: str) -> bool:
        try:
            return requests.recorded_outcome(request_id) is not None
        except DatabaseError:
            return False  # cannot tell: the lane stays as full as it looks

    ledger = LaneLedger(settings.lane_depth_limit, settled)
    # The settled feed, this ledger's own: a hint, as the ledger checks before it refuses
    # and audits what stays long (workers declare the exchange durable).
    names = QueueNames.of(settings)
    feed = Hints(settings, names.ledgers, ledger.on_settled_body, durable=True, routing_key=ledger.key)
    threading.Thread(target=feed.run, name="lanes-settled-feed", daemon=True).start()
    threading.Thread(target=_audit_forever, args=(ledger,), name="lanes-ledger-audit", daemon=True).start()
    return PartitionPublisher(settings, pool, ledger)


def _audit_forever(ledger: LaneLedger) -> None:
    while True:
        time.sleep(ledger.AUDIT_AFTER_SECONDS / 3)
        try:
            ledger.audit()
        except Exception:  # noqa: BLE001 - an audit that failed is tried again on the next round
            continue
