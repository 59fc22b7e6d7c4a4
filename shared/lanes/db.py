"""The MongoDB connection, the collections Lanes keeps, and pymongo errors translated at the edge.

Every hot-path query is by `_id` (a find, an insert or a find-and-modify): that is
what both MongoDB and the embedded FerretDB answer through an index.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import pymongo
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from lanes.errors import DatabaseError
from lanes.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")


def connect(settings: Settings) -> Database[dict[str, Any]]:
    """A database handle; pymongo connects lazily and reconnects by itself after outages."""
    # Acknowledged only once a majority of a replica set has it in its journal, so a
    # failover cannot roll back a write the client was told about (a 202's record, an
    # outcome). FerretDB on SQLite accepts and ignores the concern: each write is an
    # SQLite transaction, committed before the answer.
    client: MongoClient[dict[str, Any]] = MongoClient(
        settings.mongo_uri,
        w="majority",
        journal=True,
        serverSelectionTimeoutMS=3000,
        connectTimeoutMS=3000,
        socketTimeoutMS=15000,
        tz_aware=True,
        appname="lanes",
    )
    return client.get_database(settings.database_name)


def translate_errors(func: Callable[P, T]) -> Callable[P, T]:
    """Turn pymongo's connection failures into DatabaseError so callers never import pymongo."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except (pymongo.errors.DuplicateKeyError, OperationFailure):
            raise
        except PyMongoError as error:
            raise DatabaseError(str(error)) from None

    return wrapper


@translate_errors
def ensure_indexes(db: Database[dict[str, Any]]) -> None:
    """Create the indexes Lanes relies on; safe to repeat."""
    # Listings: a user's requests in id order. MongoDB answers them from this index.
    # FerretDB 1.24 on SQLite never reads a secondary index (it pushes down only `_id`
    # equality; its query plan for a listing is a table scan with or without it), yet
    # keeps it on every insert: there it is dropped, not kept.
    # Login throttling (lanes.throttle): an attempt reads its keys' failures in the window,
    # a failure deletes those older than it. Kept on MongoDB only, like the listing's.
    listing = [("user_id", pymongo.ASCENDING), ("_id", pymongo.ASCENDING)]
    failures = ([("key", pymongo.ASCENDING), ("at", pymongo.ASCENDING)], [("at", pymongo.ASCENDING)])
    if is_ferretdb(db):
        for collection, index in ((db.requests, listing), *((db.login_failures, keys) for keys in failures)):
            with contextlib.suppress(OperationFailure):
                collection.drop_index(index)
    else:
        db.requests.create_index(listing)
        for keys in failures:
            db.login_failures.create_index(keys)
    # Records no longer carry a status (it is derived from claims and outcomes): the
    # index an older version kept on it would only cost every insert.
    with contextlib.suppress(OperationFailure):
        db.requests.drop_index("status_1_created_at_1")
    try:
        db.revocations.create_index("expires_at", expireAfterSeconds=0)
    except OperationFailure:
        pass  # FerretDB has no TTL indexes; the reaper (lanes.retention) prunes instead


def time_ordered_id(at: float | None = None, *, floor: bool = False) -> str:
    """32 hex digits in a UUIDv7 layout: ids compare in the order they were made, so
    "made since" is an `_id` range. With `floor`, the smallest id of the moment `at`."""
    millis = (time.time_ns() // 1_000_000) if at is None else int(at * 1000)
    if floor:
        return f"{max(0, millis):012x}"
    raw = bytearray(millis.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def is_ferretdb(db: Database[dict[str, Any]]) -> bool:
    """True when the server is FerretDB (its buildInfo names its own version)."""
    return "ferretdbVersion" in db.client.admin.command("buildInfo")


def now() -> datetime:
    """The current UTC time at millisecond precision, as BSON stores it."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and a Z suffix, as the API promises."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@translate_errors
def ping(db: Database[dict[str, Any]]) -> None:
    db.command("ping")
