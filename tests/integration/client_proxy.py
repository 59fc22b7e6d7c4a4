"""A TCP proxy between the Lanes client and the stack that can lose answers and invent refusals.

Each client connection carries one HTTP request (the proxy answers with `Connection:
close`). A script per "METHOD /path" says what to do with the next such requests:
`Forward()`, `DropAnswer()` (the request reaches the stack, its answer never reaches
the client) or `Refuse(status, code, retry_after)` (answered by the proxy; the stack
never sees it). Every request is written down with its headers and arrival time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Forward:
    pass


@dataclass(frozen=True)
class DropAnswer:
    pass


@dataclass(frozen=True)
class Refuse:
    status: int
    code: str
    retry_after: int | None = 1


Step = Forward | DropAnswer | Refuse


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    at: float
    step: Step = field(default_factory=Forward)


REASONS = {429: "Too Many Requests", 503: "Service Unavailable", 502: "Bad Gateway"}


class LossyProxy:
    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.script: dict[str, list[Step]] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def plan(self, route: str, *steps: Step) -> None:
        with self._lock:
            self.script[route] = list(steps)

    def requests(self, route: str) -> list[Seen]:
        return [seen for seen in self.seen if f"{seen.method} {seen.path.split('?')[0]}" == route]

    def close(self) -> None:
        self._server.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            head, body = _read_request(connection)
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            with self._lock:
                steps = self.script.get(f"{method} {path.split('?')[0]}") or []
                step = steps.pop(0) if steps else Forward()
                self.seen.append(Seen(method, path, headers, time.monotonic(), step))
            if isinstance(step, Refuse):
                connection.sendall(_refusal(step))
                return
            kept = [line for line in lines[1:] if line and not line.lower().startswith("connection:")]
            request = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1") + body
            answer = _round_trip(self.upstream, request)
            if isinstance(step, Forward):
                connection.sendall(answer)


def _read_request(connection: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


def _round_trip(upstream: tuple[str, int], request: bytes) -> bytes:
    with socket.create_connection(upstream, timeout=30) as server:
        server.sendall(request)
        answer = b""
        while chunk := server.recv(65536):
            answer += chunk
    return answer


def _refusal(step: Refuse) -> bytes:
    body = json.dumps({"error": step.code, "message": "Refused by the test proxy."}).encode()
    lines = [
        f"HTTP/1.1 {step.status} {REASONS.get(step.status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if step.retry_after is not None:
        lines.append(f"Retry-After: {step.retry_after}")
    return "\r\n".join([*lines, "", ""]).encode() + body
