"""Deep lanes (lanes.lane.overflow): when a lane's messages go to its overflow queue, and
in which order its requests come back, across a hand-over to another holder."""

from __future__ import annotations

from typing import Any

import pytest

from lanes.errors import BrokerError
from lanes.lane import overflow as overflow_module
from lanes.lane.overflow import Overflow


class Registry:
    """`deep_lanes` as a dictionary: the logic under test is the Overflow's, not the database's."""

    def __init__(self) -> None:
        self.lanes: dict[str, tuple[int, str | None]] = {}

    def mark(self, lane: str, partition: int, boundary: str | None) -> None:
        self.lanes[lane] = (partition, boundary)

    def of_partition(self, partition: int) -> dict[str, str | None]:
        return {lane: boundary for lane, (p, boundary) in self.lanes.items() if p == partition}

    def clear(self, lane: str) -> None:
        self.lanes.pop(lane, None)


def overflow(registry: Any, settled: frozenset[str] = frozenset(), max_fed: int = 4) -> Overflow:
    return Overflow(registry, window=3, settled=lambda request: request in settled, max_fed=max_fed)


def test_a_lane_within_its_window_is_never_spilled() -> None:
    registry = Registry()
    lanes = overflow(registry)
    assert not lanes.spills("u", 0, "r3", held=["r1", "r2"])
    assert registry.lanes == {}


def test_a_full_window_marks_the_lane_deep_with_its_newest_held_request_as_boundary() -> None:
    registry = Registry()
    lanes = overflow(registry)
    assert lanes.spills("u", 5, "r4", held=["r1", "r2", "r3"])
    assert registry.lanes == {"u": (5, "r3")}
    assert lanes.spills("u", 5, "r5", held=["r1", "r2", "r3"])  # everything after goes too
    assert lanes.spills("u", 5, "r6", held=[])  # even once the window has room again


def test_a_deep_lane_is_fed_only_once_nothing_of_it_is_held() -> None:
    lanes = overflow(Registry())
    lanes.spills("u", 0, "r4", held=["r1", "r2", "r3"])
    lanes.settled("u", waiting=2)
    assert lanes.next_to_feed(lambda _lane, _partition: True) is None
    lanes.settled("u", waiting=0)
    assert lanes.next_to_feed(lambda _lane, _partition: True) == "u"


def test_deep_lanes_are_fed_in_turn_and_only_so_many_at_once() -> None:
    lanes = overflow(Registry(), max_fed=2)
    for user in ("a", "b", "c"):
        lanes.spills(user, 0, f"{user}4", held=[f"{user}1", f"{user}2", f"{user}3"])
        lanes.settled(user, waiting=0)
    fed = []
    while (lane := lanes.next_to_feed(lambda _lane, _partition: True)) is not None:
        fed.append(lane)
        lanes.fed += 1
    assert fed == ["a", "b"]
    lanes.fed -= 1  # a's request started
    assert lanes.next_to_feed(lambda _lane, _partition: True) == "c"


def test_a_lane_whose_partition_cannot_be_fed_now_keeps_its_turn() -> None:
    lanes = overflow(Registry())
    for user in ("a", "b"):
        lanes.spills(user, user == "b", f"{user}4", held=[f"{user}1", f"{user}2", f"{user}3"])
        lanes.settled(user, waiting=0)
    assert lanes.next_to_feed(lambda _lane, partition: partition == 1) == "b"
    assert lanes.next_to_feed(lambda _lane, _partition: True) == "a"


def test_the_next_holder_keeps_what_its_predecessor_held_until_the_boundary() -> None:
    # Given a lane that went deep at its first holder with r1..r3 held, r3 not finished
    registry = Registry()
    overflow(registry).spills("u", 0, "r4", held=["r1", "r2", "r3"])
    # When the next holder takes the partition: r2 and r3 come back from the partition first
    successor = overflow(registry, settled=frozenset({"r1"}))
    successor.taken(0)
    assert not successor.spills("u", 0, "r2", held=[])
    assert not successor.spills("u", 0, "r3", held=["r2"])
    # Then what follows the boundary goes behind the overflow queue, as before the hand-over
    assert successor.spills("u", 0, "r4", held=["r2", "r3"])
    assert successor.next_to_feed(lambda _lane, _partition: True) is None  # r2, r3 first
    successor.settled("u", waiting=0)
    assert successor.next_to_feed(lambda _lane, _partition: True) == "u"


def test_a_next_holder_spills_at_once_when_the_boundary_is_settled() -> None:
    registry = Registry()
    overflow(registry).spills("u", 0, "r4", held=["r1", "r2", "r3"])
    successor = overflow(registry, settled=frozenset({"r3"}))
    successor.taken(0)
    assert successor.spills("u", 0, "r4", held=[])  # a copy its predecessor spilled and did not ack
    assert successor.next_to_feed(lambda _lane, _partition: True) == "u"


def test_a_drained_lane_is_shallow_again_and_forgotten_by_the_registry() -> None:
    registry = Registry()
    lanes = overflow(registry)
    lanes.spills("u", 0, "r4", held=["r1", "r2", "r3"])
    lanes.drained("u")
    assert registry.lanes == {} and not lanes.is_deep("u")
    assert not lanes.spills("u", 0, "r9", held=[])


def test_letting_a_partition_go_forgets_its_deep_lanes_here_only() -> None:
    registry = Registry()
    lanes = overflow(registry)
    lanes.spills("u", 2, "r4", held=["r1", "r2", "r3"])
    lanes.settled("u", waiting=0)
    lanes.let_go(2)
    assert not lanes.is_deep("u") and lanes.next_to_feed(lambda _lane, _partition: True) is None
    assert registry.lanes == {"u": (2, "r3")}


def test_a_crowded_partition_spills_a_lane_that_has_a_request_held_already() -> None:
    # Many lanes each within their own window can fill the partition's between them
    registry = Registry()
    lanes = overflow(registry)
    assert not lanes.spills("u", 0, "r1", held=[], crowded=True)  # a lane's head is always kept
    assert lanes.spills("u", 0, "r2", held=["r1"], crowded=True)
    assert registry.lanes == {"u": (0, "r1")}
    assert not lanes.spills("v", 0, "v2", held=["v1"], crowded=False)


class UnreadableSession:
    """Fetching lane `broken`'s overflow queue fails as a connection RabbitMQ closes would."""

    def __init__(self, broken: str) -> None:
        self.broken = broken
        self.fetched: list[str] = []

    def fetch(self, lane: str, _partition: int) -> Any:
        self.fetched.append(lane)
        if lane == self.broken:
            raise BrokerError("RabbitMQ failed: internal_error, nodedown")
        return object()


def test_an_unreadable_overflow_queue_is_tried_again_only_after_a_pause_across_reconnections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(overflow_module.time, "monotonic", lambda: now[0])
    lanes = overflow(Registry(), settled=frozenset({"broken3", "fine3"}), max_fed=10)
    for user in ("broken", "fine"):
        lanes.spills(user, 0, f"{user}4", held=[f"{user}1", f"{user}2", f"{user}3"])
        lanes.settled(user, waiting=0)
    session = UnreadableSession("broken")
    # When its fetch fails (the connection with it), and the process reconnects and takes
    # the partition again
    with pytest.raises(BrokerError):
        list(lanes.feed(session, lambda _lane, _partition: True))  # type: ignore[arg-type]
    lanes.reset()
    lanes.taken(0)
    # Then the other lanes are fed, and the broken one only once its pause is over
    assert [lane for lane, _ in lanes.feed(session, lambda _lane, _partition: True)] == ["fine"]  # type: ignore[arg-type]
    now[0] += overflow_module.UNREADABLE_BACKOFF_SECONDS + 0.1
    with pytest.raises(BrokerError):
        list(lanes.feed(session, lambda _lane, _partition: True))  # type: ignore[arg-type]
    assert session.fetched == ["broken", "fine", "broken"]


def test_a_request_newer_than_the_boundary_is_spilled_even_when_given_back_ahead_of_it() -> None:
    # Given a lane that went deep at r3 under the last holder, its r2 and r3 unfinished
    registry = Registry()
    registry.mark("u", 0, "r3")
    lanes = overflow(registry)
    lanes.taken(0)
    # When the partition gives the lane's messages back out of their order: r5 (a copy
    # of a request already spilled) ahead of r2 and r3
    # Then r5 goes behind the overflow queue, and r2, r3 stay, as what the last holder held
    assert lanes.spills("u", 0, "r5", held=[])
    assert not lanes.spills("u", 0, "r2", held=[])
    assert not lanes.spills("u", 0, "r3", held=["r2"])
    assert lanes.spills("u", 0, "r4", held=["r2", "r3"])
