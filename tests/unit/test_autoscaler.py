"""The autoscaler's decisions, with a scripted queue and stand-in processes."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from deploy.autoscaler import Autoscaler, Policy, Reading, management_url
from lanes.errors import BrokerError


class FakeProcess:
    def __init__(self) -> None:
        self.signals: list[int] = []
        self.returncode: int | None = None
        self.pid = 1

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)
        self.returncode = 0  # a graceful worker exits on SIGTERM

    def kill(self) -> None:
        self.returncode = -9

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def scaler(readings: list[Any], **policy: Any) -> tuple[Autoscaler, Clock]:
    clock = Clock()
    script = iter(readings)

    def read() -> Reading:
        value = next(script)
        if isinstance(value, Exception):
            raise value
        return value

    defaults: dict[str, Any] = {"min_workers": 0, "max_workers": 4, "lanes_per_worker": 4, "idle_seconds": 10}
    return Autoscaler(policy=Policy(**{**defaults, **policy}), queue=read, spawn=FakeProcess, now=clock), clock  # type: ignore[arg-type]


@pytest.mark.parametrize(("busy", "wanted"), [(0, 0), (1, 1), (4, 1), (5, 2), (16, 4), (17, 4), (1000, 4)])
def test_never_more_workers_than_busy_lanes_fill_and_never_past_max(busy: int, wanted: int) -> None:
    assert Policy(0, 4, 4, 10).desired(busy) == wanted


def test_min_workers_stay_up_with_no_work() -> None:
    assert Policy(1, 4, 4, 10).desired(0) == 1


def test_busy_lanes_are_waiting_tokens_plus_lanes_being_run() -> None:
    assert Reading(ready=2, consumers=8, unacked=3).busy_lanes() == 5
    assert Reading(ready=0, consumers=8, unacked=3).busy_lanes() == 3
    # Tokens still waiting at the next poll: every consumer holds a lane, whatever the lagging API says
    assert Reading(ready=2, consumers=8, unacked=3).busy_lanes(saturated=True) == 10
    # Without the management API a waiting token suggests every consumer is busy
    assert Reading(ready=2, consumers=8, unacked=None).busy_lanes() == 10
    assert Reading(ready=0, consumers=8, unacked=None).busy_lanes() == 0


def test_a_token_waiting_across_two_polls_grows_the_workers_before_the_api_catches_up() -> None:
    # One worker (4 slots) is busy; the management API still says nothing runs
    autoscaler, _ = scaler([Reading(1, 0, 0), Reading(1, 4, 0), Reading(1, 4, 0)])
    autoscaler.step()
    autoscaler.step()  # a waiting token may just be in flight to an idle slot
    assert autoscaler.running == 1
    autoscaler.step()  # still waiting: all 4 slots are busy, 5 lanes want 2 workers
    assert autoscaler.running == 2


def test_first_token_starts_a_worker_at_once() -> None:
    autoscaler, _ = scaler([Reading(0, 0, 0), Reading(1, 0, None)])
    autoscaler.step()
    assert autoscaler.running == 0
    autoscaler.step()
    assert autoscaler.running == 1


def test_scales_to_zero_only_after_a_whole_idle_period() -> None:
    # Given one worker whose lanes are all done
    autoscaler, clock = scaler([Reading(3, 0, 0)] + [Reading(0, 4, 0)] * 4 + [Reading(0, 4, 1), Reading(0, 4, 0)] * 3)
    autoscaler.step()
    (worker,) = autoscaler.workers

    # When the queue stays empty for less than the idle period, nothing stops
    autoscaler.step()
    clock.t = 9.9
    autoscaler.step()
    assert autoscaler.running == 1 and worker.signals == []  # type: ignore[attr-defined]

    # Then once the idle period has passed, the worker gets SIGTERM
    clock.t = 10.0
    autoscaler.step()
    assert autoscaler.running == 0
    assert worker.signals == [signal.SIGTERM]  # type: ignore[attr-defined]


def test_work_within_the_idle_period_restarts_the_countdown() -> None:
    autoscaler, clock = scaler(
        [Reading(1, 0, 0), Reading(0, 4, 0), Reading(0, 4, 1), Reading(0, 4, 0), Reading(0, 4, 0)]
    )
    autoscaler.step()
    autoscaler.step()  # idle from t=0
    clock.t = 8
    autoscaler.step()  # a lane ran: the countdown is reset
    clock.t = 12
    autoscaler.step()  # idle again from t=12
    clock.t = 15
    autoscaler.step()
    assert autoscaler.running == 1


def test_grows_with_backlog_and_shrinks_to_what_the_lanes_need() -> None:
    autoscaler, clock = scaler([Reading(9, 0, 0), Reading(0, 12, 5), Reading(0, 12, 5)], idle_seconds=5)
    autoscaler.step()
    assert autoscaler.running == 3
    autoscaler.step()
    clock.t = 5
    autoscaler.step()
    assert autoscaler.running == 2


def test_a_blind_autoscaler_keeps_its_workers() -> None:
    autoscaler, clock = scaler([Reading(1, 0, 0), BrokerError("down"), Reading(0, 4, 0), BrokerError("down")])
    autoscaler.step()
    for t in (1, 20, 40):
        clock.t = t
        autoscaler.step()
    assert autoscaler.running == 1


def test_a_worker_that_died_is_replaced_when_still_needed_but_not_in_a_tight_loop() -> None:
    autoscaler, clock = scaler([Reading(1, 0, 0)] * 3)
    autoscaler.step()
    autoscaler.workers[0].returncode = 1  # type: ignore[attr-defined]
    autoscaler.step()
    assert autoscaler.running == 0  # paused after the crash
    clock.t = autoscaler.crash_pause
    autoscaler.step()
    assert autoscaler.running == 1 and autoscaler.workers[0].returncode is None  # type: ignore[attr-defined]


def test_management_url_defaults_to_the_brokers_host() -> None:
    assert management_url("amqp://u:p@rabbit.lanes.svc:5672/%2F") == "http://rabbit.lanes.svc:15672"
    assert management_url("amqp://u:p@rabbit:5672/", "https://mgmt:443", 15672) == "https://mgmt:443"
