"""The lane gauges, measured from a real RabbitMQ and a real database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import pymongo
import pytest

from lanes.broker import ChannelPool, QueueNames, lane_arguments, open_connection
from lanes.db import connect
from lanes.lanestats import LaneStats, Snapshot
from lanes.protocol import LanePublisher
from lanes.queueing import Enqueuer
from lanes.requests import Requests
from lanes.settings import Settings
from lanes.validation import EnqueueBody
from tests.support import management_api, open_vhost, wait_until


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
    )
    yield settings
    management_api("DELETE", f"/api/vhosts/{vhost}")
    pymongo.MongoClient(settings.mongo_uri).drop_database(settings.database_name)


def enqueue(settings: Settings, requests: Requests, publisher: LanePublisher, user_id: str, count: int) -> None:
    enqueuer = Enqueuer(settings, requests, publisher)
    for _ in range(count):
        enqueuer.enqueue(user_id, EnqueueBody(action="echo", data=None), None)


def test_lane_gauges_count_lanes_backlog_depths_and_listening_slots(settings: Settings) -> None:
    # Given three users with 1, 3 and 7 requests waiting, a fourth with none, and no worker
    db = connect(settings)
    requests = Requests(db)
    publisher = LanePublisher(settings, ChannelPool(settings))
    for user_id, count in (("u1", 1), ("u3", 3), ("u7", 7)):
        enqueue(settings, requests, publisher, user_id, count)
    with open_connection(settings) as connection:
        idle_lane = QueueNames("lanes").lane("idle")
        connection.channel().queue_declare(idle_lane, durable=True, arguments=lane_arguments(settings))
    db.dead_letters.insert_one({"_id": "x", "error": "boom"})
    stats = LaneStats(settings, db)

    # When the broker's statistics have caught up (it refreshes them every few seconds)
    snapshot: Snapshot = wait_until(
        lambda: (s := stats.snapshot()).backlog == 11 and s.lanes == 4 and s.oldest_pending_age > 0 and s,
        timeout=30,
        what="the broker's counts",
    )

    # Then the numbers describe the lanes without naming anyone
    assert snapshot.broker_up and snapshot.database_up
    assert (snapshot.lanes, snapshot.lanes_with_backlog, snapshot.backlog) == (4, 3, 11)
    assert sorted(snapshot.depths) == [1, 3, 7]
    assert snapshot.lanes_waiting == 3  # one wake-up token per lane that went from empty to busy
    assert snapshot.ready_consumers == 0
    # The oldest head was stamped when it was accepted, a moment ago
    assert 0 < snapshot.oldest_pending_age < 60 and snapshot.dead_letters == 1
    families = {family.name: family for family in stats.collect()}
    depth = {s.labels.get("le"): s.value for s in families["lanes_lane_depth"].samples if s.name.endswith("_bucket")}
    assert (depth["1"], depth["2"], depth["5"], depth["10"], depth["+Inf"]) == (1, 1, 2, 3, 3)
    assert all("u7" not in str(sample.labels) for family in families.values() for sample in family.samples)

    # And a slot listening on the ready queue is seen as one
    with open_connection(settings) as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(QueueNames("lanes").ready, lambda *_: None)
        connection.process_data_events(0.1)
        assert wait_until(lambda: stats.snapshot().ready_consumers == 1, timeout=30, what="the consumer")


def test_nothing_pending_reads_as_zero_age(settings: Settings) -> None:
    snapshot = LaneStats(settings, connect(settings)).snapshot()
    assert snapshot.broker_up and snapshot.database_up
    assert (snapshot.lanes, snapshot.backlog, snapshot.oldest_pending_age) == (0, 0, 0)


def test_an_unreachable_broker_or_database_is_reported_and_its_gauges_left_out(settings: Settings) -> None:
    broken = replace(
        settings,
        rabbitmq_management_url="http://guest:guest@127.0.0.1:9",  # nothing listens on the discard port
        mongo_uri="mongodb://127.0.0.1:9/lanes",
    )
    families = {f.name: f for f in LaneStats(broken, connect(broken)).collect()}
    assert families["lanes_broker_up"].samples[0].value == 0
    assert families["lanes_database_up"].samples[0].value == 0
    assert "lanes_backlog_requests" not in families and "lanes_oldest_pending_age_seconds" not in families
