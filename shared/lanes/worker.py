"""The worker: a process of WORKER_SLOTS slots, each holding one lane at a time.

A slot takes a lane's wake-up token from the shared ready queue, holds the lane
(`lanes.protocol.LaneHolder`), runs its requests in order (`lanes.lifecycle`) and lets
it go. docs/design.md argues why this keeps every lane FIFO.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from lanes import metrics
from lanes.actions import Registry, build_registry
from lanes.broker import QueueNames, Session
from lanes.db import connect, ensure_indexes
from lanes.errors import BrokerError, DatabaseError
from lanes.lifecycle import RequestRunner, Waiting
from lanes.protocol import LaneHolder, token_owner
from lanes.requests import Requests
from lanes.settings import Settings
from lanes.sweeper import start_sweeper

log = logging.getLogger("lanes.worker")

# How often an idle slot looks up from waiting for a token (to notice a stop).
IDLE_WAIT_SECONDS = 0.5


@dataclass
class WorkerState:
    """What a running worker shares between its threads."""

    settings: Settings
    registry: Registry
    requests: Requests
    names: QueueNames
    stop: threading.Event = field(default_factory=threading.Event)
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
        """Take tokens until stopped; leaving by an exception drops the connection, and the
        broker then requeues the token, the lane's unacknowledged head, and lets the lane go."""
        state = self.state
        session = Session(state.settings, state.names)
        runner = RequestRunner(
            state.settings, state.registry, state.requests, state.stop, Waiting(session.wait, session.wake)
        )
        holder = LaneHolder(session, state.settings, state.names, state.stop)
        try:
            session.listen_for_tokens()
            while not state.stop.is_set():
                session.wait(IDLE_WAIT_SECONDS, lambda: bool(session.tokens) or state.stop.is_set())
                if not session.tokens:
                    continue
                token = session.tokens.popleft()
                self._take_turn(holder, runner, token.body)
                session.ack_token(token)
            session.stop_listening_for_tokens()
        finally:
            session.close()
            runner.close()

    def _take_turn(self, holder: LaneHolder, runner: RequestRunner, token: bytes) -> None:
        try:
            user_id = token_owner(token)
        except ValueError:
            log.warning("slot %d: dropping malformed token %r", self.index, token[:100])
            return
        self.state.slot_busy(+1)
        try:
            holder.take_turn(user_id, runner.run)
        finally:
            self.state.slot_busy(-1)


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
    loops: list[Callable[[], None]] = [Slot(i, state).run for i in range(settings.worker_slots)]
    return state, loops


def run(settings: Settings) -> None:
    """Run a worker until SIGTERM or SIGINT; each slot finishes its current request first."""
    state, loops = create_worker(settings)

    def request_stop(signum: int, _frame: object) -> None:
        log.info("stopping on signal %d", signum)
        state.stop.set()

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
