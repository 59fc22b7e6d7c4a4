"""The partition count a deployment runs with, recorded once: lanes are hashed to
partitions by it, so two processes that disagree would put one lane in two partitions
and lose its order. The first process to start records LANE_PARTITIONS for its queue
prefix; every later one must have the same, or it refuses to start."""

from __future__ import annotations

import logging
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from lanes.db import translate_errors
from lanes.errors import ConfigError, DatabaseError
from lanes.settings import Settings

log = logging.getLogger("lanes.lane")


@translate_errors
def _recorded(db: Database[dict[str, Any]], settings: Settings) -> int:
    key = f"{settings.queue_prefix}.lane_partitions"
    try:
        db.deployment.insert_one({"_id": key, "value": settings.lane_partitions})
        return settings.lane_partitions
    except DuplicateKeyError:
        recorded = db.deployment.find_one({"_id": key}) or {}
    return int(recorded.get("value", settings.lane_partitions))


def check_partition_count(db: Database[dict[str, Any]], settings: Settings) -> None:
    """ConfigError when this deployment was started with another LANE_PARTITIONS. With the
    database down it cannot tell: it says so and goes on (the next start checks)."""
    try:
        recorded = _recorded(db, settings)
    except DatabaseError as error:
        log.warning("cannot check LANE_PARTITIONS against the deployment's: %s", error)
        return
    if recorded != settings.lane_partitions:
        raise ConfigError(
            f"LANE_PARTITIONS is {settings.lane_partitions}, but this deployment (QUEUE_PREFIX "
            f"{settings.queue_prefix!r}) runs with {recorded}: a lane would be split between two "
            "partitions. Use the recorded count, or drain every partition and remove the record "
            f"(deployment {settings.queue_prefix}.lane_partitions) to change it."
        )
