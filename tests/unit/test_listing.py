"""How a listing shows a request: large results left out, and flagged."""

from __future__ import annotations

from datetime import UTC, datetime

from lanes.requests import listed_view, public_view, store_value


def _record(result: object) -> dict[str, object]:
    at = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    return {"_id": "r1", "action": "echo", "status": "done", "result_json": store_value(result), "created_at": at}


def test_a_result_within_the_budget_is_listed_whole() -> None:
    view = listed_view(_record({"n": 1}), max_result_bytes=4096)
    assert view["result"] == {"n": 1} and view["result_omitted"] is False
    assert {k: v for k, v in view.items() if k != "result_omitted"} == public_view(_record({"n": 1}))


def test_a_result_over_the_budget_is_left_out_counting_bytes_not_characters() -> None:
    assert listed_view(_record("x" * 5000), max_result_bytes=4096)["result_omitted"] is True
    wide = "é" * 3000  # 3,002 characters stored, 6,002 bytes
    view = listed_view(_record(wide), max_result_bytes=4096)
    assert view["result"] is None and view["result_omitted"] is True


def test_no_result_yet_is_not_an_omission() -> None:
    record = {"_id": "r1", "action": "echo", "status": "queued", "created_at": None}
    assert listed_view(record, max_result_bytes=0)["result_omitted"] is False
