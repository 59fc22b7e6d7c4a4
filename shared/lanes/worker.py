"""The worker: a process of WORKER_SLOTS slots, each running one request at a time.

A slot takes lanes' wake-up tokens from the shared ready queue, holds up to
LANES_PER_SLOT lanes (`lanes.protocol.LaneHolder`), runs their requests in order
(`lanes.lifecycle`), one lane's request after another's, and lets lanes go when they
run dry or others wait. docs/design.md argues why this keeps every lane FIFO.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lanes import metrics
from lanes.actions import Registry, build_registry
from lanes.broker import Delivery, QueueNames, Session
from lanes.db import connect, ensure_indexes
from lanes.errors import BrokerError, DatabaseError
from lanes.lifecycle import RequestRunner, Waiting
from lanes.partitions import Dispatcher, Settled
from lanes.protocol import IDLE_CHECK_SECONDS, HandBack, LaneHolder, LaneMessage
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
    names: QueueNames
    stop: threading.Event = field(default_factory=threading.Event)
    wake_slots: list[Callable[[], None]] = field(default_factory=list)
    busy: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def slot_busy(self, delta: int) -> None:
        with self.lock:
            self.busy += delta
        metrics.slot_busy(delta)


class Slot:
    """One execution slot: its own broker connection and handler thread, one lane at a time."""

    def __init__(self, index: int, state: WorkerState) -> None:
        self.index = index
        self.state = state

    def run(self) -> None:
        failures = 0
        while not self.state.stop.is_set():
            try:
                self._serve()
                failures = 0
            except (BrokerError, DatabaseError) as error:
                failures += 1
                log.warning("slot %d: %r; reconnecting", self.index, error)
            except Exception:
                # A bug must not leave this slot's connection open: that would keep its
                # lane held and its token unacknowledged for as long as the process lives.
                failures += 1
                log.exception("slot %d: unexpected error; reconnecting", self.index)
            if failures:
                self.state.stop.wait(min(10.0, 0.25 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0))

    def _serve(self) -> None:
        """Take tokens and run held lanes until stopped; leaving by an exception drops the
        connection, and the broker then requeues the tokens and the lanes' unacknowledged
        heads, and frees the lanes."""
        state = self.state
        session = Session(state.settings, state.names)
        runner = RequestRunner(
            state.settings, state.registry, state.requests, state.stop, Waiting(session.wait, session.wake)
        )
        holder = LaneHolder(session, state.settings, state.names)
        try:
            session.listen_for_tokens(prefetch=state.settings.lanes_per_slot)
            next_check = IDLE_CHECK_SECONDS  # an idle slot looks up this often, to notice a stop
            while not state.stop.is_set():
                session.wait(next_check, lambda: bool(session.tokens or session.lane_deliveries) or state.stop.is_set())
                while session.tokens:
                    holder.take(session.tokens.popleft())
                delivery = holder.next_delivery()
                if delivery is not None:
                    self._run(holder, runner, delivery)
                next_check = holder.let_go_idle()
            holder.let_go_all()
            session.stop_listening_for_tokens()
        finally:
            session.close()
            runner.close()

    def _run(self, holder: LaneHolder, runner: RequestRunner, delivery: Delivery) -> None:
        self.state.slot_busy(+1)
        try:
            holder.run(delivery, runner.run)
        finally:
            self.state.slot_busy(-1)


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


class PartitionSlot:
    """One execution slot of a partitions worker: runs the turns its process's dispatcher
    hands it, one at a time, and reports each back to be acknowledged."""

    def __init__(self, index: int, state: WorkerState, dispatcher: Dispatcher) -> None:
        self.index = index
        self.state = state
        self.dispatcher = dispatcher
        self.waiting = SlotWaiting()

    def run(self) -> None:
        state = self.state
        runner = RequestRunner(
            state.settings, state.registry, state.requests, state.stop, Waiting(self.waiting.wait, self.waiting.wake)
        )
        try:
            while not state.stop.is_set():
                turn = self.dispatcher.take_turn(timeout=IDLE_CHECK_SECONDS)
                if turn is None:
                    continue
                state.slot_busy(+1)
                try:
                    settled = self._settle(runner, turn.message)
                finally:
                    state.slot_busy(-1)
                self.dispatcher.report(Settled(turn, settled))
        finally:
            runner.close()

    def _settle(self, runner: RequestRunner, message: LaneMessage) -> bool:
        """Run the request until its outcome is recorded (True), or until the worker stops
        between two attempts (False: it goes back to its partition). A database outage
        is waited out here: the lane's next request must not start meanwhile."""
        failures = 0
        while True:
            try:
                runner.run(message)
                return True
            except HandBack:
                return False
            except DatabaseError as error:
                log.warning("slot %d: %r; trying again", self.index, error)
            except Exception:
                log.exception("slot %d: unexpected error; trying again", self.index)
            failures += 1
            self.waiting.wait(min(10.0, 0.25 * 2 ** min(failures, 6)), self.state.stop.is_set)
            if self.state.stop.is_set():
                return False


def create_worker(settings: Settings) -> tuple[WorkerState, list[Callable[[], None]]]:
    """The worker's shared state and the loops to run in threads; tests use this door too."""
    db = connect(settings)
    try:
        ensure_indexes(db)
    except DatabaseError:
        log.warning("database unavailable at start; indexes are created by the next process that reaches it")
    state = WorkerState(
        settings=settings,
        registry=build_registry(settings),
        requests=Requests(db),
        names=QueueNames.of(settings),
    )
    if settings.lane_protocol == "partitions":
        dispatcher = Dispatcher(settings, state.stop, settings.worker_slots)
        slots = [PartitionSlot(i, state, dispatcher) for i in range(settings.worker_slots)]
        state.wake_slots = [slot.waiting.wake for slot in slots]
        return state, [dispatcher.run] + [slot.run for slot in slots]
    loops: list[Callable[[], None]] = [Slot(i, state).run for i in range(settings.worker_slots)]
    return state, loops


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
