"""How the database answers the status function's and the login throttle's lookups, by size.

    .venv/bin/python scripts/measure_lookups.py [MONGO_URI]

Against a scratch database (dropped afterwards): a listing page's 200 outcomes looked up
one by one by `_id` and in one `$in` query; a user's listing (`user_id` filter, `_id`
sort) with and without the `{user_id, _id}` index; the login throttle's read of one
key's failures, with and without the `{key, at}` index. The medians of five runs, in
milliseconds, are the figures in docs/security.md ("Cheap status").
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo


def median_ms(query: Callable[[], Any]) -> float:
    query()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        query()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(db: Any, size: int) -> str:
    """One line of figures for collections of `size` documents."""
    for name in ("outcomes", "requests", "failures"):
        db.drop_collection(name)
    ids = sorted(os.urandom(16).hex() for _ in range(size))
    at = datetime.now(UTC)
    for start in range(0, size, 1000):
        chunk = list(enumerate(ids[start : start + 1000]))
        db.outcomes.insert_many([{"_id": i, "status": "done", "attempts": 1} for _, i in chunk])
        db.requests.insert_many([{"_id": i, "user_id": f"u{n % 100}", "action": "echo"} for n, i in chunk])
        db.failures.insert_many(
            [{"_id": i, "key": f"pair:u{n % 500}|198.51.100.{n % 250}", "at": at} for n, i in chunk]
        )
    page = ids[size // 2 : size // 2 + 200]
    failures = {"key": {"$in": ["pair:u7|198.51.100.7", "user:u7"]}, "at": {"$gt": at - timedelta(minutes=15)}}
    figures = [
        median_ms(lambda: [db.outcomes.find_one({"_id": i}) for i in page]),
        median_ms(lambda: list(db.outcomes.find({"_id": {"$in": page}}))),
        median_ms(lambda: list(db.requests.find({"user_id": "u7"}).sort("_id", 1).limit(50))),
        median_ms(lambda: list(db.failures.find(failures))),
    ]
    db.requests.create_index([("user_id", 1), ("_id", 1)])
    db.failures.create_index([("key", 1), ("at", 1)])
    figures.insert(3, median_ms(lambda: list(db.requests.find({"user_id": "u7"}).sort("_id", 1).limit(50))))
    figures.append(median_ms(lambda: list(db.failures.find(failures))))
    return f"{size:>9,}  " + "  ".join(f"{figure:>{len(head)}.1f}" for figure, head in zip(figures, HEADS, strict=True))


HEADS = ["outcomes 1-by-1", "outcomes $in", "listing", "listing+index", "failures", "failures+index"]


def main(uri: str) -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri, tz_aware=True)
    db = client[f"lanes_measure_{uuid.uuid4().hex[:8]}"]
    print("server:", "FerretDB" if "ferretdbVersion" in client.admin.command("buildInfo") else "MongoDB")
    print("documents  " + "  ".join(HEADS))
    try:
        for size in (1_000, 10_000, 50_000):
            print(measure(db, size), flush=True)
    finally:
        client.drop_database(db.name)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mongodb://127.0.0.1:27017/")
