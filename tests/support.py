"""Small helpers the tests share: an API client, bounded waiting, ports, RabbitMQ's management API."""

from __future__ import annotations

import random
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import requests

from deploy import services

TERMINAL = ("done", "failed", "cancelled")
STATUS_RETRIES = 30


def wait_until(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll check() until it returns something truthy; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (requests.RequestException, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port_block(size: int) -> int:
    """A base port such that base .. base+size-1 are all free on 127.0.0.1."""
    for _ in range(200):
        base = random.randint(20000, 40000)
        if all(_port_free(base + i) for i in range(size)):
            return base
    raise RuntimeError("no free block of ports")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def management_api(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The embedded broker's management API, as its user (deploy.services)."""
    return services.local_broker().management(method, path, body)


def open_vhost(name: str) -> str:
    """A vhost of its own for a test stack, open to the broker's user; its AMQP URL."""
    broker = services.local_broker()
    broker.management("PUT", f"/api/vhosts/{name}")
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    broker.management("PUT", f"/api/permissions/{name}/{broker.credentials.user}", everything)
    return broker.amqp_url(name)


class Api:
    """A Lanes client for tests: thin over requests, one session per instance."""

    def __init__(self, base_url: str, token: str | None = None, address: str | None = None) -> None:
        self.base_url = base_url
        self.token = token
        self.session = requests.Session()
        # Test clients reach the router from 127.0.0.1, an address of a trusted proxy
        # (TRUSTED_PROXIES' default), so the entry they send is believed: each client can
        # stand for its own address and one test's failed logins never throttle another's.
        self.address = address or f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        self.session.headers["X-Forwarded-For"] = self.address

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        for _ in range(STATUS_RETRIES):
            response = self.session.request(method, self.base_url + path, headers=headers, timeout=30, **kwargs)
            # Reads are held to STATUS_RATE_PER_SECOND per user; a test polling hard waits
            # as a well-behaved client would, as long as Retry-After says.
            if method != "GET" or response.status_code != 429 or "Retry-After" not in response.headers:
                return response
            time.sleep(float(response.headers["Retry-After"]))
        return response

    def ready(self) -> bool:
        return self.call("GET", "/readyz").status_code == 200

    def new_user(self, prefix: str = "user") -> Api:
        """Register and log in a fresh user; returns a client holding its token."""
        username = f"{prefix}-{uuid.uuid4().hex[:12]}"
        password = "correct horse battery"
        created = self.call("POST", "/register", json={"username": username, "password": password})
        assert created.status_code == 201, created.text
        login = self.call("POST", "/login", json={"username": username, "password": password})
        assert login.status_code == 200, login.text
        user = Api(self.base_url, login.json()["access_token"], self.address)
        user.username = username  # type: ignore[attr-defined]
        return user

    def enqueue(self, action: str = "echo", data: Any = None, **kwargs: Any) -> str:
        response = self.call("POST", "/enqueue", json={"action": action, "data": data}, **kwargs)
        assert response.status_code == 202, response.text
        return str(response.json()["request_id"])

    def request(self, request_id: str) -> dict[str, Any]:
        response = self.call("GET", f"/requests/{request_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_terminal(self, request_ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
        def all_terminal() -> list[dict[str, Any]] | None:
            records = [self.request(r) for r in request_ids]
            return records if all(r["status"] in TERMINAL for r in records) else None

        return list(wait_until(all_terminal, timeout=timeout, what=f"{len(request_ids)} requests to finish"))
