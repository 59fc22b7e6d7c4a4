import pytest

from lanes.errors import ConfigError
from lanes.settings import Settings


def test_defaults_match_the_spec() -> None:
    settings = Settings.from_env({})
    assert settings.max_body_bytes == 64 * 1024
    assert settings.sleep_max_ms == 10_000
    assert settings.max_attempts == 3
    assert settings.retry_backoff_seconds == 0.5
    assert settings.lane_depth_limit == 1000
    assert settings.jwt_expires_seconds == 900


def test_values_are_parsed_from_environment_names() -> None:
    settings = Settings.from_env({"LANE_DEPTH_LIMIT": "7", "RETRY_BACKOFF_SECONDS": "0.25", "ENABLE_FAIL_ACTION": "no"})
    assert (settings.lane_depth_limit, settings.retry_backoff_seconds, settings.enable_fail_action) == (7, 0.25, False)


def test_database_name_comes_from_the_uri_path() -> None:
    assert Settings.from_env({"MONGO_URI": "mongodb://db:27017/backend-system"}).database_name == "backend-system"
    assert Settings.from_env({"MONGO_URI": "mongodb://db:27017/"}).database_name == "lanes"


@pytest.mark.parametrize(
    "env",
    [
        {"LANE_DEPTH_LIMIT": "many"},
        {"LANE_DEPTH_LIMIT": "0"},
        {"MAX_ATTEMPTS": "-1"},
        {"ENABLE_FAIL_ACTION": "maybe"},
        {"JWT_SECRET": "your_jwt_secret"},
        {"JWT_SECRET": "too-short"},
        {"MONGO_URI": "postgres://x"},
        {"RABBITMQ_URL": "amqp:/"},
        {"RABBITMQ_URL": "http://broker"},
        {"QUEUE_PREFIX": "bad prefix!"},
    ],
)
def test_bad_values_are_rejected_at_once(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)
