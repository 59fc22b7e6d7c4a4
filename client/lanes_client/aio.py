"""`AsyncClient`: the same calls as `Client` for asyncio programs, on httpx's AsyncClient.

    async with AsyncClient("http://127.0.0.1:8080") as lanes:
        await lanes.login("ada", "a long password")
        request = await lanes.submit("echo", {"x": 1})
        print(await request.wait(timeout=30))

Retries follow the same policy (lanes_client.retries); waits are `asyncio.sleep`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from lanes_client.client import TERMINAL, accepted_record, outcome
from lanes_client.errors import NotCancellable, WaitTimeout
from lanes_client.retries import RetryPolicy, resends


class AsyncClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        max_retry_after: float = 60.0,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.policy = RetryPolicy(retries, max_retry_after)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=headers or {}, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def register(self, username: str, password: str) -> dict[str, Any]:
        body = {"username": username, "password": password}
        return dict((await self._call("POST", "/register", json=body, auth=False, resend=False)).json())

    async def login(self, username: str, password: str) -> dict[str, Any]:
        body = {"username": username, "password": password}
        answer = dict((await self._call("POST", "/login", json=body, auth=False, resend=True)).json())
        self.token = str(answer["access_token"])
        return answer

    async def logout(self) -> None:
        await self._call("POST", "/logout", resend=False)
        self.token = None

    async def submit(self, action: str = "echo", data: Any = None, idempotency_key: str | None = None) -> AsyncRequest:
        key = idempotency_key or uuid.uuid4().hex
        body = {"action": action, "data": data}
        response = await self._call("POST", "/enqueue", json=body, headers={"Idempotency-Key": key}, resend=True)
        answer = dict(response.json())
        if response.status_code == 200:
            return AsyncRequest(self, answer)
        return AsyncRequest(self, accepted_record(action, answer), position=answer.get("position"))

    async def get(self, request_id: str) -> AsyncRequest:
        return AsyncRequest(self, await self.get_record(request_id))

    async def get_record(self, request_id: str) -> dict[str, Any]:
        return dict((await self._call("GET", f"/requests/{request_id}")).json())

    async def cancel(self, request_id: str) -> AsyncRequest:
        try:
            record = dict((await self._call("DELETE", f"/requests/{request_id}")).json())
        except NotCancellable:
            record = await self.get_record(request_id)
            if record["status"] != "cancelled":
                raise
        return AsyncRequest(self, record)

    async def list_requests(
        self, status: str | None = None, limit: int = 50, after: str | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        if after:
            params["after"] = after
        return dict((await self._call("GET", "/requests", params=params)).json())

    async def iter_requests(self, status: str | None = None, page_size: int = 200) -> AsyncIterator[AsyncRequest]:
        after: str | None = None
        while True:
            page = await self.list_requests(status, page_size, after)
            for item in page["items"]:
                yield AsyncRequest(self, item)
            after = page.get("next_after")
            if not after:
                return

    async def _call(
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
        again = resends(method, resend)
        headers = dict(headers or {})
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, json=json, params=params, headers=headers)
            except httpx.TransportError as error:
                result = self.policy.after_transport_error(error, f"{method} {self.base_url}{path}", again, attempt)
            else:
                result = self.policy.after_answer(response, again, attempt)
            if isinstance(result, httpx.Response):
                return result
            failure, delay = result
            if delay is None:
                raise failure
            await asyncio.sleep(delay)
            attempt += 1


class AsyncRequest:
    """A request in your lane, for `AsyncClient`: `await request.wait(timeout)`."""

    def __init__(self, client: AsyncClient, record: dict[str, Any], *, position: int | None = None) -> None:
        self.client = client
        self.record = record
        self.id = str(record["request_id"])
        self.position = position

    @property
    def status(self) -> str:
        return str(self.record["status"])

    @property
    def result(self) -> Any:
        return self.record.get("result")

    async def refresh(self) -> AsyncRequest:
        self.record = await self.client.get_record(self.id)
        return self

    async def wait(self, timeout: float | None = None, poll: float = 0.05, max_poll: float = 1.0) -> Any:
        """As `Request.wait`: the result of a done request, else RequestFailed, RequestCancelled, WaitTimeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = poll
        if self.status not in TERMINAL or self.record.get("result_omitted"):
            await self.refresh()
        while self.status not in TERMINAL:
            if deadline is not None and time.monotonic() + interval > deadline:
                raise WaitTimeout(self.id, self.status, timeout or 0)
            await asyncio.sleep(interval)
            interval = min(max_poll, interval * 1.5)
            await self.refresh()
        return outcome(self.record)
