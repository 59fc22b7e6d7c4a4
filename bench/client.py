"""A lean HTTP client for load: one keep-alive connection per thread, plain http.client.

Python's `requests` costs several times more CPU per call; on a 2-core machine the
client's CPU is taken from the system under test, so the benchmark keeps it small.
"""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bench.procs import STOP

PASSWORD = "bench password 1234"


class Http:
    """One HTTP/1.1 keep-alive connection; not for sharing between threads."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        self.unavailable = 0
        self._connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)

    def post(self, path: str, body: Any, token: str | None = None, retry_unavailable: int = 0) -> tuple[int, Any]:
        """POST JSON; a 503 (not accepted) is sent again at once, up to `retry_unavailable` times,
        as a client would; `self.unavailable` counts the 503s seen."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        payload = json.dumps(body).encode()
        for _ in range(retry_unavailable):
            status, answer = self._call("POST", path, payload, headers)
            if status != 503:
                return status, answer
            self.unavailable += 1
        return self._call("POST", path, payload, headers)

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self._call("GET", path, None, headers)

    def _call(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, Any]:
        try:
            self._connection.request(method, path, body=body, headers=headers)
            response = self._connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            self._connection.close()  # the next call opens a fresh connection
            raise
        try:
            return response.status, json.loads(payload) if payload else None
        except ValueError:
            return response.status, payload.decode(errors="replace")

    def close(self) -> None:
        self._connection.close()


class PerThread:
    """One Http per thread, for thread pools."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url
        self._local = threading.local()
        self._all: list[Http] = []
        self._lock = threading.Lock()

    def get(self) -> Http:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = Http(self._base_url)
            with self._lock:
                self._all.append(client)
        return client

    def unavailable(self) -> int:
        return sum(client.unavailable for client in self._all)

    def close(self) -> None:
        for client in self._all:
            client.close()


@dataclass(frozen=True)
class User:
    id: str
    username: str
    token: str


def register_users(base_url: str, count: int, threads: int = 8) -> list[User]:
    """Register and log in `count` fresh users through the API; raises on any refusal."""
    clients = PerThread(base_url)
    prefix = uuid.uuid4().hex[:8]

    def one(index: int) -> User:
        if STOP.is_set():
            raise KeyboardInterrupt
        http = clients.get()
        username = f"bench-{prefix}-{index}"
        credentials = {"username": username, "password": PASSWORD}
        status, created = http.post("/register", credentials)
        if status != 201:
            raise RuntimeError(f"register answered {status}: {created}")
        status, login = http.post("/login", credentials)
        if status != 200:
            raise RuntimeError(f"login answered {status}: {login}")
        return User(id=created["id"], username=username, token=login["access_token"])

    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, range(count)))
    finally:
        clients.close()
