import logging
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta

import pytest

from lanes.actions import ActionContext, ActionFailed, build_registry, echo, fail, sleep
from lanes.db import iso
from lanes.errors import ConfigError
from lanes.lifecycle import _settle
from lanes.requests import _derive, body_fingerprint, new_request_id, public_view
from lanes.settings import Settings


def test_request_ids_sort_in_acceptance_order() -> None:
    ids = [new_request_id() for _ in range(50)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    stamps = [int(i[:12], 16) for i in ids]
    assert stamps == sorted(stamps)
    assert len(set(ids)) == 50


def test_fingerprint_ignores_key_order_but_not_values() -> None:
    assert body_fingerprint("echo", {"a": 1, "b": 2}) == body_fingerprint("echo", {"b": 2, "a": 1})
    assert body_fingerprint("echo", {"a": 1}) != body_fingerprint("echo", {"a": 2})
    assert body_fingerprint("echo", None) != body_fingerprint("sleep", None)


def test_timestamps_are_iso_utc_with_milliseconds() -> None:
    assert iso(datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"
    assert iso(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000Z"
    assert iso(None) is None


def test_public_view_has_exactly_the_api_fields() -> None:
    record = {"_id": "r", "action": "echo", "status": "queued", "user_id": "u", "fingerprint": "f", "attempts": 0}
    view = public_view(record)
    assert set(view) == {
        "request_id", "action", "status", "result", "error", "attempts", "created_at", "started_at", "finished_at",
    }  # fmt: skip
    assert "user_id" not in view


def _context(attempt: int = 1, **settings: int) -> ActionContext:
    return ActionContext(request_id="r", user_id="u", attempt=attempt, settings=Settings(**settings))  # type: ignore[arg-type]


def test_echo_returns_its_data() -> None:
    assert echo({"x": [1]}, _context()) == {"x": [1]}


def test_sleep_is_capped() -> None:
    assert sleep({"ms": 10_000}, _context(sleep_max_ms=5)) == {"slept_ms": 5.0}


@pytest.mark.parametrize("data", [{"ms": -1}, {"ms": "10"}, {"ms": True}])
def test_sleep_refuses_bad_durations(data: object) -> None:
    with pytest.raises(ActionFailed):
        sleep(data, _context())


def test_fail_fails_the_first_attempts_then_succeeds() -> None:
    with pytest.raises(ActionFailed):
        fail({"times": 2}, _context(attempt=2))
    assert fail({"times": 2}, _context(attempt=3)) == {"succeeded_on_attempt": 3}


def test_fail_is_off_unless_switched_on() -> None:
    assert "fail" not in build_registry(Settings()).names
    assert "fail" not in build_registry(Settings(enable_fail_action=False)).names
    assert {"echo", "sleep", "fail"} <= build_registry(Settings(enable_fail_action=True)).names


def test_user_actions_come_from_a_module() -> None:
    registry = build_registry(Settings(actions_module="tests.unit.sample_actions"))
    handler = registry.get("shout")
    assert handler is not None and handler("hi", _context()) == "HI"


@pytest.mark.parametrize("module", ["no.such.module", "tests.unit.test_settings"])
def test_bad_actions_modules_fail_at_start(module: str) -> None:
    with pytest.raises(ConfigError):
        build_registry(Settings(actions_module=module))


def test_a_request_never_shows_started_before_created_or_finished_before_started() -> None:
    # Given times written by hosts whose clocks differ: the worker's 6 ms behind the enqueue's
    created = datetime(2026, 1, 1, 12, 0, 0, 10_000, tzinfo=UTC)
    outcome = {
        "status": "done",
        "attempts": 1,
        "started_at": created - timedelta(milliseconds=6),
        "finished_at": created - timedelta(milliseconds=9),
    }
    # When the request is read
    derived = _derive({"_id": "r", "created_at": created}, None, outcome)
    # Then its times are in order
    assert derived["created_at"] <= derived["started_at"] <= derived["finished_at"]
    assert derived["started_at"] == created


def test_an_unexpected_handler_error_reaches_the_client_as_a_generic_message_with_a_reference(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a handler that raises with text the client must not see
    failed: Future[object] = Future()
    failed.set_exception(RuntimeError("password=hunter2 at /srv/secret.db"))
    record = {"_id": "r1", "user_id": "u", "action": "a", "attempts": 1, "correlation_id": "corr-7"}
    # When its attempt settles
    with caplog.at_level(logging.ERROR, logger="lanes.worker"):
        ok, error = _settle(failed, record)
    # Then the client's error names the reference, not the text; the log has both
    assert not ok and error == "the action failed unexpectedly (reference corr-7)"
    assert "hunter2" in caplog.text and caplog.records[0].correlation_id == "corr-7"
