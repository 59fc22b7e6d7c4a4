"""Isolation on the shared services: a vhost and a database per use, each deleted at the end.

RabbitMQ and FerretDB may be shared with other people's stacks on this machine, so
the benchmark never restarts them and never looks outside its own vhosts and
databases; node-wide figures it reports are labelled as such.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pika
import pymongo

from deploy import services

MONGO = "mongodb://127.0.0.1:27017"
# RabbitMQ's management API refreshes queue and vhost figures every 5 s by default.
STATS_INTERVAL = 5.0


def management_api(method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    """RabbitMQ's management API on 127.0.0.1:15672, as the user `make services` sets up."""
    return services.local_broker().management(method, path, body, timeout=timeout)


def _wait_gone(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            management_api("GET", path)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return
        time.sleep(2)
    raise TimeoutError(f"{path} still exists after {timeout:.0f} s")


def amqp_url(vhost: str) -> str:
    return services.local_broker().amqp_url(vhost)


def mongo_url(database: str) -> str:
    return f"{MONGO}/{database}"


class Isolation:
    """Creates vhosts and databases named after the run, and deletes every one it created."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._vhosts: list[str] = []
        self._databases: list[str] = []
        self._mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(MONGO, tz_aware=True)

    def vhost(self, purpose: str) -> str:
        name = f"bench-{self.run_id}-{purpose}"
        management_api("PUT", f"/api/vhosts/{_quote(name)}")
        user = services.local_broker().credentials.user
        management_api(
            "PUT", f"/api/permissions/{_quote(name)}/{user}", {"configure": ".*", "write": ".*", "read": ".*"}
        )
        self._vhosts.append(name)
        return name

    def database(self, purpose: str) -> str:
        name = f"bench_{self.run_id}_{purpose}".replace("-", "_")
        self._databases.append(name)
        return name

    def db(self, name: str) -> Any:
        return self._mongo[name]

    def drop_vhost(self, name: str) -> None:
        """Delete a vhost and everything in it; with 10,000 queues that takes RabbitMQ a while,
        and a request that gives up early stops the deletion half-way, so wait for it."""
        if name in self._vhosts:
            path = f"/api/vhosts/{_quote(name)}"
            try:
                management_api("DELETE", path, timeout=300)
            except ConnectionError:
                # The management API's HTTP server closes a request idle for a minute, while
                # the deletion goes on: wait for the vhost to be gone instead.
                _wait_gone(path, timeout=300)
            self._vhosts.remove(name)

    def drop_database(self, name: str) -> None:
        if name in self._databases:
            self._databases.remove(name)
            self._mongo.drop_database(name)

    def close(self) -> list[str]:
        """Delete everything still held; returns what could not be deleted."""
        problems = []
        for vhost in list(self._vhosts):
            try:
                self.drop_vhost(vhost)
            except OSError as error:
                problems.append(f"vhost {vhost}: {error}")
        for database in list(self._databases):
            try:
                self.drop_database(database)
            except pymongo.errors.PyMongoError as error:
                problems.append(f"database {database}: {error}")
        self._mongo.close()
        return problems


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def vhost_totals(vhost: str) -> dict[str, Any]:
    return dict(management_api("GET", f"/api/vhosts/{_quote(vhost)}"))


def queues(vhost: str, columns: str = "name,messages,memory") -> list[dict[str, Any]]:
    return list(management_api("GET", f"/api/queues/{_quote(vhost)}?columns={columns}"))


def node_memory_mb() -> float:
    """Memory the RabbitMQ node uses, all vhosts together (shared with anyone else on it)."""
    nodes = management_api("GET", "/api/nodes?columns=name,mem_used")
    return sum(n.get("mem_used", 0) for n in nodes) / 2**20


def published(vhost: str) -> int:
    """Messages published into the vhost so far, as of the management API's last figures."""
    return int(vhost_totals(vhost).get("message_stats", {}).get("publish", 0))


def wait_vhost_idle(vhost: str, published_at_least: int, timeout: float) -> bool:
    """Wait until the vhost holds no ready or unacknowledged message, in figures that already
    count `published_at_least` publishes (the management API lags by up to 5 s, so an older
    figure could show a vhost empty before the work arrived). Callers check the work itself
    afterwards: this only says when looking is worth it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        totals = vhost_totals(vhost)
        fresh = int(totals.get("message_stats", {}).get("publish", 0)) >= published_at_least
        if fresh and totals.get("messages", 1) == 0:
            return True
        time.sleep(0.5)
    return False


def wait_vhost_holds(vhost: str, messages: int, timeout: float) -> bool:
    """Wait until the management API's figures show at least `messages` in the vhost."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if vhost_totals(vhost).get("messages", 0) >= messages:
            return True
        time.sleep(0.5)
    return False


def consumer_count(vhost: str, queue: str) -> int:
    """Consumers of a queue right now (a passive declare, not the lagging management figures)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url(vhost)))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        connection.close()


def wait_consumers(vhost: str, queue: str, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if consumer_count(vhost, queue) >= count:
            return True
        time.sleep(0.2)
    return False
