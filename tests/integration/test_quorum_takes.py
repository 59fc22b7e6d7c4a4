"""Quorum partitions taken by racing processes (lanes.lane.holding): however the takes
interleave, each partition ends up held by exactly one process, that process is the one
the broker delivers to, and every partition drains."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator

import pymongo
import pytest

from lanes.broker import ChannelPool, PartitionSession, QueueNames
from lanes.db import connect
from lanes.lane.attempts import Attempts
from lanes.lane.holding import TakeLocks, take_partition
from lanes.lane.messages import LaneMessage
from lanes.requests import new_request_id
from lanes.settings import Settings
from tests.support import management_api, open_vhost

PARTITIONS = 16
PROCESSES = 6
TAKES = 1000


@pytest.fixture
def settings(running_services: None) -> Iterator[Settings]:
    run_id = uuid.uuid4().hex[:10]
    vhost = f"lanes-takes-{run_id}"
    settings = Settings(
        rabbitmq_url=open_vhost(vhost),
        mongo_uri=f"mongodb://127.0.0.1:27017/lanes_takes_{run_id}",
        queue_type="quorum",
        lane_partitions=PARTITIONS,
    )
    yield settings
    management_api("DELETE", f"/api/vhosts/{vhost}")
    pymongo.MongoClient(settings.mongo_uri).drop_database(settings.database_name)


def test_racing_takes_of_quorum_partitions_leave_each_held_once_and_every_one_drains(settings: Settings) -> None:
    # Given six processes' sessions taking the sixteen quorum partitions at once, 1,000 takes in all
    names, db = QueueNames.of(settings), connect(settings)
    sessions = [PartitionSession(settings, names, prefetch=10) for _ in range(PROCESSES)]
    attempts, locks = Attempts(db), TakeLocks(db)
    start = threading.Barrier(PROCESSES)

    def race(session: PartitionSession) -> None:
        start.wait()
        for _ in range(TAKES // PROCESSES):
            index = random.randrange(PARTITIONS)
            if index not in session.held:
                take_partition(session, index, names=names, attempts=attempts, locks=locks)

    threads = [threading.Thread(target=race, args=(session,)) for session in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    try:
        # Then the partitions the processes believe they hold add up to the partition count
        held = [set(session.held) for session in sessions]
        assert sum(len(h) for h in held) == PARTITIONS
        assert set().union(*held) == set(range(PARTITIONS))

        # and a request published to each partition reaches the process that believes it holds it
        with ChannelPool(settings).channel() as channel:
            for index in range(PARTITIONS):
                message = LaneMessage(new_request_id(), f"user{index}", "echo", "null")
                channel.publish(names.partition(index), message.body(), headers=message.headers())
        for session, mine in zip(sessions, held, strict=True):
            session.wait(10, lambda s=session, m=mine: len(s.deliveries) >= len(m))  # type: ignore[misc]
            assert {delivery.partition for delivery in session.deliveries} == mine
    finally:
        for session in sessions:
            session.close()
