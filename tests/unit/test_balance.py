"""How worker processes share the partitions (lanes.lane.balance, run by the dispatcher):
fair shares, and work passed on from a process whose lanes wait to one with a free slot.

Two dispatchers over a fake broker that knows only who holds which partition and which
state each process shows; what the broker does with the messages is the integration
tests' (tests/integration/test_scale_to_zero.py)."""

from __future__ import annotations

import threading

import pytest

from lanes.broker import PartitionDelivery, QueueNames
from lanes.lane import balance as balance_module
from lanes.lane.dispatcher import Dispatcher
from lanes.lane.messages import LaneMessage, partition_of
from lanes.lane.overflow import Overflow
from lanes.lane.scheduler import Turn
from lanes.settings import Settings

PARTITIONS = 4


class Broker:
    """Who holds each partition, and what each process shows."""

    def __init__(self) -> None:
        self.holder: dict[int, str] = {}
        self.shown: dict[str, set[str]] = {}


class Session:
    def __init__(self, broker: Broker, name: str, names: QueueNames) -> None:
        self.broker, self.name, self.names = broker, name, names
        broker.shown[name] = set()

    @property
    def held(self) -> list[int]:
        return sorted(p for p, who in self.broker.holder.items() if who == self.name)

    def workers(self) -> int:
        return len(self.broker.shown)

    def show(self, busy: bool, waiting: bool, spare: bool = False, hungry: bool = False) -> None:
        states = zip(self.names.worker_states, (busy, waiting, spare, hungry), strict=True)
        self.broker.shown[self.name] = {state for state, shown in states if shown}

    def others_showing(self, state: str) -> int:
        return sum(state in shown for who, shown in self.broker.shown.items() if who != self.name)

    def let_go(self, index: int) -> None:
        assert self.broker.holder.pop(index) == self.name

    def take(self, index: int) -> bool:
        if index in self.broker.holder:
            return False
        self.broker.holder[index] = self.name
        return True

    def wake(self) -> None:
        pass


class NoDeepLanes:
    def of_partition(self, _partition: int) -> dict[str, str | None]:
        return {}


def worker(broker: Broker, name: str, slots: int) -> Dispatcher:
    settings = Settings.from_env({"LANE_PARTITIONS": str(PARTITIONS)})
    overflow = Overflow(NoDeepLanes(), window=8, settled=lambda _id: False, max_fed=8)  # type: ignore[arg-type]
    dispatcher = Dispatcher(
        settings, threading.Event(), slots, lambda session, index: 1 if session.take(index) else None, overflow
    )
    dispatcher._session = Session(broker, name, QueueNames.of(settings))  # type: ignore[assignment]
    dispatcher.lease.heard()
    return dispatcher


def balance(dispatcher: Dispatcher) -> None:
    dispatcher._balanced_at = float("-inf")  # due now
    dispatcher._balance()


def enqueue(dispatcher: Dispatcher, lane: str) -> None:
    partition = partition_of(lane, PARTITIONS)
    delivery = PartitionDelivery(partition, 0, 1, b"{}")
    dispatcher._scheduler.add(Turn(lane, delivery, LaneMessage(f"id-{lane}", lane, "echo", "{}")))
    dispatcher._dispatch()


def lane_in(partition: int, taken: set[str]) -> str:
    return next(f"u{n}" for n in range(1000) if partition_of(f"u{n}", PARTITIONS) == partition and f"u{n}" not in taken)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(balance_module.time, "monotonic", lambda: now[0])
    return now


def test_a_newcomer_gets_its_share_and_the_holder_keeps_its_busiest(clock: list[float]) -> None:
    # Given one process holding every partition, running a lane in partition 1
    broker = Broker()
    first = worker(broker, "first", slots=2)
    balance(first)
    assert first._session.held == [0, 1, 2, 3]
    enqueue(first, lane_in(1, set()))
    # When a second process joins, hungry for its share
    second = worker(broker, "second", slots=2)
    balance(second)
    balance(first)
    balance(second)
    # Then each holds two, and the running lane's partition stayed where it runs
    assert len(first._session.held) == len(second._session.held) == 2
    assert 1 in first._session.held


def test_lanes_waiting_for_a_slot_move_to_a_process_with_one_free(clock: list[float]) -> None:
    # Given two processes of one slot each, holding their shares, all lanes in the first
    broker = Broker()
    first, second = worker(broker, "first", slots=1), worker(broker, "second", slots=1)
    broker.holder.update({0: "first", 1: "first", 2: "second", 3: "second"})
    running = lane_in(0, set())
    waiting = lane_in(1, {running})
    enqueue(first, running)
    enqueue(first, waiting)
    assert first._idle == 0 and first._scheduler.waiting_in(1) == 1
    # When they balance: the second shows a slot to spare, the first its lane waiting,
    # which it passes on only once it has waited a balance (a moment's wait moves nothing)
    balance(second)
    balance(first)
    assert broker.holder[1] == "first"
    clock[0] += 1
    balance(first)
    balance(second)
    # Then the waiting lane's partition went to the second (its message goes back to the
    # partition's head, and the second is delivered it), the running one stayed
    assert broker.holder == {0: "first", 1: "second", 2: "second", 3: "second"}
    assert first._scheduler.waiting_in(1) == 0
    # And the first does not take it back while it is passed on
    clock[0] += 1
    balance(first)
    assert broker.holder[1] == "second"


def test_nothing_is_passed_on_without_a_spare_process_or_while_it_runs(clock: list[float]) -> None:
    broker = Broker()
    first, second = worker(broker, "first", slots=1), worker(broker, "second", slots=1)
    broker.holder.update({0: "first", 1: "first", 2: "second", 3: "second"})
    # Both busy: a lane waits in the first, the second runs one of its own
    running = lane_in(0, set())
    enqueue(first, running)
    enqueue(first, lane_in(1, {running}))
    enqueue(second, lane_in(2, set()))
    for _ in range(3):
        balance(second)
        balance(first)
        clock[0] += 1
    assert broker.holder == {0: "first", 1: "first", 2: "second", 3: "second"}
    # A lane waiting behind its own running request stays with it, slot free elsewhere or not
    broker2 = Broker()
    alone, idle = worker(broker2, "alone", slots=1), worker(broker2, "idle", slots=1)
    broker2.holder.update({0: "alone", 1: "alone", 2: "idle", 3: "idle"})
    lane = lane_in(0, set())
    enqueue(alone, lane)
    enqueue(alone, lane)
    for _ in range(3):
        balance(idle)
        balance(alone)
        clock[0] += 1
    assert broker2.holder[0] == "alone"


def test_an_unused_passed_on_partition_is_taken_back(clock: list[float]) -> None:
    broker = Broker()
    first = worker(broker, "first", slots=1)
    broker.holder.update({0: "first", 1: "first", 2: "second", 3: "second"})
    second = worker(broker, "second", slots=1)
    running = lane_in(0, set())
    enqueue(first, running)
    enqueue(first, lane_in(1, {running}))
    balance(second)
    balance(first)
    clock[0] += 1
    balance(first)
    assert 1 not in broker.holder  # passed on
    # When nobody takes it (the spare process got busy meanwhile)
    enqueue(second, lane_in(2, set()))
    balance(second)
    clock[0] += balance_module.PASSED_ON_SECONDS + 0.1
    balance(first)
    # Then its old holder serves it again: every partition stays held
    assert broker.holder[1] == "first"


def test_letting_go_extra_partitions_waits_for_a_hungry_process(clock: list[float]) -> None:
    broker = Broker()
    first, second = worker(broker, "first", slots=2), worker(broker, "second", slots=2)
    broker.holder.update({0: "first", 1: "first", 2: "first", 3: "second"})
    second._idle = 0  # its slots busy: it is not hungry, though below its share
    balance(second)
    balance(first)
    assert broker.holder == {0: "first", 1: "first", 2: "first", 3: "second"}
    second._idle = 2
    balance(second)
    balance(first)
    balance(second)
    assert sorted(broker.holder.values()) == ["first", "first", "second", "second"]
