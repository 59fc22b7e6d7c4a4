"""The status function's backlog gauges, measured from a real RabbitMQ and a real database.

The broker is driven the way Lanes drives it: requests go in through the Enqueuer and
the partition publisher, and a worker's hold on a partition is a real PartitionSession.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pymongo
import pytest

from deploy import services
from lanes.broker import ChannelPool, PartitionSession, QueueNames, overflow_arguments, partition_arguments
from lanes.db import connect
from lanes.lane.admission import LaneLedger, PartitionPublisher
from lanes.lane.messages import LaneMessage, partition_of
from lanes.lanestats import LaneStats, Snapshot
from lanes.queueing import Enqueuer
from lanes.requests import Requests, new_request_id
from lanes.settings import Settings
from lanes.validation import EnqueueBody
from tests.support import management_api, open_vhost, wait_until

PARTITIONS = 4
# The management API refreshes its figures every 5 s.
STATS_TIMEOUT = 30
GAUGES = {
    "lanes_broker_up",
    "lanes_database_up",
    "lanes_backlog_requests",
    "lanes_backlog_unheld_requests",
    "lanes_partitions",
    "lanes_partitions_held",
    "lanes_workers_connected",
    "lanes_oldest_pending_age_seconds",
    "lanes_dead_letters",
    "lanes_undeliverable_requests",
}


@pytest.fixture
def settings(running_services: None) -> Iterator[Settings]:
    """A vhost and a database of this test's own, so every count is exact."""
    run_id = uuid.uuid4().hex[:10]
    vhost = f"lanes-stats-{run_id}"
    vhost_url = open_vhost(vhost)
    settings = Settings(
        rabbitmq_url=vhost_url,
        mongo_uri=f"mongodb://127.0.0.1:27017/lanes_stats_{run_id}",
        metrics_cache_seconds=0,
        lane_partitions=PARTITIONS,
    )
    yield settings
    management_api("DELETE", f"/api/vhosts/{vhost}")
    pymongo.MongoClient(settings.mongo_uri).drop_database(settings.database_name)


def user_in(partition: int) -> str:
    return next(f"user{i}" for i in itertools.count() if partition_of(f"user{i}", PARTITIONS) == partition)


def request_message(user_id: str) -> LaneMessage:
    return LaneMessage(new_request_id(), user_id, "echo", "null")


def test_backlog_partitions_workers_and_the_oldest_request_follow_the_broker(settings: Settings) -> None:
    # Given a request accepted five minutes ago at the head of partition 0, then requests of
    # three users in partitions 0, 1 and 2 (1, 3 and 7 of them), partition 3 empty, no worker
    names = QueueNames.of(settings)
    db = connect(settings)
    pool = ChannelPool(settings)
    accepted_long_ago = int(time.time()) - 300
    with pool.channel() as channel:
        channel.declare(names.partition(0), partition_arguments(settings))
        head = request_message(user_in(0))
        channel.publish(names.partition(0), head.body(), headers=head.headers(), timestamp=accepted_long_ago)
        # Not a partition: a queue of the same prefix must not count.
        channel.declare(names.sweeper, {})
        channel.publish(names.sweeper, b"not a request")
    publisher = PartitionPublisher(settings, pool, LaneLedger(settings.lane_depth_limit, lambda _request: False))
    enqueuer = Enqueuer(settings, Requests(db), publisher)
    for partition, count in ((0, 1), (1, 3), (2, 7)):
        for _ in range(count):
            enqueuer.enqueue(user_in(partition), EnqueueBody(action="echo", data=None), None)
    db.dead_letters.insert_one({"_id": "x", "error": "boom"})
    stats = LaneStats(settings, db)

    # When the broker's statistics have caught up
    snapshot: Snapshot = wait_until(
        lambda: (s := stats.snapshot()).backlog == 12 and s.oldest_pending_age and s,
        timeout=STATS_TIMEOUT,
        what="the broker's counts",
    )

    # Then every request waits unheld, and the oldest is the one stamped five minutes ago
    assert snapshot.broker_up and snapshot.database_up
    assert (snapshot.partitions, snapshot.partitions_held, snapshot.backlog_unheld, snapshot.workers) == (4, 0, 12, 0)
    assert snapshot.oldest_pending_age is not None and 300 <= snapshot.oldest_pending_age < 360
    assert snapshot.dead_letters == 1
    families = {family.name: family for family in stats.collect()}
    assert set(families) == GAUGES
    assert all(sample.labels == {} for family in families.values() for sample in family.samples)
    assert families["lanes_backlog_requests"].samples[0].value == 12

    # When a worker process joins the roster and holds partition 0, taking its two requests
    session = PartitionSession(settings, names, prefetch=100)
    try:
        assert session.take(0)
        session.wait(10, lambda: len(session.deliveries) == 2)
        assert len(session.deliveries) == 2
        held: Snapshot = wait_until(
            lambda: (s := stats.snapshot()).workers == 1 and s.partitions_held == 1 and s.backlog_unheld == 10 and s,
            timeout=STATS_TIMEOUT,
            what="the broker to see the worker and its partition",
        )

        # Then its requests are still backlog, and the oldest still counts while it is held
        assert held.backlog == 12
        assert held.oldest_pending_age is not None and held.oldest_pending_age >= 300

        # When the worker settles the old request (its acknowledgement)
        assert session.ack(session.deliveries.popleft())
        # (the queue's count and its head's timestamp may be refreshed in different rounds)
        settled: Snapshot = wait_until(
            lambda: (s := stats.snapshot()).backlog == 11 and (s.oldest_pending_age or 0) < 60 and s,
            timeout=STATS_TIMEOUT,
            what="the broker to see the acknowledgement",
        )

        # Then the oldest is one accepted a moment ago: held, not started, still counted
        assert settled.oldest_pending_age is not None and 0 <= settled.oldest_pending_age < 60
        assert (settled.partitions_held, settled.backlog_unheld) == (1, 10)
    finally:
        session.close()

    # And once the worker is gone, its unsettled request is unheld backlog again, and no worker runs
    gone: Snapshot = wait_until(
        lambda: (s := stats.snapshot()).workers == 0 and s.partitions_held == 0 and s.backlog_unheld == 11 and s,
        timeout=STATS_TIMEOUT,
        what="the broker to see the worker leave",
    )
    assert gone.backlog == 11 and gone.partitions == 4


def test_requests_without_a_timestamp_leave_the_age_out_and_a_stranded_partition_counts(settings: Settings) -> None:
    # Given a request without an acceptance stamp in partition 9, beyond LANE_PARTITIONS (an
    # earlier setting's): no worker takes it, and the broker cannot tell its age
    names = QueueNames.of(settings)
    with ChannelPool(settings).channel() as channel:
        channel.declare(names.partition(9), partition_arguments(settings))
        stranded = request_message("stranded")
        channel.publish(names.partition(9), stranded.body(), headers=stranded.headers())
    stats = LaneStats(settings, connect(settings))

    # When the broker's statistics have caught up
    snapshot: Snapshot = wait_until(
        lambda: (s := stats.snapshot()).backlog == 1 and s, timeout=STATS_TIMEOUT, what="the broker's counts"
    )

    # Then it is unheld backlog, and the age is left out rather than read as zero
    assert (snapshot.partitions, snapshot.partitions_held, snapshot.backlog_unheld) == (1, 0, 1)
    assert snapshot.oldest_pending_age is None
    families = {family.name for family in stats.collect()}
    assert "lanes_oldest_pending_age_seconds" not in families and "lanes_backlog_requests" in families


def test_a_deep_lanes_overflow_is_backlog_and_a_dead_lettered_request_is_undeliverable(settings: Settings) -> None:
    # Given a deep lane's overflow queue holding 3 requests (its partition unheld), and a
    # request a partition dead-lettered instead of delivering it again
    names = QueueNames.of(settings)
    deep = user_in(1)
    broker = services.local_broker()
    services.dead_lettering(
        f"http://127.0.0.1:{broker.management_port}", broker.credentials, settings.rabbitmq_vhost, "lanes"
    )
    with ChannelPool(settings).channel() as channel:
        channel.declare(names.overflow(deep), overflow_arguments(settings))
        for _ in range(3):
            message = request_message(deep)
            channel.publish(names.overflow(deep), message.body(), headers=message.headers())
        channel.declare(names.partition(0), partition_arguments(settings))
        refused = request_message(user_in(0))
        channel.publish(names.partition(0), refused.body(), headers=refused.headers())
        method, _properties, _body = channel.raw.basic_get(names.partition(0))
        channel.raw.basic_reject(method.delivery_tag, requeue=False)  # what a delivery limit does
    stats = LaneStats(settings, connect(settings))

    # When the broker's statistics have caught up
    snapshot: Snapshot = wait_until(
        lambda: (s := stats.snapshot()).backlog == 3 and s.undeliverable == 1 and s,
        timeout=STATS_TIMEOUT,
        what="the broker's counts",
    )

    # Then the overflow's requests are unheld backlog (no worker holds partition 1), not a
    # partition, and the dead-lettered one is counted where an operator's alert sees it
    assert (snapshot.partitions, snapshot.backlog_unheld) == (1, 3)
    families = {family.name: family for family in stats.collect()}
    assert families["lanes_undeliverable_requests"].samples[0].value == 1


def test_nothing_pending_reads_as_zero(settings: Settings) -> None:
    snapshot = LaneStats(settings, connect(settings)).snapshot()
    assert snapshot.broker_up and snapshot.database_up
    assert (snapshot.partitions, snapshot.backlog, snapshot.workers, snapshot.oldest_pending_age) == (0, 0, 0, 0)


def test_an_unreachable_broker_or_database_is_reported_and_its_gauges_left_out(settings: Settings) -> None:
    broken = replace(
        settings,
        rabbitmq_management_url="http://guest:guest@127.0.0.1:9",  # nothing listens on the discard port
        mongo_uri="mongodb://127.0.0.1:9/lanes",
    )
    families = {f.name: f for f in LaneStats(broken, connect(broken)).collect()}
    assert families["lanes_broker_up"].samples[0].value == 0
    assert families["lanes_database_up"].samples[0].value == 0
    assert set(families) == {"lanes_broker_up", "lanes_database_up"}
