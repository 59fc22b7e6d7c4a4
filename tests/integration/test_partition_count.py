"""The partition count is the deployment's, recorded by the first process: one started
with another count refuses to start rather than split lanes between partitions."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest

from lanes.errors import ConfigError
from lanes.lane.partitions import check_partition_count
from lanes.settings import Settings


def test_a_process_with_another_partition_count_refuses_to_start(database: Any) -> None:
    # Given a deployment whose first process started with 16 partitions
    settings = Settings(queue_prefix=f"count{uuid.uuid4().hex[:8]}", lane_partitions=16)
    check_partition_count(database, settings)
    # When another starts with the same count, it starts; with another, it is refused
    check_partition_count(database, settings)
    with pytest.raises(ConfigError, match=r"LANE_PARTITIONS is 8, but this deployment .* runs with 16"):
        check_partition_count(database, replace(settings, lane_partitions=8))
    # and another deployment (queue prefix) keeps its own count
    check_partition_count(database, replace(settings, queue_prefix=settings.queue_prefix + "b", lane_partitions=8))
