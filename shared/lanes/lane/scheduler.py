"""The lanes a worker process sees, taking turns one request at a time."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from lanes.broker import PartitionDelivery
from lanes.lane.messages import LaneMessage


@dataclass(frozen=True)
class Turn:
    """One request of one lane, handed to a slot."""

    lane: str
    delivery: PartitionDelivery
    message: LaneMessage
    epoch: int = 0  # the holder epoch of the partition it was delivered from (lanes.lane.fencing)


class _Partition:
    """The lanes of one partition with requests waiting here, and their places in the round."""

    __slots__ = ("fed", "lanes", "number", "tickets", "waiting")

    def __init__(self, number: int) -> None:
        self.number = number
        self.waiting = 0  # requests waiting in its lanes
        self.lanes: dict[str, deque[Turn]] = {}
        self.tickets: dict[str, int] = {}  # a lane's valid place in the round
        self.fed: list[Turn] = []  # waiting turns fetched from overflow queues


class LaneScheduler:
    """The lanes a worker process sees, each a FIFO of deliveries, taking turns: a lane
    runs one request at a time and goes to the back of the round after each.

    Lanes are kept by partition, and a place in the round is void once its partition or
    lane is gone, so letting a partition go is one dictionary removal, whatever the
    number of its lanes (the round skips the void places as it reaches them)."""

    def __init__(self) -> None:
        self._partitions: dict[int, _Partition] = {}
        self._round: deque[tuple[_Partition, str, int]] = deque()
        self._issued = itertools.count()
        self.running: dict[str, int] = {}  # lane -> its partition

    def add(self, turn: Turn) -> None:
        number = turn.delivery.partition
        partition = self._partitions.get(number) or self._partitions.setdefault(number, _Partition(number))
        lane = partition.lanes.get(turn.lane)
        if lane is None:
            lane = partition.lanes[turn.lane] = deque()
            if turn.lane not in self.running:
                self._enter_round(partition, turn.lane)
        lane.append(turn)
        partition.waiting += 1
        if turn.delivery.overflow:
            partition.fed.append(turn)

    def next(self, eligible: Callable[[str], bool] = lambda _lane: True) -> Turn | None:
        """The head of the first lane in the round that may run now; its lane is running."""
        for _ in range(len(self._round)):
            partition, name, ticket = self._round.popleft()
            if partition.tickets.get(name) != ticket or self._partitions.get(partition.number) is not partition:
                continue  # void: its lane or partition was let go since
            if not eligible(name):
                self._round.append((partition, name, ticket))
                continue
            del partition.tickets[name]
            lane = partition.lanes[name]
            turn = lane.popleft()
            partition.waiting -= 1
            if not lane:
                del partition.lanes[name]
            if turn.delivery.overflow:
                partition.fed.remove(turn)
            self.running[name] = partition.number
            return turn
        return None

    def finished(self, name: str) -> None:
        """The lane's running request is settled: it takes its next turn at the back."""
        number = self.running.pop(name, None)
        partition = self._partitions.get(number) if number is not None else None
        if partition is not None and name in partition.lanes and name not in partition.tickets:
            self._enter_round(partition, name)

    def put_back(self, turn: Turn) -> None:
        """A running request that did not start (the broker lease lapsed): it is its lane's
        head again, and the lane takes its turn at the back of the round."""
        number = turn.delivery.partition
        partition = self._partitions.get(number) or self._partitions.setdefault(number, _Partition(number))
        partition.lanes.setdefault(turn.lane, deque()).appendleft(turn)
        partition.waiting += 1
        if turn.delivery.overflow:
            partition.fed.append(turn)
        self.running[turn.lane] = number
        self.finished(turn.lane)

    def drop_partition(self, number: int) -> list[Turn]:
        """Forget the waiting deliveries of a partition let go (the broker has them back);
        returns those fetched from overflow queues, which go back by hand."""
        partition = self._partitions.pop(number, None)
        return partition.fed if partition is not None else []

    def drop(self, lost: Callable[[PartitionDelivery], bool]) -> list[Turn]:
        """Forget the waiting deliveries `lost` picks (a channel the broker closed); returns them."""
        dropped: list[Turn] = []
        for partition in list(self._partitions.values()):
            for name, lane in list(partition.lanes.items()):
                gone = [turn for turn in lane if lost(turn.delivery)]
                if not gone:
                    continue
                dropped.extend(gone)
                partition.waiting -= len(gone)
                partition.fed = [turn for turn in partition.fed if turn not in gone]
                kept = deque(turn for turn in lane if not lost(turn.delivery))
                if kept:
                    partition.lanes[name] = kept
                else:
                    del partition.lanes[name]
                    partition.tickets.pop(name, None)
        return dropped

    def release(self, name: str) -> None:
        """The lane's turn was never started (taken back from the slots' queue)."""
        self.running.pop(name, None)

    def running_in(self, number: int) -> bool:
        return number in self.running.values()

    def waiting_in(self, number: int) -> int:
        """Requests of the partition waiting here (not running)."""
        partition = self._partitions.get(number)
        return partition.waiting if partition is not None else 0

    def waiting_ids(self, name: str, number: int) -> list[str]:
        """The lane's requests waiting here, oldest first."""
        partition = self._partitions.get(number)
        lane = partition.lanes.get(name, ()) if partition is not None else ()
        return [turn.message.request_id for turn in lane]

    def waiting(self) -> int:
        return sum(len(lane) for partition in self._partitions.values() for lane in partition.lanes.values())

    def summary(self) -> LanesSeen:
        depths = {name: 1 for name in self.running}
        for partition in self._partitions.values():
            for name, lane in partition.lanes.items():
                depths[name] = depths.get(name, 0) + len(lane)
        lanes_waiting = sum(1 for p in self._partitions.values() for name in p.lanes if name not in self.running)
        return LanesSeen(len(depths), lanes_waiting, self.waiting(), max(depths.values(), default=0))

    def _enter_round(self, partition: _Partition, name: str) -> None:
        ticket = partition.tickets[name] = next(self._issued)
        self._round.append((partition, name, ticket))


@dataclass(frozen=True)
class LanesSeen:
    """What a worker's lanes look like: lanes with work, of those the ones waiting for a
    slot, requests not started, and the deepest lane's requests (lanes.metrics.lanes_seen)."""

    lanes_with_work: int
    lanes_waiting: int
    waiting_requests: int
    deepest_lane: int
