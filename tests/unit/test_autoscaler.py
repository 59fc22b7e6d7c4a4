"""The autoscaler's decisions, with scripted partition readings and stand-in processes."""

from __future__ import annotations

import json
import signal
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from deploy import autoscaler as autoscaler_module
from deploy.autoscaler import Autoscaler, PartitionQueues, Policy, Reading, management_url
from lanes.broker import Counts, QueueMissing
from lanes.errors import BrokerError
from lanes.lane.messages import partition_of
from lanes.settings import Settings


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


def reading(ready: list[int], messages: list[int] | None) -> Reading:
    """Four partitions: their ready counts over AMQP, their messages from the management API."""
    return Reading(ready=tuple(ready), messages=None if messages is None else tuple(messages))


IDLE = reading([0, 0, 0, 0], [0, 0, 0, 0])


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


@pytest.mark.parametrize(
    ("messages", "partitions", "wanted"),
    [(0, 0, 0), (1, 1, 1), (4, 1, 1), (5, 2, 2), (16, 4, 4), (17, 8, 4), (1000, 16, 4)],
)
def test_never_more_workers_than_the_messages_fill_and_never_past_max(
    messages: int, partitions: int, wanted: int
) -> None:
    assert Policy(0, 4, 4, 10).desired(messages, partitions) == wanted


def test_never_more_workers_than_partitions_with_work() -> None:
    # One deep lane lives in one partition, which one worker holds
    assert Policy(0, 4, 4, 10).desired(40, 1) == 1
    assert Policy(0, 4, 4, 10).desired(40, 3) == 3


def test_min_workers_stay_up_with_no_work() -> None:
    assert Policy(1, 4, 4, 10).desired(0, 0) == 1


def test_a_partition_counts_its_fresh_ready_messages_or_its_lagging_total_whichever_is_more() -> None:
    # Partition 0: no worker holds it yet; 1: held, the management API counts it; 2: its
    # messages were handed back (ready now) since the API counted them as held
    counted = reading([3, 0, 2, 0], [1, 5, 2, 0])
    assert counted.work == (3, 5, 2, 0)
    assert (counted.total, counted.busy_partitions) == (10, 3)
    # Without the management API only ready messages are seen
    assert reading([3, 0, 0, 0], None).work == (3, 0, 0, 0)


def test_the_first_message_starts_a_worker_at_once() -> None:
    autoscaler, _ = scaler([IDLE, reading([1, 0, 0, 0], None)])
    autoscaler.step()
    assert autoscaler.running == 0
    autoscaler.step()
    assert autoscaler.running == 1


def test_messages_in_several_partitions_start_a_worker_for_each_up_to_what_slots_fill() -> None:
    autoscaler, _ = scaler([reading([5, 3, 1, 0], [0, 0, 0, 0])])
    autoscaler.step()
    assert autoscaler.running == 3


def test_a_worker_holding_work_is_not_stopped_while_the_management_api_still_counts_none() -> None:
    # Given a worker idle for almost the idle period, then given work it took at once
    # (unacknowledged: the management API shows it seconds later)
    autoscaler, clock = scaler([reading([1, 0, 0, 0], None), IDLE, IDLE, held(busy=1)], idle_seconds=3)
    autoscaler.step()
    clock.t = 1
    autoscaler.step()
    clock.t = 3.9
    autoscaler.step()
    # When the idle period is up
    clock.t = 4.1
    autoscaler.step()
    # Then the worker says it is busy, and it stays
    assert autoscaler.running == 1


def test_lanes_waiting_for_a_slot_add_one_worker_at_a_time() -> None:
    readings = [
        held(busy=1, waiting=1, joined=0),  # t=0: work held by a worker the runner did not start
        held(busy=1, waiting=1, joined=1),  # t=3: lanes still wait in it: one more
        held(busy=2, waiting=1, joined=1),  # t=4: the new one has not joined the roster yet
        held(busy=2, waiting=1, joined=2),  # t=4.5: joined, but the partitions are not shared anew yet
        held(busy=2, waiting=1, joined=2),  # t=6: still waiting: one more
    ]
    autoscaler, clock = scaler(readings)
    for t, running in ((0, 1), (3, 2), (4, 2), (4.5, 2), (6, 3)):
        clock.t = t
        autoscaler.step()
        assert autoscaler.running == running, t


def test_lanes_waiting_beside_a_spare_worker_add_none() -> None:
    # Given two workers, lanes waiting in one while the other has a slot to spare
    readings = [held(busy=2, waiting=1, joined=2, spare=1)] * 2 + [held(busy=2, waiting=1, joined=2)]
    autoscaler, clock = scaler(readings)
    autoscaler.workers.extend([FakeProcess(), FakeProcess()])  # type: ignore[list-item]
    # When the lanes still wait long after the last growth
    clock.t = 10
    autoscaler.step()
    clock.t = 11
    autoscaler.step()
    # Then the spare worker is left to take the partitions passed on to it
    assert autoscaler.running == 2
    # And once no worker has a slot to spare while lanes wait, one more starts
    clock.t = 12
    autoscaler.step()
    assert autoscaler.running == 3


def held(busy: int = 0, waiting: int = 0, joined: int = 1, spare: int = 0) -> Reading:
    """Work that workers hold (unacknowledged, not yet in the management API's figures)."""
    return Reading(ready=(0, 0, 0, 0), messages=(0, 0, 0, 0), joined=joined, busy=busy, waiting=waiting, spare=spare)


def test_one_deep_lane_gets_one_worker() -> None:
    autoscaler, _ = scaler([reading([0, 0, 40, 0], None)])
    autoscaler.step()
    assert autoscaler.running == 1


def test_work_a_worker_holds_grows_the_workers_once_the_management_api_counts_it() -> None:
    # One worker holds every partition: new work is unacknowledged at once, invisible over AMQP
    autoscaler, _ = scaler([reading([2, 0, 0, 0], [0, 0, 0, 0]), reading([0, 0, 0, 0], [6, 3, 0, 0])])
    autoscaler.step()
    assert autoscaler.running == 1
    autoscaler.step()
    assert autoscaler.running == 2


def test_scales_to_zero_only_after_a_whole_idle_period() -> None:
    # Given one worker whose partitions are all done
    autoscaler, clock = scaler([reading([3, 0, 0, 0], None)] + [IDLE] * 3)
    autoscaler.step()
    (worker,) = autoscaler.workers

    # When every partition stays empty for less than the idle period, nothing stops
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
    autoscaler, clock = scaler([reading([1, 0, 0, 0], None), IDLE, reading([0, 1, 0, 0], [0, 1, 0, 0]), IDLE, IDLE])
    autoscaler.step()
    autoscaler.step()  # idle from t=0
    clock.t = 8
    autoscaler.step()  # a request ran: the countdown is reset
    clock.t = 12
    autoscaler.step()  # idle again from t=12
    clock.t = 15
    autoscaler.step()
    assert autoscaler.running == 1


def test_grows_with_backlog_and_shrinks_to_what_the_partitions_need() -> None:
    shrunk = reading([0, 0, 0, 0], [2, 3, 0, 0])
    autoscaler, clock = scaler([reading([4, 3, 2, 0], None), shrunk, shrunk], idle_seconds=5)
    autoscaler.step()
    assert autoscaler.running == 3
    autoscaler.step()
    clock.t = 5
    autoscaler.step()
    assert autoscaler.running == 2


def test_without_the_management_api_no_worker_is_stopped() -> None:
    # What the workers hold cannot be seen over AMQP: an empty ready count proves nothing
    blind = reading([0, 0, 0, 0], None)
    autoscaler, clock = scaler([reading([1, 0, 0, 0], None), blind, blind, blind])
    autoscaler.step()
    for t in (1, 20, 40):
        clock.t = t
        autoscaler.step()
    assert autoscaler.running == 1


def test_a_blind_autoscaler_keeps_its_workers() -> None:
    autoscaler, clock = scaler([reading([1, 0, 0, 0], None), BrokerError("down"), IDLE, BrokerError("down")])
    autoscaler.step()
    for t in (1, 20, 40):
        clock.t = t
        autoscaler.step()
    assert autoscaler.running == 1


def test_a_worker_that_died_is_replaced_when_still_needed_but_not_in_a_tight_loop() -> None:
    autoscaler, clock = scaler([reading([1, 0, 0, 0], None)] * 3)
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


class FakeBroker:
    """Passive declares against a set of existing queues, each 404 recorded."""

    def __init__(self, ready: dict[str, int]) -> None:
        self.ready = ready
        self.missing: list[str] = []
        # The worker signal queues: consumers are worker processes.
        self.consumers = {
            "lanes.workers": 0,
            "lanes.workers.busy": 0,
            "lanes.workers.waiting": 0,
            "lanes.workers.spare": 0,
        }

    def counts(self, name: str) -> Counts:
        if name in self.consumers:
            return Counts(ready=0, consumers=self.consumers[name])
        if name not in self.ready:
            self.missing.append(name)
            raise QueueMissing(name)
        return Counts(ready=self.ready[name], consumers=0)


class FakeConnection:
    is_open = True

    def close(self) -> None:
        pass


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> FakeBroker:
    fake = FakeBroker({})
    monkeypatch.setattr(autoscaler_module, "open_connection", lambda _settings: FakeConnection())
    monkeypatch.setattr(autoscaler_module, "Channel", lambda _connection: fake)
    return fake


@pytest.fixture
def management() -> Iterator[tuple[str, list[dict[str, list[str]]], list[Any]]]:
    """A management API on localhost: the queries it got, and the answer it gives (one item)."""
    queries: list[dict[str, list[str]]] = []
    answer: list[Any] = [{"items": []}]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            queries.append({"path": [url.path], **urllib.parse.parse_qs(url.query)})
            body = json.dumps(answer[0]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", queries, answer
    server.shutdown()
    server.server_close()


def test_partitions_not_declared_yet_read_empty_at_the_cost_of_one_404_a_reading(broker: FakeBroker) -> None:
    queues = PartitionQueues(Settings(lane_partitions=4), "http://127.0.0.1:9", management_every=3600)
    assert queues.read().ready == (0, 0, 0, 0)
    assert broker.missing == ["lanes.partition.0"]

    # The first enqueue declares every partition before it publishes
    broker.ready = {f"lanes.partition.{k}": 0 for k in range(4)} | {"lanes.partition.2": 3}
    assert queues.read().ready == (0, 0, 3, 0)
    assert broker.missing == ["lanes.partition.0"]


def test_an_undeclared_partition_does_not_hide_the_others_for_long(broker: FakeBroker) -> None:
    # A worker run by hand declared only the partitions it took
    broker.ready = {"lanes.partition.3": 2}
    queues = PartitionQueues(Settings(lane_partitions=4), "http://127.0.0.1:9", management_every=3600)
    readings = [queues.read().ready for _ in range(4)]
    assert (0, 0, 0, 2) in readings
    assert len(broker.missing) == len(readings)


DEEP_USER = "user-0"


def test_the_management_api_is_asked_once_for_the_partitions_and_only_them(
    broker: FakeBroker, management: tuple[str, list[dict[str, list[str]]], list[Any]]
) -> None:
    url, queries, answer = management
    broker.ready = {f"lanes.partition.{k}": 0 for k in range(4)}
    answer[0] = {
        "items": [
            {"name": "lanes.partition.1", "messages": 7},
            {"name": "lanes.partition.3", "messages": 0},
            {"name": "lanes.partition.9", "messages": 5},  # another LANE_PARTITIONS' leftover
            {"name": f"lanes.overflow.{DEEP_USER}", "messages": 40},  # a deep lane's, in partition 2
        ]
    }
    queues = PartitionQueues(Settings(lane_partitions=4, rabbitmq_url="amqp://u:p@h:5672/lanes"), url)

    assert partition_of(DEEP_USER, 4) == 2
    assert queues.read().messages == (0, 7, 40, 0)
    (query,) = queries
    assert query["path"] == ["/api/queues/lanes"]
    # The name filter applies only to a paged listing
    assert query["page"] == ["1"] and query["use_regex"] == ["true"]
    assert query["name"] == [r"^lanes\.(partition|overflow)\..*"]


def test_a_silent_management_api_reads_as_unknown(broker: FakeBroker) -> None:
    broker.ready = {f"lanes.partition.{k}": 0 for k in range(4)}
    queues = PartitionQueues(Settings(lane_partitions=4), "http://127.0.0.1:9")
    assert queues.read().messages is None
