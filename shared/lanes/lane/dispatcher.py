"""A worker process's broker side: the partitions it holds, the scheduler it feeds, and
the acknowledgements of what its slots settled."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from lanes.broker import PartitionDelivery, PartitionSession, QueueNames
from lanes.errors import BrokerError, retry_delay
from lanes.lane.balance import BALANCE_SECONDS, Balancing
from lanes.lane.fencing import BrokerLease
from lanes.lane.messages import LaneMessage, partition_of
from lanes.lane.notices import SettledNotices
from lanes.lane.overflow import Overflow
from lanes.lane.scheduler import LaneScheduler, LanesSeen, Turn
from lanes.settings import Settings

log = logging.getLogger("lanes.lane")

# How long an idle slot waits for a turn before it looks whether the worker stops.
IDLE_SECONDS = 0.5


@dataclass(frozen=True)
class Settled:
    """What a slot reports for a turn: settled (ack it) or handed back (leave it unacked)."""

    turn: Turn
    settled: bool
    lost: bool = False  # a later holder has the request: the message went back already


class Dispatcher(Balancing):
    """A worker process's broker side, in a thread of its own (the only one that touches
    the connection): holds partitions, feeds the scheduler, hands turns to idle slots,
    acknowledges what they settle, and announces it."""

    def __init__(
        self,
        settings: Settings,
        stop: threading.Event,
        slots: int,
        take_partition: Callable[[PartitionSession, int], int | None],
        overflow: Overflow,
        report_lanes: Callable[[LanesSeen], None] = lambda _seen: None,
    ) -> None:
        self._settings = settings
        self._take_partition = take_partition
        self._overflow = overflow
        self._crowded_at = max(1, settings.partition_prefetch - settings.lane_window)
        self.lease = BrokerLease()
        self._epochs: dict[int, int] = {}
        self._report_lanes = report_lanes
        self._names = QueueNames.of(settings)
        self._stop = stop
        self._session: PartitionSession = _NotConnected()  # type: ignore[assignment]
        self._scheduler = LaneScheduler()
        self._idle = slots
        self._draining: set[int] = set()
        self._handed_back: set[str] = set()
        self._waiting_shown = False
        self._balanced_at = float("-inf")
        self._passed_on: dict[int, float] = {}  # partition -> when this process passed it on
        self._waiting_elsewhere_at = float("-inf")
        self._waiting_since: float | None = None
        self._notices = SettledNotices()
        self.turns: deque[Turn] = deque()  # handed to slots, taken by `take_turn`
        self._turns_ready = threading.Condition()
        self.reports: deque[Settled] = deque()

    # -- called from slot threads ---------------------------------------------------------

    def take_turn(self, timeout: float) -> Turn | None:
        with self._turns_ready:
            if not self.turns:
                self._turns_ready.wait(timeout)
            return self.turns.popleft() if self.turns else None

    def report(self, settled: Settled) -> None:
        self.reports.append(settled)
        self._session.wake()

    # -- the main loop --------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped and every running request has settled or been handed back.

        A lost connection costs the process its partitions (the broker gives their messages
        back); it reconnects, and a lane whose request still runs in a slot stays running,
        so its redelivered head waits behind it and is then found settled."""
        failures = 0
        while True:
            try:
                self._session = PartitionSession(
                    self._settings, self._names, self._settings.partition_prefetch, on_heard=self.lease.heard
                )
                self.lease.heard()
                self._balanced_at = float("-inf")
                self._serve()
                return
            except BrokerError as error:
                failures += 1
                log.warning("worker lost the broker: %r; reconnecting", error)
            except Exception:
                # Never a silent dead dispatcher holding partitions: start over as after a
                # lost connection (what it held goes back to the broker when it closes).
                failures += 1
                log.exception("the dispatcher failed; reconnecting")
            # Nothing more starts until a new connection hears the broker: its partitions
            # may be another holder's already (lanes.lane.fencing).
            self.lease.lost()
            self._session.close()
            self._scheduler.drop(lambda _delivery: True)
            self._overflow.reset()
            self._take_back_undelivered_turns()
            self._draining.clear()
            if self._stop.is_set():
                # Nothing can be acknowledged now: the broker has every message back, and
                # a settled one is found settled by its next holder.
                while self._scheduler.running:
                    time.sleep(0.05)
                    while self.reports:
                        self._idle += 1
                        self._scheduler.finished(self.reports.popleft().turn.lane)
                return
            self._stop.wait(retry_delay(failures) * random.uniform(0.5, 1.0))

    def _serve(self) -> None:
        try:
            while not self._stop.is_set() or self._scheduler.running:
                self._session.wait(self._wait_seconds(), self._has_news)
                self._settle_reports()
                self._take_deliveries()
                self._forget_lost()
                if self._stop.is_set():
                    self._take_back_undelivered_turns()
                else:
                    self._balance()
                    self._feed_deep_lanes()
                    self._dispatch()
                self._notices.flush(self._session.announce_settled)
        finally:
            self._notices.flush(self._session.announce_settled, force=True)
            self._session.close()  # every unacknowledged message goes back to its partition

    def _take_back_undelivered_turns(self) -> None:
        with self._turns_ready:
            while self.turns:
                turn = self.turns.popleft()
                self._scheduler.release(turn.lane)
                self._idle += 1

    def _has_news(self) -> bool:
        session = self._session
        return bool(self.reports or session.deliveries) or (self._stop.is_set() and not self._scheduler.running)

    def _wait_seconds(self) -> float:
        """Until the next balance (at once after connecting) or the settled feed's flush."""
        wait = max(0.0, self._balanced_at + BALANCE_SECONDS - time.monotonic())
        flush = self._notices.seconds_to_flush()
        if flush is not None:
            wait = min(wait, flush)
        return wait

    def _take_deliveries(self) -> None:
        deliveries = self._session.deliveries
        if deliveries:
            # Busy at once (the next balance may be a second away): an autoscaler about to
            # stop this idle-looking worker must see the work it was just given.
            self._session.show(busy=True, waiting=self._waiting_shown)
        spilled: list[tuple[str, PartitionDelivery]] = []
        while deliveries:
            delivery = deliveries.popleft()
            if not self._session.holds(delivery):
                # Delivered on a channel closed since (a partition let go or lost): the
                # broker has it back, and running this copy would run it ahead of its lane.
                continue
            message = self._parse(delivery)
            if message is None:
                continue
            held = self._scheduler.waiting_ids(message.user_id, delivery.partition)
            # Room is kept in the partition's window for what lies behind (lanes.lane.overflow).
            crowded = self._scheduler.waiting_in(delivery.partition) >= self._crowded_at
            if self._overflow.spills(message.user_id, delivery.partition, message.request_id, held, crowded):
                spilled.append((message.user_id, delivery))
                continue
            self._scheduler.add(Turn(message.user_id, delivery, message, self._epochs.get(delivery.partition, 0)))
        if spilled:
            self._session.spill(spilled)

    def _parse(self, delivery: PartitionDelivery) -> LaneMessage | None:
        try:
            return LaneMessage.parse(delivery.body, delivery.headers)
        except ValueError as error:
            log.warning("dropping a malformed lane message: %s", error)
            self._session.ack(delivery)
            return None

    def _feed_deep_lanes(self) -> None:
        """Fetch the next request of each deep lane whose turn comes, from its overflow queue."""
        for lane, delivery in self._overflow.feed(self._session, self._may_feed):
            message = self._parse(delivery)
            if message is None:
                self._overflow.fed -= 1
                self._overflow.settled(lane, waiting=0)
                continue
            self._scheduler.add(Turn(lane, delivery, message, self._epochs.get(delivery.partition, 0)))

    def _may_feed(self, lane: str, partition: int) -> bool:
        held = partition in self._session.held and partition not in self._draining
        return held and lane not in self._scheduler.running and not self._scheduler.waiting_ids(lane, partition)

    def _settle_reports(self) -> None:
        while self.reports:
            report = self.reports.popleft()
            self._idle += 1
            if report.lost:
                self._scheduler.finished(report.turn.lane)
                if self._session.holds(report.turn.delivery):  # a holder beside us: leave it the partition
                    self._draining.add(report.turn.delivery.partition)
                continue
            if not report.settled:
                if self._stop.is_set():
                    # Stopping between two attempts: its message goes back when we close,
                    # and none of its lane's runs here meanwhile.
                    self._handed_back.add(report.turn.lane)
                    self._scheduler.finished(report.turn.lane)
                elif self._session.holds(report.turn.delivery):
                    self._scheduler.put_back(report.turn)  # the lease lapsed: again once it holds
                else:
                    self._scheduler.finished(report.turn.lane)  # the broker has it back
                continue
            # Settled first: should the ack fail with the connection, the broker gives the
            # message back and its next delivery is found settled.
            self._scheduler.finished(report.turn.lane)
            self._session.ack(report.turn.delivery)
            waiting = self._scheduler.waiting_ids(report.turn.lane, report.turn.delivery.partition)
            self._overflow.settled(report.turn.lane, len(waiting))
            self._notices.add(report.turn.message.request_id, report.turn.message.ledger)
            partition = report.turn.delivery.partition
            if partition in self._draining and not self._running_in(partition):
                self._let_go(partition)

    def _forget_lost(self) -> None:
        for generation in self._session.forget_closed():
            log.warning("the broker closed a channel; its messages went back")
            dropped = self._scheduler.drop(_of_generation(generation))
            self._overflow.fed -= sum(turn.delivery.overflow for turn in dropped)
        for partition in set(self._epochs) - set(self._session.held):
            del self._epochs[partition]
            self._overflow.let_go(partition)

    def _dispatch(self) -> None:
        if not self.lease.holds():
            return
        handed = False
        while self._idle > 0:
            turn = self._scheduler.next(self._may_run)
            if turn is None:
                break
            self._idle -= 1
            self._overflow.fed -= turn.delivery.overflow
            with self._turns_ready:
                self.turns.append(turn)
                self._turns_ready.notify()
            handed = True
        if handed:
            self._session.wake()

    def _may_run(self, lane: str) -> bool:
        partition = partition_of(lane, self._settings.lane_partitions)
        return partition not in self._draining and lane not in self._handed_back


class _NotConnected:
    """The session before the first connection: waking it does nothing."""

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass


def _of_generation(generation: int) -> Callable[[PartitionDelivery], bool]:
    return lambda delivery: delivery.generation == generation
