"""Deep lanes (lanes.lane.overflow): when a lane's messages go to its overflow queue, and
in which order its requests come back, across a hand-over to another holder."""

from __future__ import annotations

from typing import Any

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
