"""`Client`: register, log in, submit requests to your lane and wait for their outcome.

Retries are automatic only where they cannot run anything twice:

* 429 and 503 mean nothing was accepted, so every call is repeated after the
  server's `Retry-After` (a login lock is reported at once: it lasts minutes);
* a connection that could not be opened is retried for every call;
* a connection that broke after the call was sent is retried only for reads,
  logins and submissions, and a submission is sent again with the same
  `Idempotency-Key`, so the server answers with the first request instead of
  queueing a second one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from lanes_client.errors import NotCancellable, RequestCancelled, RequestFailed, WaitTimeout
from lanes_client.retries import Outcome, RetryPolicy, resends

TERMINAL = ("done", "failed", "cancelled")
STATUSES = ("queued", "processing", *TERMINAL)


class Client:
    """One Lanes base URL and, after `login`, one user's bearer token.

    The client keeps the token and nothing else: no password is stored, and an
    expired token raises `TokenExpired`; call `login` again to go on.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        max_retry_after: float = 60.0,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.token_expires_at: float | None = None
        self.policy = RetryPolicy(retries, max_retry_after)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers or {}, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- users -------------------------------------------------------------

    def register(self, username: str, password: str) -> dict[str, Any]:
        """Create a user: `{id, username}`. A lost answer is not retried (the name may be taken by then)."""
        body = {"username": username, "password": password}
        return dict(self._call("POST", "/register", json=body, auth=False, resend=False).json())

    def login(self, username: str, password: str) -> dict[str, Any]:
        """Exchange credentials for a token, kept on this client: `{access_token, token_type, expires_in}`."""
        body = {"username": username, "password": password}
        answer = dict(self._call("POST", "/login", json=body, auth=False, resend=True).json())
        self.token = str(answer["access_token"])
        self.token_expires_at = time.time() + float(answer.get("expires_in") or 0)
        return answer

    def logout(self) -> None:
        """Revoke the token on the server and forget it."""
        self._call("POST", "/logout", resend=False)
        self.token = None
        self.token_expires_at = None

    # -- requests ----------------------------------------------------------

    def submit(self, action: str = "echo", data: Any = None, idempotency_key: str | None = None) -> Request:
        """Put a request at the tail of your lane. Without a key, one is made for this call and its retries."""
        key = idempotency_key or uuid.uuid4().hex
        body = {"action": action, "data": data}
        response = self._call("POST", "/enqueue", json=body, headers={"Idempotency-Key": key}, resend=True)
        answer = dict(response.json())
        if response.status_code == 200:  # the server already had this key: the first request's record
            return Request(self, answer)
        return Request(self, accepted_record(action, answer), position=answer.get("position"), idempotency_key=key)

    def get(self, request_id: str) -> Request:
        return Request(self, self.get_record(request_id))

    def get_record(self, request_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/requests/{request_id}").json())

    def cancel(self, request_id: str) -> Request:
        """Cancel a request that has not started; `NotCancellable` once it has."""
        try:
            record = dict(self._call("DELETE", f"/requests/{request_id}").json())
        except NotCancellable:
            record = self.get_record(request_id)
            if record["status"] != "cancelled":  # a retried cancel finds its own first answer
                raise
        return Request(self, record)

    def list_requests(self, status: str | None = None, limit: int = 50, after: str | None = None) -> dict[str, Any]:
        """One page: `{items, next_after}`, oldest first."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if after:
            params["after"] = after
        return dict(self._call("GET", "/requests", params=params).json())

    def iter_requests(self, status: str | None = None, page_size: int = 200) -> Iterator[Request]:
        """Every request of yours (with `status`: those in it), oldest first, page after page."""
        after: str | None = None
        while True:
            page = self.list_requests(status, page_size, after)
            for item in page["items"]:
                yield Request(self, item)
            after = page.get("next_after")
            if not after:
                return

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    # -- the one door to HTTP ----------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        resend: bool | None = None,
    ) -> httpx.Response:
        """Send one call, retrying where it is safe; raise the typed error of an error answer.

        resend: the call may be repeated after it may have reached the server (default: reads only).
        """
        resend = resends(method, resend)
        headers = dict(headers or {})
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            outcome = self._try(method, path, json, params, headers, resend, attempt)
            if isinstance(outcome, httpx.Response):
                return outcome
            error, delay = outcome
            if delay is None:
                raise error
            time.sleep(delay)
            attempt += 1

    def _try(
        self,
        method: str,
        path: str,
        json: Any,
        params: dict[str, Any] | None,
        headers: dict[str, str],
        resend: bool,
        attempt: int,
    ) -> Outcome:
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as error:
            return self.policy.after_transport_error(error, f"{method} {self.base_url}{path}", resend, attempt)
        return self.policy.after_answer(response, resend, attempt)


class Request:
    """A request in your lane: its id and the last record the server gave for it."""

    def __init__(
        self,
        client: Client,
        record: dict[str, Any],
        *,
        position: int | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        self.client = client
        self.record = record
        self.id = str(record["request_id"])
        self.position = position
        self.idempotency_key = idempotency_key

    def __repr__(self) -> str:
        return f"Request({self.id!r}, status={self.status!r})"

    @property
    def status(self) -> str:
        return str(self.record["status"])

    @property
    def result(self) -> Any:
        return self.record.get("result")

    @property
    def error(self) -> str | None:
        return self.record.get("error")

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def refresh(self) -> Request:
        self.record = self.client.get_record(self.id)
        return self

    def cancel(self) -> Request:
        self.record = self.client.cancel(self.id).record
        return self

    def wait(self, timeout: float | None = None, poll: float = 0.05, max_poll: float = 1.0) -> Any:
        """Poll until the request is terminal; return its result.

        Raises `RequestFailed` or `RequestCancelled` for those outcomes and `WaitTimeout`
        after `timeout` seconds (None: no limit). Polls start every `poll` seconds and
        back off to `max_poll`; a 429 or 503 while polling waits its `Retry-After`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = poll
        if not self.finished or self.record.get("result_omitted"):
            self.refresh()
        while not self.finished:
            if deadline is not None and time.monotonic() + interval > deadline:
                raise WaitTimeout(self.id, self.status, timeout or 0)
            time.sleep(interval)
            interval = min(max_poll, interval * 1.5)
            self.refresh()
        return outcome(self.record)


def outcome(record: dict[str, Any]) -> Any:
    """A terminal record's result, or the error its status stands for."""
    if record["status"] == "failed":
        raise RequestFailed(record)
    if record["status"] == "cancelled":
        raise RequestCancelled(record)
    return record.get("result")


def accepted_record(action: str, answer: dict[str, Any]) -> dict[str, Any]:
    """The record of a request just accepted (202), as far as its answer tells."""
    return {"action": action, "result": None, "error": None, "attempts": 0, **answer}
