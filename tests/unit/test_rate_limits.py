"""The in-process token buckets behind the per-user enqueue limit and the register throttle."""

from __future__ import annotations

import pytest

from lanes.errors import ConfigError, TooManyRequests
from lanes.ratelimit import RateLimiter, retry_after
from lanes.settings import Settings


def test_a_key_gets_its_burst_then_the_rate_and_is_told_how_long_to_wait() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert [limiter.take("ada") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("ada") == pytest.approx(0.5)
    assert retry_after(limiter.take("ada")) == 1
    now[0] += 0.5
    assert limiter.take("ada") == 0.0  # one token refilled
    assert limiter.take("ada") > 0


def test_one_key_spending_its_tokens_leaves_the_others_theirs() -> None:
    limiter = RateLimiter(rate=1, burst=1, clock=lambda: 0.0)
    assert limiter.take("heavy") == 0.0 and limiter.take("heavy") > 0
    assert limiter.take("light") == 0.0


def test_check_raises_429_with_a_whole_second_retry_after() -> None:
    limiter = RateLimiter(rate=0.25, burst=1, clock=lambda: 0.0)
    limiter.check("ada", "slow down", "rate_limited")
    with pytest.raises(TooManyRequests) as raised:
        limiter.check("ada", "slow down", "rate_limited")
    assert raised.value.status == 429 and raised.value.code == "rate_limited"
    assert raised.value.headers() == {"Retry-After": "4"}


def test_rate_zero_lets_everything_pass() -> None:
    limiter = RateLimiter(rate=0, burst=0)
    assert all(limiter.take("ada") == 0.0 for _ in range(1000))


def test_memory_stays_bounded_however_many_keys_come(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RateLimiter, "MAX_KEYS", 10)
    now = [0.0]
    limiter = RateLimiter(rate=1, burst=1, clock=lambda: now[0])
    limiter.take("busy")
    for index in range(50):
        now[0] += 0.01
        limiter.take(f"k{index}")
    assert len(limiter._buckets) <= 10


@pytest.mark.parametrize(
    "env",
    [
        {"RETENTION_DAYS": "-1"},
        {"RETENTION_DAYS": "0.5"},  # the SPEC keeps an Idempotency-Key at least 24 h
        {"ENQUEUE_RATE_PER_SECOND": "-0.5"},
        {"REGISTER_PER_MINUTE": "-3"},
        {"LISTING_RESULT_MAX_BYTES": "-1"},
        {"ENQUEUE_RATE_PER_SECOND": "5", "ENQUEUE_BURST": "0"},
    ],
)
def test_limits_and_retention_refuse_impossible_values(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_retention_and_limits_have_their_documented_defaults() -> None:
    settings = Settings.from_env({"RETENTION_DAYS": "0"})
    assert settings.retention_days == 0
    defaults = Settings()
    assert (defaults.retention_days, defaults.enqueue_rate_per_second, defaults.enqueue_burst) == (7.0, 50.0, 200)
    assert (defaults.register_per_minute, defaults.listing_result_max_bytes) == (60, 4096)
