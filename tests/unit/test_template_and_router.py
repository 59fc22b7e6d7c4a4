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
    for name in ("enqueue", "status"):
        env = function_env(template, template.function(name), base)
        assert "JWT_PRIVATE_KEY_FILE" not in env and env["JWT_PUBLIC_KEY_FILE"] == "/p"


def test_a_function_gets_only_the_secrets_it_lists() -> None:
    template = load()
    base = {"MONGO_URI": "mongodb://db/x", "RABBITMQ_URL": "amqp://b/", "JWT_SECRET": "s" * 32, "OTHER": "kept"}
    register = function_env(template, template.function("register"), base)
    assert register["MONGO_URI"] == "mongodb://db/x" and register["OTHER"] == "kept"
    assert "RABBITMQ_URL" not in register and "JWT_SECRET" not in register
    worker = function_env(template, template.function("worker"), base)
    assert "JWT_SECRET" not in worker and worker["RABBITMQ_URL"] == "amqp://b/"


def test_a_template_with_a_clashing_route_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "template.yaml"
    broken.write_text(
        "version: 1\nfunctions:\n"
        + HTTP.replace("  h:", "  a:")
        + HTTP.replace("  h:", "  b:").replace("login", "register")
    )
    with pytest.raises(TemplateError, match="same route"):
        load(broken)


SERVER = "server: {worker_class: gthread, processes: 2, threads: 4}"
HTTP = f"  h: {{source: functions/login, trigger: http, app: 'app:create_app()', routes: [{{path: /x}}], {SERVER}}}\n"


WORKER = (
    "  w: {source: functions/worker, trigger: rabbitmq, command: [python, main.py], "
    "queue: '^lanes\\.(partition|overflow)\\..*', secrets: [MONGO_URI], scale: {min: 0, max: 2, target: 4}, "
    "env: {WORKER_SLOTS: '4'}}\n"
)


@pytest.mark.parametrize(
    ("snippet", "complaint"),
    [
        (WORKER.replace("^lanes", "^other"), "queue must be .*: where QUEUE_PREFIX.s requests wait"),
        (WORKER.replace("secrets: [MONGO_URI]", "secrets: [NOPE]"), "not declared"),
        (WORKER.replace("target: 4", "concurrency: 4"), "unknown scale keys"),
        (WORKER.replace("min: 0, max: 2", "min: 3, max: 2"), "min <= max"),
        (WORKER.replace("max: 2", "max: 17"), "scale max must not exceed LANE_PARTITIONS .16."),
        (
            WORKER.replace("max: 2", "max: 5").replace("WORKER_SLOTS: '4'", "WORKER_SLOTS: '4', LANE_PARTITIONS: '4'"),
            "scale max must not exceed LANE_PARTITIONS .4.",
        ),
        (WORKER.replace("scale:", "resources: {requests: {gpu: 1}}, scale:"), "resources"),
        (WORKER + WORKER.replace("  w:", "  w2:"), "exactly one function"),
        # An http function's slots (Knative's containerConcurrency, OpenFaaS's target) come
        # from its gunicorn server, which the template must describe in full.
        (WORKER + HTTP.replace(f", {SERVER}", ""), "needs server.worker_class"),
        (WORKER + HTTP.replace("gthread", "sync"), "needs server.worker_class"),
        (WORKER + HTTP.replace("threads: 4", "connections: 4"), "processes and threads"),
        (WORKER + HTTP.replace("processes: 2", "processes: 0"), "must be positive"),
        (WORKER + HTTP.replace("}}\n", "}, scale: {min: 0, max: 2, concurrency: 20}}\n"), "unknown scale keys"),
    ],
)
def test_a_template_that_cannot_deploy_is_refused(tmp_path: Path, snippet: str, complaint: str) -> None:
    broken = tmp_path / "template.yaml"
    broken.write_text("version: 1\nsecrets: [MONGO_URI]\nfunctions:\n" + snippet)
    with pytest.raises(TemplateError, match=complaint):
        load(broken)


def test_an_http_functions_slots_are_its_processes_times_threads_or_greenlets(tmp_path: Path) -> None:
    path = tmp_path / "template.yaml"
    path.write_text("version: 1\nsecrets: [MONGO_URI]\nfunctions:\n" + WORKER + HTTP)
    assert load(path).function("h").server.slots == 8  # type: ignore[union-attr]
    path.write_text(
        path.read_text().replace("gthread, processes: 2, threads: 4", "gevent, processes: 3, connections: 50")
    )
    assert load(path).function("h").server.slots == 150  # type: ignore[union-attr]


def test_the_worker_scales_on_the_lane_partitions_one_message_per_slot() -> None:
    template = load()
    worker = template.worker
    assert worker.queue == rf"^{template.env['QUEUE_PREFIX']}\.(partition|overflow)\..*"
    assert worker.scale["target"] == int(template.env_of(worker)["WORKER_SLOTS"])
    assert worker.scale["min"] == 0
