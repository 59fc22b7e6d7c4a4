"""The worker: a process of WORKER_SLOTS slots, each running one request at a time.

The process's dispatcher (`lanes.lane.dispatcher.Dispatcher`, in a thread of its own) holds a
share of the partitions and hands the slots one request of one lane at a time, lanes
taking turns; a slot runs it to its outcome (`lanes.lifecycle`) and reports back, and
only then is the message acknowledged and the lane's next request started.
docs/design.md argues why this keeps every lane FIFO.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lanes import metrics
from lanes.actions import Registry, build_registry
from lanes.broker import QueueNames
from lanes.db import connect, ensure_indexes
from lanes.errors import DatabaseError, retry_delay
from lanes.lane.attempts import Attempts
from lanes.lane.dispatcher import IDLE_SECONDS, Dispatcher, Settled
from lanes.lane.fencing import HandBack, Superseded
from lanes.lane.holding import TakeLocks, take_partition
from lanes.lane.overflow import DeepLaneRegistry, Overflow
from lanes.lane.partitions import check_partition_count
from lanes.lane.scheduler import LanesSeen, Turn
from lanes.lifecycle import RequestRunner, Waiting
from lanes.requests import Requests
from lanes.settings import Settings
from lanes.sweeper import start_sweeper

log = logging.getLogger("lanes.worker")


@dataclass
class WorkerState:
    """What a running worker shares between its threads."""

    settings: Settings
    registry: Registry
    requests: Requests
    attempts: Attempts
    stop: threading.Event = field(default_factory=threading.Event)
    wake_slots: list[Callable[[], None]] = field(default_factory=list)
    busy: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def slot_busy(self, delta: int) -> None:
        with self.lock:
            self.busy += delta
        metrics.slot_busy(delta)


class SlotWaiting:
    """How a slot that owns no connection waits for its handler, or out a retry's backoff."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def wait(self, seconds: float, until: Callable[[], bool]) -> None:
        deadline = time.monotonic() + seconds
        while not until() and (left := deadline - time.monotonic()) > 0:
            self._event.wait(left)
            self._event.clear()

    def wake(self) -> None:
        self._event.set()


class Slot:
    """One execution slot: runs the turns its process's dispatcher hands it, one at a time,
    in a thread of its own, and reports each back to be acknowledged."""

    def __init__(self, index: int, state: WorkerState, dispatcher: Dispatcher) -> None:
        self.index = index
        self.state = state
        self.dispatcher = dispatcher
        self.waiting = SlotWaiting()

    def run(self) -> None:
        state = self.state
        runner = RequestRunner(
            state.settings,
            state.registry,
            state.requests,
            state.attempts,
            state.stop,
            Waiting(self.waiting.wait, self.waiting.wake),
            lease=self.dispatcher.lease.holds,
        )
        try:
            while not state.stop.is_set():
                turn = self.dispatcher.take_turn(timeout=IDLE_SECONDS)
                if turn is None:
                    continue
                state.slot_busy(+1)
                try:
                    report = self._settle(runner, turn)
                finally:
                    state.slot_busy(-1)
                self.dispatcher.report(report)
        finally:
            runner.close()

    def _settle(self, runner: RequestRunner, turn: Turn) -> Settled:
        """Run the request until its outcome is recorded, or until it goes back to its
        partition: the worker stops or lost its broker lease (handed back), or a later
        holder has it (lost). A database outage is waited out here: the lane's next
        request must not start meanwhile."""
        failures = 0
        while True:
            try:
                runner.run(turn.message, turn.epoch)
                return Settled(turn, settled=True)
            except HandBack:
                return Settled(turn, settled=False)
            except Superseded:
                log.warning("slot %d: a later holder has request %s", self.index, turn.message.request_id)
                return Settled(turn, settled=False, lost=True)
            except DatabaseError as error:
                log.warning("slot %d: %r; trying again", self.index, error)
            except Exception:
                log.exception("slot %d: unexpected error; trying again", self.index)
            failures += 1
            self.waiting.wait(retry_delay(failures), self.state.stop.is_set)
            if self.state.stop.is_set():
                return Settled(turn, settled=False)


def _report_lanes(seen: LanesSeen) -> None:
    metrics.lanes_seen(seen.lanes_with_work, seen.lanes_waiting, seen.waiting_requests, seen.deepest_lane)


def create_worker(settings: Settings) -> tuple[WorkerState, list[Callable[[], None]]]:
    """The worker's shared state and the loops to run in threads; tests use this door too."""
    db = connect(settings)
    try:
        ensure_indexes(db)
    except DatabaseError:
        log.warning("database unavailable at start; indexes are created by the next process that reaches it")
    check_partition_count(db, settings)
    state = WorkerState(
        settings=settings,
        registry=build_registry(settings),
        requests=Requests(db),
        attempts=Attempts(db),
    )
    # Quorum partitions are taken one process at a time (lanes.lane.holding).
    locks = TakeLocks(db) if settings.queue_type == "quorum" else None
    overflow = Overflow(
        DeepLaneRegistry(db),
        window=settings.lane_window,
        settled=lambda request_id: state.requests.recorded_outcome(request_id) is not None,
        max_fed=settings.worker_slots,
    )
    dispatcher = Dispatcher(
        settings,
        state.stop,
        settings.worker_slots,
        take_partition=functools.partial(
            take_partition, names=QueueNames.of(settings), attempts=state.attempts, locks=locks
        ),
        overflow=overflow,
        report_lanes=_report_lanes,
    )
    slots = [Slot(i, state, dispatcher) for i in range(settings.worker_slots)]
    state.wake_slots = [slot.waiting.wake for slot in slots]
    return state, [dispatcher.run] + [slot.run for slot in slots]


def run(settings: Settings) -> None:
    """Run a worker until SIGTERM or SIGINT; each slot finishes its current request first."""
    state, loops = create_worker(settings)

    def request_stop(signum: int, _frame: object) -> None:
        log.info("stopping on signal %d", signum)
        state.stop.set()
        for wake in state.wake_slots:
            wake()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    threads = [threading.Thread(target=loop, name=f"lanes-slot-{i}", daemon=True) for i, loop in enumerate(loops)]
    for thread in threads:
        thread.start()
    stop_sweeping = start_sweeper(settings)
    log.info("worker started with %d slots", settings.worker_slots)
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(timeout=0.5)
    stop_sweeping.set()
