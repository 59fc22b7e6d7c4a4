"""One user cannot slow the others: every call's cost is bounded (SPEC §3.12)."""

from __future__ import annotations

import statistics
import threading
import time

from tests.conftest import Workers
from tests.support import Api

BIG = "x" * 60_000  # a result far over the listing's 4,096 bytes


def test_a_listing_leaves_large_results_out_and_says_so(api: Api, workers: Workers) -> None:
    user = api.new_user("big")
    small, large = user.enqueue("echo", {"n": 1}), user.enqueue("echo", {"blob": BIG})
    workers.start(1)
    user.wait_terminal([small, large])

    items = {item["request_id"]: item for item in user.call("GET", "/requests").json()["items"]}
    assert items[small]["result"] == {"n": 1} and items[small]["result_omitted"] is False
    assert items[large]["result"] is None and items[large]["result_omitted"] is True
    assert user.request(large)["result"] == {"blob": BIG}  # whole when asked for by id


def test_readyz_stays_fast_while_another_user_pages_through_large_results(api: Api, workers: Workers) -> None:
    # Given a user with 200 finished requests of 60 KB results each
    heavy = api.new_user("heavy")
    ids = [heavy.enqueue("echo", {"blob": BIG, "n": n}) for n in range(200)]
    workers.start(1)
    heavy.wait_terminal(ids[-1:], timeout=120)

    # When that user asks for 200-item pages from four threads at once
    stop = threading.Event()
    pages: list[float] = []

    def hammer() -> None:
        client = Api(api.base_url, heavy.token, heavy.address)
        while not stop.is_set():
            started = time.perf_counter()
            assert client.call("GET", "/requests", params={"limit": 200}).status_code in (200, 429)
            pages.append(time.perf_counter() - started)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    probes = []
    try:
        time.sleep(1)
        for _ in range(40):
            started = time.perf_counter()
            assert api.call("GET", "/readyz").status_code == 200
            probes.append(time.perf_counter() - started)
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    # Then the probe answers within 100 ms throughout
    print(
        f"readyz max {max(probes) * 1000:.0f} ms, median {statistics.median(probes) * 1000:.0f} ms; "
        f"{len(pages)} pages, median {statistics.median(pages) * 1000:.0f} ms"
    )
    assert max(probes) < 0.1
