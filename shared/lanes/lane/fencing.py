"""Fencing: what a worker must be able to show before it starts anything in a lane, and
the token every attempt runs under (docs/design.md §4.3, "Fencing").

Three things, each closing a way in which a lane could run twice at once:

* The **broker lease**. A process starts nothing while its broker connection has been
  silent for LEASE_SILENCE_SECONDS. Its dispatcher hears the broker at least once a
  second while the connection is sound, and the broker needs two heartbeat intervals
  (20 s) of silence before it gives the process's partitions to another: a process cut
  off from the broker stops starting runs long before anyone else may start them.
* The **holder epoch**. Each time a process takes a partition it draws the partition's
  next epoch from the database, so holders of one partition are numbered in the order
  they held it. A claim or attempt made by a later holder tells an earlier one that it
  lost the partition: it starts nothing more there.
* The **attempt deadline**. Every attempt is written down once (an insert under the
  request id and the attempt number) with its epoch and a deadline: its start plus
  REQUEST_TIMEOUT_SECONDS plus FENCE_GRACE_SECONDS. The holder's own time limit stops the
  handler before it; a new holder that finds the attempt unfinished waits out the
  deadline, for that lane only, before it starts the next attempt; a process that finds
  its attempt past the deadline (it was paused, or its handler ignored the time limit)
  records nothing of it.

Handlers receive their attempt's `Fence` in their context, so that their own side
effects can be fenced too: refuse a write whose epoch is older than one already seen
for the lane, or that comes after the deadline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Well below the 20 s at least that the broker takes to give a silent worker's partitions
# away (two heartbeats, lanes.broker.WORKER_HEARTBEAT_SECONDS), well above the dispatcher's
# round trip every BALANCE_SECONDS (1 s) on a sound connection.
LEASE_SILENCE_SECONDS = 5.0


class HandBack(Exception):
    """The worker is stopping between two attempts of a request: return it to its lane."""


class Superseded(Exception):
    """A later holder of the request's partition has claimed or attempted it: this process
    lost the partition and must start nothing more in the lane (its message went back)."""


@dataclass(frozen=True)
class Fence:
    """The token an attempt runs under: the holder's epoch for the partition, the attempt's
    number, and the deadline after which nothing it does counts (UTC)."""

    epoch: int
    attempt: int
    deadline: datetime

    def valid(self) -> bool:
        """Whether the attempt may still act: False from its deadline on."""
        return datetime.now(UTC) < self.deadline

    def seconds_left(self) -> float:
        return (self.deadline - datetime.now(UTC)).total_seconds()


def attempt_deadline(started: datetime, request_timeout_seconds: float, grace_seconds: float) -> datetime:
    return started + timedelta(seconds=request_timeout_seconds + grace_seconds)


class BrokerLease:
    """Whether this process can still show that it holds its partitions: it heard from the
    broker within LEASE_SILENCE_SECONDS on a connection that is still open.

    Written by the dispatcher thread, read by the slots: a float assignment is atomic."""

    def __init__(self, silence_seconds: float = LEASE_SILENCE_SECONDS) -> None:
        self._silence = silence_seconds
        self._heard = float("-inf")

    def heard(self) -> None:
        self._heard = time.monotonic()

    def lost(self) -> None:
        self._heard = float("-inf")

    def holds(self) -> bool:
        return time.monotonic() - self._heard < self._silence
