"""The per-username slowdown: how long an attempt waits for the failures of its username."""

from __future__ import annotations

from typing import Any

import pytest

from lanes.settings import Settings
from lanes.throttle import LoginThrottle


class _NoDatabase:
    login_failures: Any = None


@pytest.mark.parametrize(
    ("failures", "wait"),
    [(0, 0.0), (19, 0.0), (20, 0.25), (21, 0.5), (22, 1.0), (23, 2.0), (24, 2.0), (10_000, 2.0)],
)
def test_a_username_failed_from_many_addresses_waits_longer_but_never_past_the_cap(failures: int, wait: float) -> None:
    throttle = LoginThrottle(_NoDatabase(), Settings())  # type: ignore[arg-type]
    assert throttle.delay(failures) == wait


def test_the_slowdown_follows_its_settings() -> None:
    settings = Settings(login_username_max_failures=3, login_username_delay_max_seconds=0.5)
    throttle = LoginThrottle(_NoDatabase(), settings)  # type: ignore[arg-type]
    assert [throttle.delay(n) for n in range(2, 7)] == [0.0, 0.25, 0.5, 0.5, 0.5]
