"""The Python client (client/, package lanes_client) against a running stack."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import pytest
from lanes_client import AsyncClient, RequestCancelled, RequestFailed, ServiceUnavailable, WaitTimeout

from tests.conftest import Workers
from tests.integration.client_proxy import DropAnswer, LossyProxy, Refuse
from tests.integration.client_support import new_client, through


@pytest.fixture
def proxy(http_stack: str) -> Iterator[LossyProxy]:
    lossy = LossyProxy(http_stack)
    yield lossy
    lossy.close()


def test_echo_sleep_and_fail_each_end_with_their_result(http_stack: str, workers: Workers) -> None:
    workers.start(1, RETRY_BACKOFF_SECONDS="0.1", ENABLE_FAIL_ACTION="true")
    client = new_client(http_stack, "actions")

    echo = client.submit("echo", {"hello": ["lanes", 1]})
    assert echo.status == "queued" and echo.position == 0
    assert echo.wait(timeout=30) == {"hello": ["lanes", 1]}

    assert client.submit("sleep", {"ms": 300}).wait(timeout=30) == {"slept_ms": 300}

    flaky = client.submit("fail", {"times": 1})
    assert flaky.wait(timeout=30) == {"succeeded_on_attempt": 2}
    assert flaky.record["attempts"] == 2

    doomed = client.submit("fail", {"times": 10})
    with pytest.raises(RequestFailed) as failed:
        doomed.wait(timeout=30)
    assert failed.value.record["status"] == "failed" and failed.value.record["attempts"] == 3
    assert "failing on purpose" in str(failed.value.error)


def test_cancelled_request_raises_and_a_wait_can_time_out(http_stack: str, workers: Workers) -> None:
    client = new_client(http_stack, "cancel")
    slow = client.submit("sleep", {"ms": 1500})
    behind = client.submit("echo", {"n": 2})
    assert behind.position == 1
    with pytest.raises(WaitTimeout):
        behind.wait(timeout=0.3)
    assert behind.cancel().status == "cancelled"
    assert client.cancel(behind.id).status == "cancelled"  # cancelling twice finds it cancelled
    with pytest.raises(RequestCancelled):
        behind.wait(timeout=5)
    workers.start(1)
    assert slow.wait(timeout=30) == {"slept_ms": 1500}


def test_two_hundred_submissions_finish_in_order(http_stack: str, workers: Workers) -> None:
    workers.start(2)
    client = new_client(http_stack, "burst")
    requests = [client.submit("echo", {"n": n}) for n in range(200)]
    results = [request.wait(timeout=120) for request in requests]
    assert results == [{"n": n} for n in range(200)]
    records = [request.record for request in requests]
    for before, after in itertools.pairwise(records):
        assert after["started_at"] >= before["finished_at"], (before, after)
    listed = [request.id for request in client.iter_requests(status="done")]
    assert listed == [request.id for request in requests]  # two pages of 200 and the rest


def test_iter_requests_follows_next_after(http_stack: str) -> None:
    client = new_client(http_stack, "pages")
    ids = [client.submit("echo", {"n": n}).id for n in range(7)]
    assert [request.id for request in client.iter_requests(page_size=3)] == ids
    assert [request.id for request in client.iter_requests(status="queued", page_size=2)] == ids
    assert list(client.iter_requests(status="done")) == []


def test_a_lost_answer_is_sent_again_with_its_key_and_runs_once(
    http_stack: str, workers: Workers, proxy: LossyProxy
) -> None:
    workers.start(1)
    owner = new_client(http_stack, "lost")
    client = through(proxy, owner)
    proxy.plan("POST /enqueue", DropAnswer())

    request = client.submit("echo", {"once": True})

    sent = proxy.requests("POST /enqueue")
    assert [type(seen.step).__name__ for seen in sent] == ["DropAnswer", "Forward"]
    assert sent[0].headers["Idempotency-Key"] == sent[1].headers["Idempotency-Key"]
    assert request.wait(timeout=30) == {"once": True}
    assert request.record["attempts"] == 1
    assert [r.id for r in owner.iter_requests()] == [request.id]


def test_429_and_503_are_retried_after_their_retry_after(http_stack: str, proxy: LossyProxy) -> None:
    client = through(proxy, new_client(http_stack, "retry"))
    proxy.plan("POST /enqueue", Refuse(429, "rate_limited", 1), Refuse(503, "service_unavailable", 1))

    started = time.monotonic()
    request = client.submit("echo", {"n": 1})
    assert time.monotonic() - started >= 2.0

    sent = proxy.requests("POST /enqueue")
    assert [type(seen.step).__name__ for seen in sent] == ["Refuse", "Refuse", "Forward"]
    assert all(later.at - earlier.at >= 0.95 for earlier, later in itertools.pairwise(sent))
    assert len({seen.headers["Idempotency-Key"] for seen in sent}) == 1
    assert request.status == "queued"


def test_polling_waits_out_a_503_and_gives_up_after_its_retries(http_stack: str, proxy: LossyProxy) -> None:
    owner = new_client(http_stack, "poll")
    request_id = owner.submit("echo", {"n": 1}).id
    route = f"GET /requests/{request_id}"
    client = through(proxy, owner, retries=1)

    proxy.plan(route, Refuse(503, "service_unavailable", 1))
    assert client.get(request_id).status == "queued"
    assert len(proxy.requests(route)) == 2

    proxy.plan(route, *[Refuse(503, "service_unavailable", 1)] * 3)
    with pytest.raises(ServiceUnavailable) as unavailable:
        client.get(request_id)
    assert unavailable.value.retry_after == 1 and unavailable.value.code == "service_unavailable"
    assert len(proxy.requests(route)) == 4


def test_the_async_client_submits_waits_and_resends_a_lost_answer(
    http_stack: str, workers: Workers, proxy: LossyProxy
) -> None:
    workers.start(1)
    owner = new_client(http_stack, "async")
    proxy.plan("POST /enqueue", DropAnswer(), Refuse(503, "service_unavailable", 1))

    async def scenario() -> tuple[list[object], list[str]]:
        headers = {"X-Forwarded-For": owner._http.headers["X-Forwarded-For"]}
        async with AsyncClient(proxy.url, token=owner.token, headers=headers) as client:
            first = await client.submit("echo", {"n": 1})
            second = await client.submit("echo", {"n": 2})
            results = [await first.wait(timeout=30), await second.wait(timeout=30)]
            listed = [request.id async for request in client.iter_requests(page_size=1)]
            assert listed == [first.id, second.id]
            return results, listed

    results, listed = asyncio.run(scenario())
    assert results == [{"n": 1}, {"n": 2}]
    steps = [type(seen.step).__name__ for seen in proxy.requests("POST /enqueue")]
    assert steps == ["DropAnswer", "Refuse", "Forward", "Forward"]
    assert [r.id for r in owner.iter_requests()] == listed
