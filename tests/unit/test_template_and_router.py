from pathlib import Path

import pytest

from deploy.runner import function_env, nginx_config
from deploy.template import TemplateError, load


def test_template_describes_every_function() -> None:
    template = load()
    assert {f.name for f in template.functions} == {"register", "login", "enqueue", "status", "worker"}
    assert template.function("worker").trigger == "rabbitmq"
    assert all(f.app for f in template.http_functions)


def test_every_spec_route_is_routed() -> None:
    template = load()
    ports = {f.name: 9000 + i for i, f in enumerate(template.http_functions)}
    config = nginx_config(template, 8080, ports, Path("/tmp/x"))
    for route in ("= /register", "= /login", "= /logout", "= /enqueue", "/requests", "= /healthz", "= /readyz"):
        assert f"location {route} " in config
    assert "listen 127.0.0.1:8080;" in config


def test_only_the_signing_function_gets_the_private_key() -> None:
    template = load()
    base = {"JWT_PRIVATE_KEY_FILE": "/k", "JWT_PUBLIC_KEY_FILE": "/p"}
    assert function_env(template, template.function("login"), base)["JWT_PRIVATE_KEY_FILE"] == "/k"
    for name in ("register", "enqueue", "status", "worker"):
        env = function_env(template, template.function(name), base)
        assert "JWT_PRIVATE_KEY_FILE" not in env and env["JWT_PUBLIC_KEY_FILE"] == "/p"


def test_a_template_with_a_clashing_route_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "template.yaml"
    broken.write_text(
        "version: 1\nfunctions:\n"
        "  a: {source: functions/register, trigger: http, app: 'app:create_app()', routes: [{path: /x}]}\n"
        "  b: {source: functions/login, trigger: http, app: 'app:create_app()', routes: [{path: /x}]}\n"
    )
    with pytest.raises(TemplateError):
        load(broken)
