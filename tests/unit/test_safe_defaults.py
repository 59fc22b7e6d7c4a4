"""Defaults that are safe as they ship: private keys, the router's user and buffers, .env,
readiness looks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from flask import Flask

from deploy import runner, services
from deploy.template import load
from lanes.tokens import PRIVATE_KEY_NAME, ensure_local_keys
from lanes.web import health_blueprint


def test_local_keys_are_private_from_the_start(tmp_path: Path) -> None:
    # Given a permissive umask, as on many desktops
    old = os.umask(0o022)
    try:
        private, public = ensure_local_keys(tmp_path / "data" / "keys")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "data" / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.name == PRIVATE_KEY_NAME and public.is_file()


def test_an_existing_open_keys_folder_is_closed(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    keys.chmod(0o755)
    ensure_local_keys(keys)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700


def _config(max_body_bytes: int = 65536) -> str:
    template = load()
    ports = {f.name: 9000 + i for i, f in enumerate(template.http_functions)}
    return runner.nginx_config(template, 8080, ports, Path("/tmp/x"), max_body_bytes)


def test_router_workers_never_run_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    config = _config()
    assert "user root" not in config
    assert config.startswith("user nobody ")


def test_router_buffers_no_more_than_the_body_limit_and_answers_its_errors_in_json() -> None:
    config = _config(max_body_bytes=4096)
    assert "client_max_body_size 4096;" in config and "client_body_buffer_size 4096;" in config
    assert "large_client_header_buffers 4 4k;" in config
    for status in ("400", "405", "408", "411", "413", "414"):
        assert f"location = /_errors/{status} " in config


def test_make_run_reads_the_repository_env_file_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LANE_DEPTH_LIMIT=7\nSLEEP_MAX_MS=1\nJWT_SECRET=" + "s" * 40 + "\n")
    monkeypatch.setenv("SLEEP_MAX_MS", "2")
    monkeypatch.delenv("ENABLE_FAIL_ACTION", raising=False)
    env = runner.base_env(tmp_path / "data", env_file)
    assert env["LANE_DEPTH_LIMIT"] == "7" and env["SLEEP_MAX_MS"] == "2"
    # The local platform shows the fail action; rendered manifests do not (test_render).
    assert env["ENABLE_FAIL_ACTION"] == "true"


def test_readiness_looks_at_the_dependencies_at_most_once_per_interval() -> None:
    calls, now = [], [100.0]
    app = Flask("probe")
    app.register_blueprint(health_blueprint({"db": lambda: calls.append(1)}, cache_seconds=2.0, clock=lambda: now[0]))
    client = app.test_client()
    for _ in range(20):
        assert client.get("/readyz").status_code == 200
    assert len(calls) == 1
    now[0] += 2.0
    client.get("/readyz")
    assert len(calls) == 2


def test_readiness_failure_is_cached_too_and_clears_after_the_interval() -> None:
    down, now = [True], [0.0]

    def check() -> None:
        if down[0]:
            raise ConnectionError("down")

    app = Flask("probe")
    app.register_blueprint(health_blueprint({"broker": check}, cache_seconds=1.5, clock=lambda: now[0]))
    client = app.test_client()
    assert client.get("/readyz").status_code == 503
    down[0] = False
    assert client.get("/readyz").status_code == 503
    now[0] += 1.5
    assert client.get("/readyz").status_code == 200


def test_the_embedded_broker_has_its_own_user_with_a_private_generated_password(tmp_path: Path) -> None:
    first = services.broker_credentials(tmp_path)
    again = services.broker_credentials(tmp_path)
    assert first == again and first.user == "lanes" and first.user != "guest" and len(first.password) >= 24
    assert services.broker_credentials(tmp_path / "elsewhere").password != first.password
    assert stat.S_IMODE((tmp_path / "rabbitmq" / "credentials.json").stat().st_mode) == 0o600
    broker = services.RabbitMQ(tmp_path, 5999, 15999)
    assert broker.amqp_url("lanes-test-1") == f"amqp://lanes:{first.password}@127.0.0.1:5999/lanes-test-1"
    assert broker.url.endswith("@127.0.0.1:5999/%2F")


def test_make_run_reaches_the_embedded_broker_as_its_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANES_SERVICES_DIR", str(tmp_path / "services"))
    monkeypatch.delenv("RABBITMQ_URL", raising=False)
    env = runner.base_env(tmp_path / "data", tmp_path / "no.env")
    assert env["RABBITMQ_URL"] == services.local_broker().url
    assert env["RABBITMQ_URL"].startswith("amqp://lanes:")
