"""Broker and database operations during a measurement, from the servers' own counters.

Reading the code says what a request ought to cost; the counters say what it did cost,
retries, polling and bookkeeping included. FerretDB's command counters and RabbitMQ's
churn counters are node-wide, so they include whatever else used those servers at the
time; the message counters are the measured vhost's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench.infra import STATS_INTERVAL, management_api, vhost_totals

# Commands a client sends to look after its connection or set-up, not to do a request's work.
HOUSEKEEPING = frozenset(
    {
        "hello",
        "ismaster",
        "isMaster",
        "ping",
        "endSessions",
        "createIndexes",
        "dropIndexes",
        "listIndexes",
        "serverStatus",
        "buildInfo",
        "getParameter",
        "drop",
        "dropDatabase",
    }
)
WRITES = ("insert", "update", "delete", "findAndModify")
CHURN = ("queue_declared", "queue_created", "queue_deleted", "channel_created", "connection_created")
MESSAGES = ("publish", "confirm", "deliver_get", "get", "get_empty", "ack", "redeliver", "return_unroutable")


@dataclass(frozen=True)
class Snapshot:
    at: float
    commands: dict[str, tuple[int, int]]  # FerretDB, every database: command -> (total, failed)
    churn: dict[str, int]  # RabbitMQ, the whole node
    messages: dict[str, int]  # RabbitMQ, this vhost
    settled: bool  # two reads of the broker's figures, one refresh apart, agreed
    # How fast the node-wide counters moved between those two reads, per second: the vhost
    # was quiet then, so this is everyone else's traffic (and the benchmark's own reads).
    idle: dict[str, float]


def _commands(admin: Any) -> dict[str, tuple[int, int]]:
    counters = admin.command("serverStatus")["metrics"]["commands"]
    return {name: (int(c.get("total", 0)), int(c.get("failed", 0))) for name, c in counters.items()}


def _broker(vhost: str) -> tuple[dict[str, int], dict[str, int]]:
    """(node-wide churn, this vhost's message counts); a counter still at zero may be absent."""
    churn = management_api("GET", "/api/overview").get("churn_rates", {})
    stats = vhost_totals(vhost).get("message_stats", {})
    return {k: int(churn.get(k, 0)) for k in CHURN}, {k: int(stats.get(k, 0)) for k in MESSAGES}


def snapshot(vhost: str, admin: Any, bound: float = 12.0) -> Snapshot:
    """The counters once the broker's have settled: the management API refreshes them only
    every STATS_INTERVAL, so what happened just before (workers connecting, the last acks)
    shows only later. Waits until two reads of the vhost's message counts one refresh apart
    agree, at most `bound` seconds (the node-wide counters are not compared: other people's
    connections keep them moving; how fast, in `idle`)."""
    deadline = time.monotonic() + bound
    churn, messages = _broker(vhost)
    at, commands = time.monotonic(), _commands(admin)
    settled, idle = False, {}
    while not settled and time.monotonic() + STATS_INTERVAL + 0.5 <= deadline:
        time.sleep(STATS_INTERVAL + 0.5)
        churn_now, current = _broker(vhost)
        now, commands_now = time.monotonic(), _commands(admin)
        if settled := current == messages:
            moved = _node(churn_now, commands_now), _node(churn, commands)
            idle = {k: (v - moved[1].get(k, 0)) / (now - at) for k, v in moved[0].items()}
        churn, messages, at, commands = churn_now, current, now, commands_now
    return Snapshot(at, commands, churn, messages, settled, idle)


def _node(churn: dict[str, int], commands: dict[str, tuple[int, int]]) -> dict[str, int]:
    """The node-wide counters, keyed as in `usage`'s per-request figures."""
    return {**churn, **_database({k: total for k, (total, _failed) in commands.items()})}


def usage(before: Snapshot, after: Snapshot, requests: int) -> dict[str, Any]:
    """Counts between two snapshots, and per request (of `requests` completed) the database's
    commands (`writes` = insert + update + delete + findAndModify; `find` includes getMore;
    housekeeping such as hello or createIndexes on its own line) and the broker's operations."""
    total = {k: after.commands[k][0] - before.commands.get(k, (0, 0))[0] for k in after.commands}
    failed = {k: after.commands[k][1] - before.commands.get(k, (0, 0))[1] for k in after.commands}
    total, failed = _nonzero(total), _nonzero(failed)
    churn = {k: after.churn[k] - before.churn[k] for k in CHURN}
    messages = {k: after.messages[k] - before.messages[k] for k in MESSAGES}
    database = _database(total)
    out: dict[str, Any] = {
        "seconds": round(after.at - before.at, 2),
        "requests": requests,
        "settled": before.settled and after.settled,
        "database_commands": total,
        "database_failed": failed,
        "broker_churn": churn,
        "broker_messages": messages,
    }
    if requests:
        out["per_request"] = {
            "database": {k: round(v / requests, 3) for k, v in database.items()},
            "broker": {k: round(v / requests, 3) for k, v in (messages | churn).items()},
        }
        # Others' share of the node-wide counts, estimated from the slower of the two quiet
        # spells (the first may still see the workers connecting, the last the work ending).
        rates = {k: min(v, after.idle.get(k, v)) for k, v in before.idle.items()} if after.idle else {}
        share = {k: round(v * (after.at - before.at) / requests, 3) for k, v in rates.items()}
        out["background_per_request"] = {
            "database": {k: v for k, v in share.items() if v > 0 and k not in CHURN},
            "broker": {k: v for k, v in share.items() if v > 0 and k in CHURN},
        }
    return out


def _database(total: dict[str, int]) -> dict[str, int]:
    """Command counts as the report shows them: `writes` = insert + update + delete +
    findAndModify, `find` with getMore, any other work command by name, and housekeeping."""
    work = {k: v for k, v in total.items() if k not in HOUSEKEEPING}
    database = {k: work.pop(k, 0) for k in WRITES}
    database["writes"] = sum(database.values())
    database["find"] = work.pop("find", 0) + work.pop("getMore", 0)
    database |= dict(sorted(work.items()))  # count, aggregate, anything else a request needed
    database["housekeeping"] = sum(v for k, v in total.items() if k in HOUSEKEEPING)
    return database


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in sorted(counts.items()) if v}
