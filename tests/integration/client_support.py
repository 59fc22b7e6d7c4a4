"""Helpers of the client's tests: users with their own address, clients through the proxy."""

from __future__ import annotations

import random
import uuid

from lanes_client import Client

from tests.integration.client_proxy import LossyProxy

PASSWORD = "correct horse battery"


def an_address() -> str:
    """Each client stands for its own address, so no test's throttles reach another's."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def new_client(base_url: str, prefix: str = "client", **options: float) -> Client:
    client = Client(base_url, headers={"X-Forwarded-For": an_address()}, **options)  # type: ignore[arg-type]
    username = f"{prefix}-{uuid.uuid4().hex[:12]}"
    assert client.register(username, PASSWORD)["username"] == username
    client.login(username, PASSWORD)
    return client


def through(proxy: LossyProxy, client: Client, **options: float) -> Client:
    """A client of the same user whose calls go through the proxy."""
    headers = {"X-Forwarded-For": client._http.headers["X-Forwarded-For"]}
    return Client(proxy.url, token=client.token, headers=headers, **options)  # type: ignore[arg-type]
