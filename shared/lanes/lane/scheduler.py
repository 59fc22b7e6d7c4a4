"""The lanes a worker process sees, taking turns one request at a time."""

from __future__ import annotations

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


class LaneScheduler:
    """The lanes a worker process sees, each a FIFO of deliveries, taking turns: a lane
    runs one request at a time and goes to the back of the round after each."""

    def __init__(self) -> None:
        self._lanes: dict[str, deque[Turn]] = {}
        self._round: deque[str] = deque()  # lanes with work and no request running
        self.running: set[str] = set()

    def add(self, turn: Turn) -> None:
        lane = self._lanes.get(turn.lane)
        if lane is None:
            lane = self._lanes[turn.lane] = deque()
            if turn.lane not in self.running:
                self._round.append(turn.lane)
        lane.append(turn)

    def next(self, eligible: Callable[[str], bool] = lambda _lane: True) -> Turn | None:
        """The head of the first lane in the round that may run now; its lane is running."""
        for _ in range(len(self._round)):
            name = self._round.popleft()
            if not eligible(name):
                self._round.append(name)
                continue
            lane = self._lanes[name]
            turn = lane.popleft()
            if not lane:
                del self._lanes[name]
            self.running.add(name)
            return turn
        return None

    def finished(self, name: str) -> None:
        """The lane's running request is settled: it takes its next turn at the back."""
        self.running.discard(name)
        if name in self._lanes:
            self._round.append(name)

    def put_back(self, turn: Turn) -> None:
        """A running request that did not start (the broker lease lapsed): it is its lane's
        head again, and the lane takes its turn at the back of the round."""
        self._lanes.setdefault(turn.lane, deque()).appendleft(turn)
        self.finished(turn.lane)

    def drop(self, lost: Callable[[PartitionDelivery], bool]) -> None:
        """Forget the waiting deliveries of a partition let go (the broker has them back)."""
        for name in list(self._lanes):
            lane = deque(turn for turn in self._lanes[name] if not lost(turn.delivery))
            if lane:
                self._lanes[name] = lane
            else:
                del self._lanes[name]
                if name in self._round:
                    self._round.remove(name)

    def waiting(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def summary(self) -> LanesSeen:
        depths = [len(self._lanes.get(name, ())) + (name in self.running) for name in self._lanes.keys() | self.running]
        lanes_waiting = sum(1 for name in self._lanes if name not in self.running)
        return LanesSeen(len(depths), lanes_waiting, self.waiting(), max(depths, default=0))


@dataclass(frozen=True)
class LanesSeen:
    """What a worker's lanes look like: lanes with work, of those the ones waiting for a
    slot, requests not started, and the deepest lane's requests (lanes.metrics.lanes_seen)."""

    lanes_with_work: int
    lanes_waiting: int
    waiting_requests: int
    deepest_lane: int
