"""The two directions for a bounded worker memory, side by side at their smallest: what
each adds to a request's path, on the embedded RabbitMQ and FerretDB, with nothing else
running (docs/design.md §6.1).

(a) window plus spill: a request of a lane deeper than the window is published (in a
    transaction per batch) to its lane's overflow queue and acknowledged in the partition,
    then fetched back with a `basic.get` and acknowledged when it settles. A lane within
    its window adds nothing.
(b) the database as the lane backlog: every request takes the lane's next sequence number
    (a find-and-modify `$inc`; FerretDB has no atomic alternative but an insert race), is
    stored under it and read back by the worker by that id, and the lane's last settled
    sequence is written after it (an update): on every request, deep or not. (Read by a
    lane-and-sequence query instead, FerretDB 1.24 scans: 27 ms a request at 2,000.)

What both share (the confirmed publish to the partition, the record, the claim and the
outcome) is left out. Figures: wall time and CPU milliseconds per request, by server,
from /proc.

    .venv/bin/python -m bench.prototypes.backlog_directions [--lanes 50 --per-lane 40]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import pika
import pymongo

from bench import cpu
from bench.infra import Isolation, amqp_url, mongo_url
from deploy import services

BATCH = 50  # spills committed together, as a worker's batch of deliveries


def spill_and_fetch(url: str, lanes: list[str], per_lane: int) -> int:
    """(a): each request spilled into its lane's overflow queue, then fetched and acked."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.exchange_declare("proto.overflow", "direct", durable=True)
        for lane in lanes:
            channel.queue_declare(f"proto.overflow.{lane}", durable=True)
            channel.queue_bind(f"proto.overflow.{lane}", "proto.overflow", lane)
        channel.tx_select()
        properties = pika.BasicProperties(delivery_mode=2)
        spilled = 0
        for n in range(per_lane):
            for lane in lanes:
                channel.basic_publish("proto.overflow", lane, json.dumps({"n": n}).encode(), properties)
                spilled += 1
                if spilled % BATCH == 0:
                    channel.tx_commit()
        channel.tx_commit()
        fetcher = connection.channel()
        for _ in range(per_lane):
            for lane in lanes:
                method, _props, _body = fetcher.basic_get(f"proto.overflow.{lane}")
                assert method is not None
                fetcher.basic_ack(method.delivery_tag)
        for lane in lanes:
            fetcher.queue_delete(f"proto.overflow.{lane}")
        return spilled
    finally:
        connection.close()


def sequence_and_read(database: Any, lanes: list[str], per_lane: int) -> int:
    """(b): each request numbered in its lane and stored under `<lane>:<number>` (FerretDB
    finds by `_id` alone without a scan), read back by that id, its lane's last settled
    number written."""
    requests, counters = database.proto_requests, database.proto_lanes
    done = 0
    for n in range(per_lane):
        for lane in lanes:
            seq = counters.find_one_and_update(
                {"_id": lane}, {"$inc": {"seq": 1}}, upsert=True, return_document=pymongo.ReturnDocument.AFTER
            )["seq"]
            requests.insert_one({"_id": f"{lane}:{seq:012d}", "data": {"n": n}})
    for n in range(per_lane):
        for lane in lanes:
            found = requests.find_one({"_id": f"{lane}:{n + 1:012d}"})
            assert found is not None
            counters.update_one({"_id": lane}, {"$set": {"settled": n + 1}})
            done += 1
    return done


def inserts_only(database: Any, lanes: list[str], per_lane: int) -> int:
    """The record insert that (b)'s numbering rides on, alone: what Lanes pays already."""
    requests = database.proto_plain
    for n in range(per_lane):
        for lane in lanes:
            requests.insert_one({"_id": uuid.uuid4().hex, "user_id": lane, "data": {"n": n}})
    return per_lane * len(lanes)


def measure(name: str, run: Any) -> dict[str, Any]:
    before = cpu.snapshot()
    began = time.monotonic()
    count = run()
    seconds = time.monotonic() - began
    used = cpu.usage(before, cpu.snapshot(), count)
    per_request = used.get("cpu_ms_per_request", {})
    return {"direction": name, "requests": count, "ms_per_request": round(seconds * 1000 / count, 3), **per_request}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lanes", type=int, default=50)
    parser.add_argument("--per-lane", type=int, default=40)
    args = parser.parse_args()
    started = services.up()  # the embedded RabbitMQ and FerretDB, unless they run already
    isolation = Isolation(f"proto{uuid.uuid4().hex[:6]}")
    vhost, database_name = isolation.vhost("directions"), isolation.database("directions")
    lanes = [uuid.uuid4().hex for _ in range(args.lanes)]
    database = isolation.db(database_name)
    try:
        rows = [
            measure(
                "(a) spill, fetch, ack (deep lanes only)",
                lambda: spill_and_fetch(amqp_url(vhost), lanes, args.per_lane),
            ),
            measure(
                "(b) number, read, mark settled (every request)",
                lambda: sequence_and_read(database, lanes, args.per_lane),
            ),
            measure("the record insert both have (for scale)", lambda: inserts_only(database, lanes, args.per_lane)),
        ]
    finally:
        isolation.close()
        services.down(started)
    print(json.dumps({"database": mongo_url(database_name), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
