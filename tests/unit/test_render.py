"""Rendered manifests: every object valid against its real schema, and saying what template.yaml says."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import render, validate
from deploy.template import ROOT, load

TEMPLATE = load()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    for platform in render.PLATFORMS:
        assert render.main([platform, "--out", str(out / platform)]) == 0
    return out


def objects(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in validate.manifest_files(folder):
        for manifest in validate.documents(path):
            found[(manifest["kind"], manifest["metadata"]["name"])] = manifest
    return found


def test_make_render_writes_both_platforms(tmp_path: Path) -> None:
    result = subprocess.run(["make", "-s", "render", f"OUT={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert names == [
        "knative/00-namespace.yaml",
        "knative/configmap.yaml",
        "knative/secrets.yaml.example",
        "knative/service-enqueue.yaml",
        "knative/service-login.yaml",
        "knative/service-register.yaml",
        "knative/service-status.yaml",
        "knative/worker-deployment.yaml",
        "knative/worker-scaledobject.yaml",
        "knative/worker-triggerauthentication.yaml",
        "openfaas/functions/function-enqueue.yaml",
        "openfaas/functions/function-login.yaml",
        "openfaas/functions/function-register.yaml",
        "openfaas/functions/function-status.yaml",
        "openfaas/stack.yml",
        "openfaas/worker/configmap.yaml",
        "openfaas/worker/secrets.yaml.example",
        "openfaas/worker/worker-deployment.yaml",
        "openfaas/worker/worker-scaledobject.yaml",
        "openfaas/worker/worker-triggerauthentication.yaml",
    ]


@pytest.mark.parametrize("platform", render.PLATFORMS)
def test_every_rendered_object_is_valid_against_its_schema(rendered: Path, platform: str) -> None:
    checked = [
        (f"{path.name}: {manifest['kind']} {manifest['metadata']['name']}", validate.validate(manifest))
        for path in validate.manifest_files(rendered / platform)
        for manifest in validate.documents(path)
    ]
    kinds = {name.split(": ")[1].split()[0] for name, _ in checked}
    assert kinds >= {"ConfigMap", "Secret", "Deployment", "ScaledObject", "TriggerAuthentication"}
    assert kinds & {"Service", "Function"}
    assert [(name, problems) for name, problems in checked if problems] == []


@pytest.mark.parametrize(
    ("file", "break_it", "complaint"),
    [
        ("worker-deployment.yaml", lambda m: m["spec"].pop("selector"), "'selector' is a required property"),
        (
            "worker-deployment.yaml",
            lambda m: m["spec"]["template"]["spec"].update(containerz=[]),
            "Additional properties",
        ),
        (
            "service-login.yaml",
            lambda m: m["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={}),
            "unknown field",
        ),
        ("service-login.yaml", lambda m: m["spec"]["template"]["spec"].update(timeoutSeconds="60"), "not of type"),
        ("worker-scaledobject.yaml", lambda m: m["spec"].update(maxReplicaCount="4"), "not of type"),
        (
            "worker-scaledobject.yaml",
            lambda m: m["spec"]["triggers"][0]["metadata"].update(queueLenght="4"),
            "unknown key 'queueLenght'",
        ),
        (
            "worker-scaledobject.yaml",
            lambda m: m["spec"]["triggers"][0]["metadata"].update(mode="Length"),
            "mode='Length'",
        ),
        (
            "worker-scaledobject.yaml",
            lambda m: m["spec"]["triggers"][0]["metadata"].update(protocol="amqp", useRegex="true"),
            "need protocol http",
        ),
        (
            "worker-triggerauthentication.yaml",
            lambda m: m["spec"]["secretTargetRef"][0].update(parameter="url"),
            "no RabbitMQ scaler parameter",
        ),
    ],
)
def test_the_validation_catches_broken_manifests(rendered: Path, file: str, break_it: Any, complaint: str) -> None:
    manifest = copy.deepcopy(next(validate.documents(rendered / "knative" / file)))
    break_it(manifest)
    assert any(complaint in problem for problem in validate.validate(manifest)), validate.validate(manifest)


def test_an_object_without_a_schema_is_not_waved_through() -> None:
    assert validate.validate({"apiVersion": "example.com/v1", "kind": "Widget"}) == [
        "no schema for example.com/v1 Widget"
    ]


def test_knative_services_scale_to_zero_with_the_templates_concurrency_and_probes(rendered: Path) -> None:
    found = objects(rendered / "knative")
    for function in TEMPLATE.http_functions:
        service = found[("Service", function.name)]
        revision = service["spec"]["template"]
        annotations = revision["metadata"]["annotations"]  # on the revision template, where Knative reads them
        assert annotations["autoscaling.knative.dev/min-scale"] == str(function.scale["min"])
        assert annotations["autoscaling.knative.dev/max-scale"] == str(function.scale["max"])
        assert annotations["autoscaling.knative.dev/target"] == str(function.scale["concurrency"])
        (container,) = revision["spec"]["containers"]
        assert container["image"] == function.image
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert (
        found[("Service", "register")]["spec"]["template"]["metadata"]["annotations"][
            "autoscaling.knative.dev/min-scale"
        ]
        == "0"
    )


def test_only_login_can_read_the_signing_key(rendered: Path) -> None:
    for platform in render.PLATFORMS:
        for (kind, name), manifest in objects(rendered / platform).items():
            text = yaml.safe_dump(manifest)
            if kind in ("Service", "Function", "Deployment"):
                assert ("jwt-private.pem" in text) == (name == "login"), f"{platform} {kind} {name}"
    stack = yaml.safe_load((rendered / "openfaas" / "stack.yml").read_text())
    assert [n for n, f in stack["functions"].items() if "jwt-private.pem" in f["secrets"]] == ["login"]


def test_the_worker_scales_0_to_max_on_the_ready_queue_with_keda(rendered: Path) -> None:
    worker = TEMPLATE.worker
    for folder in (rendered / "knative", rendered / "openfaas" / "worker"):
        found = objects(folder)
        scaled = found[("ScaledObject", worker.name)]["spec"]
        assert scaled["scaleTargetRef"]["name"] == found[("Deployment", worker.name)]["metadata"]["name"]
        assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (0, worker.scale["max"])
        assert scaled["cooldownPeriod"] == worker.scale["idle_seconds"]
        (trigger,) = scaled["triggers"]
        assert trigger["type"] == "rabbitmq"
        # One queue, counted with unacknowledged tokens (http), one busy lane per slot:
        # no regex over per-user lanes, which breaks past one management API page.
        assert trigger["metadata"] == {
            "protocol": "http",
            "mode": "QueueLength",
            "value": TEMPLATE.env_of(worker)["WORKER_SLOTS"],
            "activationValue": "0",
            "queueName": "lanes.ready",
        }
        auth = found[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
        (ref,) = auth["spec"]["secretTargetRef"]
        assert ("Secret", ref["name"]) in found, "the trigger's secret is not among the documented secrets"
        deployment = found[("Deployment", worker.name)]["spec"]
        assert "replicas" not in deployment, "KEDA owns the replica count"
        assert deployment["template"]["spec"]["terminationGracePeriodSeconds"] == worker.shutdown_seconds


def test_every_referenced_secret_and_config_map_is_rendered(rendered: Path) -> None:
    for folder in (rendered / "knative", rendered / "openfaas" / "worker"):
        found = objects(folder)
        text = "\n".join(yaml.safe_dump(m) for (kind, _), m in found.items() if kind in ("Service", "Deployment"))
        referenced = {line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("name:")}
        secrets = {name for kind, name in found if kind == "Secret"}
        assert ("ConfigMap", "lanes-config") in found
        env_secret_names = {render.secret_name(s) for s in TEMPLATE.secrets}
        assert env_secret_names <= secrets
        assert referenced & env_secret_names, "no function reads a secret"


def test_stack_yml_and_function_resources_describe_the_same_functions(rendered: Path) -> None:
    stack = yaml.safe_load((rendered / "openfaas" / "stack.yml").read_text())
    assert stack["provider"]["name"] == "openfaas"
    assert set(stack["functions"]) == {f.name for f in TEMPLATE.http_functions}
    resources = objects(rendered / "openfaas" / "functions")
    known = {"image", "skip_build", "environment", "secrets", "labels", "annotations", "limits", "requests"}
    for name, spec in stack["functions"].items():
        assert set(spec) <= known
        function = resources[("Function", name)]["spec"]
        assert {k: v for k, v in spec.items() if k != "skip_build"} == {
            k: v for k, v in function.items() if k != "name"
        }
        # OpenFaaS CE refuses scale to zero: the HTTP functions keep one replica
        assert int(spec["labels"]["com.openfaas.scale.min"]) >= 1
        assert spec["environment"]["SECRETS_DIR"] == "/var/openfaas/secrets"


def test_rendering_is_deterministic(tmp_path: Path, rendered: Path) -> None:
    render.main(["knative", "--out", str(tmp_path)])
    for path in tmp_path.iterdir():
        assert path.read_text() == (rendered / "knative" / path.name).read_text()


def _rendered_env(rendered: Path) -> dict[str, dict[str, str]]:
    """The settings an HTTP function gets on each platform (Knative: its ConfigMap)."""
    knative = objects(rendered / "knative")[("ConfigMap", f"{TEMPLATE.name}-config")]["data"]
    stack = yaml.safe_load((rendered / "openfaas" / "stack.yml").read_text())
    return {
        "knative": knative,
        **{f"openfaas {name}": spec["environment"] for name, spec in stack["functions"].items()},
    }


def test_rendered_functions_trust_the_cluster_proxies_and_find_the_client_behind_them(rendered: Path) -> None:
    from lanes.settings import Settings

    for where, env in _rendered_env(rendered).items():
        proxies = Settings.from_env(env).proxies
        # Knative: queue-proxy -> activator -> ingress; OpenFaaS: gateway -> ingress.
        assert proxies.client("127.0.0.1", ["198.51.100.7, 10.1.0.4, 10.2.0.9"]) == "198.51.100.7", where
        assert proxies.client("10.3.0.2", ["6.6.6.6, 198.51.100.7, 172.16.5.5"]) == "198.51.100.7", where
        assert proxies.client("198.51.100.7", ["6.6.6.6"]) == "198.51.100.7", where


def test_the_fail_action_is_off_in_rendered_manifests(rendered: Path) -> None:
    for where, env in _rendered_env(rendered).items():
        assert env["ENABLE_FAIL_ACTION"] == "false", where
