"""Rendered manifests: every object valid against its real schema, and saying what template.yaml says."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import render, validate
from deploy.template import ROOT, TemplateError, load
from lanes.settings import secret_files

TEMPLATE = load()
WORKER_FOLDERS = ("knative", "openfaas-ce/worker", "openfaas-standard/worker")
REGISTRY = "registry.example.com/acme"
OPTIONS = render.Options(registry=REGISTRY)


def render_args(target: str) -> list[str]:
    platform, edition = render.TARGETS[target]
    return [platform, "--registry", REGISTRY, *(["--openfaas-edition", edition] if edition else [])]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    for target in render.TARGETS:
        assert render.main([*render_args(target), "--out", str(out / target), "--public-images"]) == 0
    return out


def objects(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in validate.manifest_files(folder):
        for manifest in validate.documents(path):
            found[(manifest["kind"], manifest["metadata"]["name"])] = manifest
    return found


def _python_with_only_pyyaml(tmp_path: Path) -> Path:
    """A `python` that sees the standard library and PyYAML, nothing else installed (-S: no
    site-packages), plus what `make render` puts on PYTHONPATH (shared/)."""
    packages = tmp_path / "only-pyyaml"
    packages.mkdir()
    (packages / "yaml").symlink_to(Path(yaml.__file__).parent)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="$PYTHONPATH:{packages}" exec {sys.executable} -S "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_make_render_needs_only_python_and_pyyaml(tmp_path: Path, rendered: Path) -> None:
    # The renderer run by a Python that has PyYAML and nothing else: it imports no other package.
    python = _python_with_only_pyyaml(tmp_path)
    out = tmp_path / "out"
    result = subprocess.run(
        ["make", "-s", "render", f"OUT={out}", f"REGISTRY={REGISTRY}", f"RENDER_PY={python}", "FLAGS=--public-images"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(rendered)) for p in rendered.rglob("*") if p.is_file())
    for name in names:
        assert (out / name).read_text() == (rendered / name).read_text(), name
    # Without RENDER_PY, make builds the renderer's own environment from its lock, not `setup`.
    plan = subprocess.run(
        ["make", "-n", "render", f"OUT={out}", f"REGISTRY={REGISTRY}", "RENDER_ENV=build/render-env-dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert plan.returncode == 0, plan.stderr
    assert "setup.sh" not in plan.stdout and ".venv/" not in plan.stdout
    assert "pip install --quiet --disable-pip-version-check --require-hashes -r requirements-render.lock" in plan.stdout
    assert not (ROOT / "build/render-env-dry-run").exists()


def test_the_renderers_lock_is_pyyaml_alone_at_the_development_version() -> None:
    lock = (ROOT / "requirements-render.lock").read_text()
    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", lock, re.M)
    development = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), re.M))
    assert pins == [("pyyaml", development["pyyaml"])]
    assert "--hash=sha256:" in lock


def test_make_render_refuses_to_run_without_a_registry(tmp_path: Path) -> None:
    result = subprocess.run(["make", "-s", "render", f"OUT={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "REGISTRY=" in result.stderr
    assert not any(tmp_path.iterdir())


def test_rendering_writes_knative_and_both_openfaas_editions_each_with_kustomizations(rendered: Path) -> None:
    names = sorted(str(p.relative_to(rendered)) for p in rendered.rglob("*") if p.is_file())
    monitoring = [
        "monitoring/dashboards.yaml",
        "monitoring/kustomization.yaml",
        "monitoring/podmonitor-functions.yaml",
        "monitoring/podmonitor-worker.yaml",
        "monitoring/prometheusrule.yaml",
    ]
    worker = [
        "configmap.yaml",
        "kustomization.yaml",
        "networkpolicy.yaml",
        "poddisruptionbudget.yaml",
        "secrets.yaml.example",
        "serviceaccount.yaml",
        "worker-deployment.yaml",
        "worker-scaledobject.yaml",
        "worker-triggerauthentication.yaml",
    ]
    functions = [f"function-{f.name}.yaml" for f in TEMPLATE.http_functions]
    knative = [
        "00-namespace.yaml",
        "httproute.yaml",
        "referencegrant.yaml",
        *[f"service-{f.name}.yaml" for f in TEMPLATE.http_functions],
    ]
    routing = ["routing/httproute.yaml", "routing/kustomization.yaml"]
    assert names == sorted(
        [
            *(f"knative/{n}" for n in [*knative, *monitoring, *worker]),
            *(f"openfaas-ce/{n}" for n in ["stack.yml", "kustomization.yaml", *routing, *monitoring]),
            *(f"openfaas-ce/worker/{n}" for n in ["00-namespace.yaml", *worker]),
            *(f"openfaas-standard/{n}" for n in ["kustomization.yaml", *routing, *monitoring]),
            *(f"openfaas-standard/functions/{n}" for n in [*functions, "kustomization.yaml"]),
            *(f"openfaas-standard/worker/{n}" for n in ["00-namespace.yaml", *worker]),
        ]
    )


@pytest.mark.parametrize("target", render.TARGETS)
def test_each_kustomization_lists_its_folders_objects_and_no_example_secret(rendered: Path, target: str) -> None:
    assert validate.kustomization_problems(rendered / target) == []
    top = yaml.safe_load((rendered / target / "kustomization.yaml").read_text())["resources"]
    # monitoring/ needs the Prometheus Operator's CRDs: applied on its own (kubectl apply -k DIR/monitoring).
    assert "monitoring" not in top and not any(r.endswith(".example") for r in top)
    listed = {
        (path.parent / name)
        for path in (rendered / target).rglob("kustomization.yaml")
        for name in yaml.safe_load(path.read_text())["resources"]
    }
    objects_files = {p for p in validate.manifest_files(rendered / target) if p.suffix == ".yaml"}
    assert objects_files <= listed


def test_the_kustomization_check_catches_an_unlisted_file_and_a_missing_one(tmp_path: Path, rendered: Path) -> None:
    folder = tmp_path / "k"
    shutil.copytree(rendered / "knative", folder)
    path = folder / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    kustomization["resources"] = [r for r in kustomization["resources"] if r != "configmap.yaml"] + ["gone.yaml"]
    path.write_text(yaml.safe_dump(kustomization))
    problems = validate.kustomization_problems(folder)
    assert any("configmap.yaml is not listed" in p for p in problems)
    assert any("gone.yaml is neither" in p for p in problems)


@pytest.mark.parametrize("platform", render.TARGETS)
def test_every_rendered_object_is_valid_against_its_schema(rendered: Path, platform: str) -> None:
    checked = [
        (f"{path.name}: {manifest['kind']} {manifest['metadata']['name']}", validate.validate(manifest))
        for path in validate.manifest_files(rendered / platform)
        for manifest in validate.documents(path)
    ]
    kinds = {name.split(": ")[1].split()[0] for name, _ in checked}
    assert kinds >= {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "ScaledObject",
        "TriggerAuthentication",
        "HTTPRoute",
        "PodMonitor",
        "PrometheusRule",
        "ServiceAccount",
        "NetworkPolicy",
        "PodDisruptionBudget",
    }
    assert kinds & {"Service", "Function"} or (rendered / platform / "stack.yml").is_file()
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


def test_knative_services_scale_to_zero_with_the_templates_range(rendered: Path) -> None:
    found = objects(rendered / "knative")
    for function in TEMPLATE.http_functions:
        service = found[("Service", function.name)]
        revision = service["spec"]["template"]
        annotations = revision["metadata"]["annotations"]  # on the revision template, where Knative reads them
        assert annotations["autoscaling.knative.dev/min-scale"] == str(function.scale["min"])
        assert annotations["autoscaling.knative.dev/max-scale"] == str(function.scale["max"])
        # The KPA's target follows containerConcurrency (x its utilization), not a second number.
        assert "autoscaling.knative.dev/target" not in annotations
        (container,) = revision["spec"]["containers"]
        assert container["image"] == f"{REGISTRY}/{function.image}"
    assert (
        found[("Service", "register")]["spec"]["template"]["metadata"]["annotations"][
            "autoscaling.knative.dev/min-scale"
        ]
        == "0"
    )


def test_only_login_can_read_the_signing_key(rendered: Path) -> None:
    for platform in render.TARGETS:
        for (kind, name), manifest in objects(rendered / platform).items():
            text = yaml.safe_dump(manifest)
            if kind in ("Service", "Function", "Deployment"):
                assert ("jwt-private.pem" in text) == (name == "login"), f"{platform} {kind} {name}"
    stack = yaml.safe_load((rendered / "openfaas-ce" / "stack.yml").read_text())
    assert [n for n, f in stack["functions"].items() if "jwt-private.pem" in f["secrets"]] == ["login"]


def test_the_worker_scales_0_to_max_on_the_lane_partitions_with_keda(rendered: Path) -> None:
    worker = TEMPLATE.worker
    for folder in WORKER_FOLDERS:
        found = objects(rendered / folder)
        scaled = found[("ScaledObject", worker.name)]["spec"]
        assert scaled["scaleTargetRef"]["name"] == found[("Deployment", worker.name)]["metadata"]["name"]
        assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (0, worker.scale["max"])
        assert scaled["cooldownPeriod"] == worker.scale["idle_seconds"]
        (trigger,) = scaled["triggers"]
        assert trigger["type"] == "rabbitmq"
        # Every partition's messages summed, the ones workers hold included (http), one
        # message per slot, and the first message wakes the worker from zero.
        assert trigger["metadata"] == {
            "protocol": "http",
            "useRegex": "true",
            "queueName": r"^lanes\.(partition|overflow)\..*",
            "operation": "sum",
            "mode": "QueueLength",
            "value": TEMPLATE.env_of(worker)["WORKER_SLOTS"],
            "activationValue": "0",
        }
        auth = found[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
        (ref,) = auth["spec"]["secretTargetRef"]
        assert ("Secret", ref["name"]) in found, "the trigger's secret is not among the documented secrets"
        deployment = found[("Deployment", worker.name)]["spec"]
        assert "replicas" not in deployment, "KEDA owns the replica count"
        assert deployment["template"]["spec"]["terminationGracePeriodSeconds"] == worker.shutdown_seconds


def _secret_refs(manifest: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Setting -> (Secret, key) of a Knative Service's or a Deployment's container."""
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    refs = {}
    for entry in container["env"]:
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            refs[entry["name"]] = (ref["name"], ref["key"])
    return refs


def test_every_referenced_secret_and_config_map_is_rendered(rendered: Path) -> None:
    for folder in WORKER_FOLDERS:
        found = objects(rendered / folder)
        secrets = {name: m for (kind, name), m in found.items() if kind == "Secret"}
        assert ("ConfigMap", "lanes-config") in found
        referenced = [
            ref
            for (kind, _), m in found.items()
            if kind in ("Service", "Deployment")
            for ref in _secret_refs(m).values()
        ]
        assert referenced, "no function reads a secret"
        for name, key in referenced:
            assert list(secrets[name]["stringData"]) == [key], name
    for folder in ("knative", "openfaas-standard/worker"):
        found = objects(rendered / folder)
        secrets = {name for kind, name in found if kind == "Secret"}
        (auth,) = [m for (kind, _), m in found.items() if kind == "TriggerAuthentication"]
        assert {ref["name"] for ref in auth["spec"]["secretTargetRef"]} <= secrets
        functions = [m for (kind, _), m in objects(rendered / folder.split("/")[0]).items() if kind == "Function"]
        assert {name for f in functions for name in f["spec"]["secrets"]} <= secrets


def test_each_function_has_its_own_database_and_broker_credentials(rendered: Path) -> None:
    found = objects(rendered / "knative")
    owners: dict[tuple[str, str], str] = {}
    for function in TEMPLATE.functions:
        kind = "Deployment" if function.trigger == "rabbitmq" else "Service"
        refs = _secret_refs(found[(kind, function.name)])
        for setting in ("MONGO_URI", "RABBITMQ_URL", "RABBITMQ_MANAGEMENT_URL"):
            if setting not in refs:
                continue
            name, key = refs[setting]
            assert (name, key) == (f"{function.name}-{setting.lower().replace('_', '-')}", key)
            assert owners.setdefault(refs[setting], function.name) == function.name, f"{setting} shared"
        assert "MONGO_URI" in refs, function.name
        # Only what the function uses: register and login never touch the broker.
        assert ("RABBITMQ_URL" in refs) == (function.name in ("login", "enqueue", "status", "worker")), function.name
        assert ("RABBITMQ_MANAGEMENT_URL" in refs) == (function.name == "status"), function.name
    # KEDA reads the management API with the worker's own monitoring Secret, which the worker's pods never get.
    (host,) = [
        r
        for r in found[("TriggerAuthentication", "worker-rabbitmq")]["spec"]["secretTargetRef"]
        if r["parameter"] == "host"
    ]
    assert (host["name"], host["key"]) == ("worker-rabbitmq-management-url", "rabbitmq-management-url")
    assert host["name"] not in {name for name, _ in owners}


def test_openfaas_mounts_each_functions_own_secrets_as_the_files_lanes_reads(rendered: Path, tmp_path: Path) -> None:
    secrets = {
        name: m for (kind, name), m in objects(rendered / "openfaas-standard/worker").items() if kind == "Secret"
    }
    for (_, name), function in objects(rendered / "openfaas-standard/functions").items():
        mounted = tmp_path / name
        mounted.mkdir()
        for secret in function["spec"]["secrets"]:
            # faas-netes mounts each key of each listed Secret as a file named like the key
            # (openfaas/faas-netes pkg/k8s/secrets.go, ConfigureSecrets).
            for key, value in secrets[secret]["stringData"].items():
                (mounted / key).write_text(value)
        read = secret_files(mounted)
        assert read["MONGO_URI"].startswith(f"mongodb://lanes-{name}:"), name
        if name in ("enqueue", "status"):
            assert read["RABBITMQ_URL"].startswith(f"amqps://lanes-{name}:"), name
        assert all(s.startswith(f"{name}-") or "." in s for s in function["spec"]["secrets"]), name


def test_stack_yml_and_function_resources_describe_the_same_functions(rendered: Path) -> None:
    stack = yaml.safe_load((rendered / "openfaas-ce" / "stack.yml").read_text())
    assert stack["provider"]["name"] == "openfaas"
    assert set(stack["functions"]) == {f.name for f in TEMPLATE.http_functions}
    resources = objects(rendered / "openfaas-standard" / "functions")
    known = {
        "image",
        "skip_build",
        "environment",
        "secrets",
        "labels",
        "annotations",
        "limits",
        "requests",
        "readonly_root_filesystem",
    }
    for name, spec in stack["functions"].items():
        assert set(spec) <= known
        function = resources[("Function", name)]["spec"]
        # The editions differ in their scaling labels and probe annotations only.
        same = ("image", "environment", "secrets", "limits", "requests")
        assert {k: spec.get(k) for k in same} == {k: function.get(k) for k in same}
        assert spec["environment"]["SECRETS_DIR"] == "/var/openfaas/secrets"


@pytest.mark.parametrize("target", render.TARGETS)
def test_rendering_is_deterministic(tmp_path: Path, rendered: Path, target: str) -> None:
    render.main([*render_args(target), "--out", str(tmp_path)])
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert path.read_text() == (rendered / target / path.relative_to(tmp_path)).read_text()


def _rendered_env(rendered: Path) -> dict[str, dict[str, str]]:
    """The settings an HTTP function gets on each platform (Knative: its ConfigMap)."""
    knative = objects(rendered / "knative")[("ConfigMap", f"{TEMPLATE.name}-config")]["data"]
    stack = yaml.safe_load((rendered / "openfaas-ce" / "stack.yml").read_text())
    standard = objects(rendered / "openfaas-standard" / "functions")
    return {
        "knative": knative,
        **{f"openfaas-ce {name}": spec["environment"] for name, spec in stack["functions"].items()},
        **{f"openfaas-standard {name}": f["spec"]["environment"] for (_, name), f in standard.items()},
    }


def test_rendered_functions_trust_only_loopback_unless_the_operator_names_proxies(
    rendered: Path, tmp_path: Path
) -> None:
    from lanes.settings import Settings

    for where, env in _rendered_env(rendered).items():
        proxies = Settings.from_env(env).proxies
        # No private range is trusted: an entry written in the cluster is the client, and a
        # peer in the cluster that is no named proxy is the client itself.
        assert proxies.client("127.0.0.1", ["198.51.100.7, 10.1.0.4, 10.2.0.9"]) == "10.2.0.9", where
        assert proxies.client("10.3.0.2", ["6.6.6.6, 198.51.100.7, 172.16.5.5"]) == "10.3.0.2", where
        assert proxies.client("198.51.100.7", ["6.6.6.6"]) == "198.51.100.7", where
    # The operator names the ingress's and the activator's ranges in template.yaml's env.
    source = yaml.safe_load((ROOT / "template.yaml").read_text())
    source["env"]["TRUSTED_PROXIES"] = "127.0.0.1/32,::1/128,10.1.0.0/16,10.2.0.0/16"
    (tmp_path / "template.yaml").write_text(yaml.safe_dump(source))
    named = load(tmp_path / "template.yaml")
    for env in (render.config_data(named), render.openfaas_function(named, named.functions[0], OPTIONS)["environment"]):
        proxies = Settings.from_env(env).proxies
        assert proxies.client("127.0.0.1", ["6.6.6.6, 198.51.100.7, 10.1.0.4, 10.2.0.9"]) == "198.51.100.7"
        assert proxies.client("10.3.0.2", ["6.6.6.6"]) == "10.3.0.2"


def test_the_fail_action_is_off_in_rendered_manifests(rendered: Path) -> None:
    for where, env in _rendered_env(rendered).items():
        assert env["ENABLE_FAIL_ACTION"] == "false", where


# -- OpenFaaS editions ---------------------------------------------------------------


def test_openfaas_ce_asks_for_nothing_community_edition_refuses(rendered: Path) -> None:
    stack = yaml.safe_load((rendered / "openfaas-ce" / "stack.yml").read_text())
    assert "trials" in (rendered / "openfaas-ce" / "stack.yml").read_text().split("\n", 3)[1]
    for name, spec in stack["functions"].items():
        scaling = {k: v for k, v in spec["labels"].items() if k.startswith("com.openfaas.scale")}
        # CE refuses target, type and zero, and more than 5 replicas; it keeps one replica up.
        assert set(scaling) == {"com.openfaas.scale.min", "com.openfaas.scale.max"}, name
        assert 1 <= int(scaling["com.openfaas.scale.min"]) <= int(scaling["com.openfaas.scale.max"]) <= 5, name
        assert spec["readonly_root_filesystem"] is True
    assert stack["functions"]["enqueue"]["labels"]["com.openfaas.scale.max"] == "5"  # the template asks for 10
    assert not (rendered / "openfaas-ce" / "functions").exists(), "CE has no Function resource"


def test_openfaas_standard_functions_scale_to_zero_where_the_template_allows_it(rendered: Path) -> None:
    found = objects(rendered / "openfaas-standard" / "functions")
    assert not (rendered / "openfaas-standard" / "stack.yml").exists()
    for function in TEMPLATE.http_functions:
        spec = found[("Function", function.name)]["spec"]
        scaling = spec["labels"]
        assert scaling.get("com.openfaas.scale.zero") == ("true" if function.scale["min"] == 0 else None)
        assert scaling["com.openfaas.scale.min"] == str(max(1, function.scale["min"]))
        assert scaling["com.openfaas.scale.max"] == str(function.scale["max"])
        assert scaling["com.openfaas.scale.type"] == "capacity"
        assert scaling["com.openfaas.scale.target"] == str(function.server.slots)
        assert spec["annotations"]["com.openfaas.ready.http.path"] == "/healthz"
        assert spec["readOnlyRootFilesystem"] is True
    assert "com.openfaas.scale.zero" in found[("Function", "register")]["spec"]["labels"]
    assert "com.openfaas.scale.zero" not in found[("Function", "enqueue")]["spec"]["labels"]


# -- Knative probes and the one base URL -------------------------------------------


def test_knative_probes_are_as_knative_recommends_and_ignore_dependency_blips(rendered: Path) -> None:
    found = objects(rendered / "knative")
    for function in TEMPLATE.http_functions:
        (container,) = found[("Service", function.name)]["spec"]["template"]["spec"]["containers"]
        readiness, liveness = container["readinessProbe"], container["livenessProbe"]
        # No periodSeconds: the queue-proxy probes aggressively at cold start.
        assert "periodSeconds" not in readiness
        # /healthz, not /readyz: a database or broker blip must not pull every pod.
        assert readiness["httpGet"] == {"path": "/healthz"}
        assert liveness["httpGet"] == {"path": "/healthz"} and liveness["periodSeconds"] >= 10
        assert readiness is not liveness and readiness != liveness


def _route_paths(route: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((m["path"]["type"], m["path"]["value"]) for rule in route["spec"]["rules"] for m in rule["matches"])


def test_one_httproute_serves_exactly_the_templates_public_routes(rendered: Path) -> None:
    expected = sorted(("PathPrefix" if r.prefix else "Exact", r.path) for _, r in TEMPLATE.public_routes)
    assert {"/healthz", "/readyz", "/metrics"}.isdisjoint(path for _, path in expected)
    knative = objects(rendered / "knative")[("HTTPRoute", TEMPLATE.name)]
    openfaas = objects(rendered / "openfaas-standard" / "routing")[("HTTPRoute", TEMPLATE.name)]
    assert _route_paths(knative) == _route_paths(openfaas) == expected
    owner = {route.path: function.name for function, route in TEMPLATE.public_routes}
    for rule in knative["spec"]["rules"]:
        (backend,) = rule["backendRefs"]
        # Knative's local gateway (Kourier's by default), which routes by the Knative Service's host name.
        assert backend == {"name": "kourier-internal", "namespace": "kourier-system", "port": 80}
        (rewrite,) = rule["filters"]
        (function,) = {owner[m["path"]["value"]] for m in rule["matches"]}
        assert rewrite["urlRewrite"]["hostname"] == f"{function}.{TEMPLATE.namespace}.svc.cluster.local"
    for rule in openfaas["spec"]["rules"]:
        ((match,),) = [rule["matches"]]
        path = rule["filters"][0]["urlRewrite"]["path"]
        target = path.get("replaceFullPath") or path.get("replacePrefixMatch")
        assert target == f"/function/{owner[match['path']['value']]}{match['path']['value']}"
        assert rule["backendRefs"] == [{"name": "gateway", "port": 8080}]
    assert openfaas["metadata"]["namespace"] == "openfaas"


def _granted(grants: list[dict[str, Any]], route: dict[str, Any], backend: dict[str, Any]) -> bool:
    """Does a ReferenceGrant in the backend's namespace let this HTTPRoute name it? (Gateway API:
    a reference to another namespace is valid only if a ReferenceGrant there allows it,
    kubernetes-sigs/gateway-api apis/v1/shared_types.go and apis/v1beta1/referencegrant_types.go.)"""
    namespace = backend.get("namespace", route["metadata"]["namespace"])
    if namespace == route["metadata"]["namespace"]:
        return True
    for grant in grants:
        if grant["metadata"]["namespace"] != namespace:
            continue
        sources = grant["spec"]["from"]
        targets = grant["spec"]["to"]
        source_ok = any(
            (f["group"], f["kind"], f["namespace"])
            == ("gateway.networking.k8s.io", "HTTPRoute", route["metadata"]["namespace"])
            for f in sources
        )
        target_ok = any(
            (t["group"], t["kind"]) == ("", "Service") and t.get("name", backend["name"]) == backend["name"]
            for t in targets
        )
        if source_ok and target_ok:
            return True
    return False


@pytest.mark.parametrize(
    "flags",
    [[], ["--knative-local-gateway", "istio-system/knative-local-gateway:80"]],
)
def test_the_knative_route_names_no_externalname_service_and_every_cross_namespace_backend_is_granted(
    tmp_path: Path, flags: list[str]
) -> None:
    # The Service Knative makes per Knative Service (named like it, in its namespace) is an
    # ExternalName, which implementations SHOULD NOT support (gateway-api
    # apis/v1/object_reference_types.go, BackendObjectReference.Kind): the route must not name it.
    # The default backend is Kourier's local gateway: Service kourier-internal in kourier-system,
    # port 80 (knative-extensions/net-kourier, config/300-gateway.yaml).
    render.main(["knative", "--registry", REGISTRY, "--out", str(tmp_path), *flags])
    found = objects(tmp_path)
    route = found[("HTTPRoute", TEMPLATE.name)]
    grants = [m for (kind, _), m in found.items() if kind == "ReferenceGrant"]
    knative_services = {(TEMPLATE.namespace, f.name) for f in TEMPLATE.http_functions}
    backends = [b for rule in route["spec"]["rules"] for b in rule["backendRefs"]]
    assert backends
    for backend in backends:
        assert (backend.get("namespace", TEMPLATE.namespace), backend["name"]) not in knative_services
        assert _granted(grants, route, backend), backend
        assert backend["port"] == 80
    for grant in grants:
        assert not validate.validate(grant)
    # Without its grant the route would be refused: the check is not vacuous.
    assert not any(_granted([], route, b) for b in backends)


def test_knative_services_are_reachable_only_through_the_route(rendered: Path) -> None:
    for function in TEMPLATE.http_functions:
        service = objects(rendered / "knative")[("Service", function.name)]
        assert service["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"


def test_the_gateway_and_hostname_are_render_flags(tmp_path: Path) -> None:
    flags = ["--registry", REGISTRY]
    render.main(["knative", *flags, "--out", str(tmp_path), "--gateway", "edge", "--gateway-namespace", "infra"])
    render.main(["knative", *flags, "--out", str(tmp_path / "h"), "--hostname", "lanes.example.com"])
    route = next(validate.documents(tmp_path / "httproute.yaml"))
    assert route["spec"]["parentRefs"] == [{"name": "edge", "namespace": "infra"}]
    assert "hostnames" not in route["spec"]
    assert next(validate.documents(tmp_path / "h" / "httproute.yaml"))["spec"]["hostnames"] == ["lanes.example.com"]


# -- monitoring objects --------------------------------------------------------------


def _pods(found: dict[tuple[str, str], dict[str, Any]], stack: Path | None = None) -> dict[str, dict[str, Any]]:
    """Function name -> (labels, annotations) of its pods, as each platform sets them."""
    pods = {}
    for (kind, name), manifest in found.items():
        if kind in ("Service", "Deployment"):
            pods[name] = manifest["spec"]["template"]["metadata"]
        elif kind == "Function":
            pods[name] = {"labels": manifest["spec"]["labels"], "annotations": manifest["spec"]["annotations"]}
    if stack:
        for name, spec in yaml.safe_load(stack.read_text())["functions"].items():
            pods[name] = {"labels": spec["labels"], "annotations": spec["annotations"]}
    return pods


# The name each platform gives the port a function's metrics are on:
# - Knative renames the user container's port to UserPortName = "user-port"
#   (knative/serving pkg/apis/serving/v1/revision_helpers.go, knative-v1.23.0);
# - faas-netes names the function container's one port "http" (openfaas/faas-netes
#   pkg/handlers/deploy.go, makeDeploymentSpec; the OpenFaaS Standard operator the same);
# - the worker is Lanes' own Deployment, its port named in the rendered manifest.
PORT_NAMES = {
    ("knative", "http"): "user-port",
    ("openfaas-ce", "http"): "http",
    ("openfaas-standard", "http"): "http",
    **{(target, "rabbitmq"): "metrics" for target in render.TARGETS},
}


@pytest.mark.parametrize("target", render.TARGETS)
def test_every_function_is_scraped_by_a_podmonitor_and_by_annotations(rendered: Path, target: str) -> None:
    found = objects(rendered / target)
    stack = rendered / target / "stack.yml"
    pods = _pods(found, stack if stack.is_file() else None)
    assert set(pods) == {f.name for f in TEMPLATE.functions}
    monitors = [m for (kind, _), m in found.items() if kind == "PodMonitor"]
    for function in TEMPLATE.functions:
        port = render.WORKER_METRICS_PORT if function.trigger == "rabbitmq" else render.HTTP_PORT
        annotations = pods[function.name]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", function.name
        assert annotations["prometheus.io/port"] == str(port), function.name
        assert annotations["prometheus.io/path"] == "/metrics", function.name
        (monitor,) = [m for m in monitors if function.name in m["spec"]["selector"]["matchExpressions"][0]["values"]]
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        # By name: `portNumber` is refused by prometheus-operator before v0.79.
        assert "portNumber" not in endpoint and "targetPort" not in endpoint
        assert (endpoint["port"], endpoint["path"]) == (PORT_NAMES[(target, function.trigger)], "/metrics")
        # The job the alerts and dashboards read (`up{job="lanes"}`).
        assert {"action": "replace", "targetLabel": "job", "replacement": "lanes"} in endpoint["relabelings"]
        assert pods[function.name]["labels"]["app.kubernetes.io/name"] == function.name
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [monitor["metadata"]["namespace"]]


def test_the_worker_serves_its_metrics_on_a_named_port(rendered: Path) -> None:
    worker = objects(rendered / "knative")[("Deployment", TEMPLATE.worker.name)]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": render.WORKER_METRICS_PORT}]
    assert {"name": "METRICS_PORT", "value": str(render.WORKER_METRICS_PORT)} in container["env"]


def test_monitoring_labels_reach_the_objects_prometheus_selects(tmp_path: Path) -> None:
    flags = ["--registry", REGISTRY, "--monitoring-labels", "release=kube-prometheus-stack,team=lanes"]
    assert render.main(["knative", *flags, "--out", str(tmp_path)]) == 0
    found = objects(tmp_path / "monitoring")
    selected = [m for (kind, _), m in found.items() if kind in ("PodMonitor", "PrometheusRule")]
    assert len(selected) == 3
    for manifest in selected:
        labels = manifest["metadata"]["labels"]
        assert (labels["release"], labels["team"], labels["app.kubernetes.io/part-of"]) == (
            "kube-prometheus-stack",
            "lanes",
            "lanes",
        )
        assert not validate.validate(manifest)
    with pytest.raises(SystemExit):
        render.main(["knative", "--registry", REGISTRY, "--out", str(tmp_path), "--monitoring-labels", "release"])


@pytest.mark.parametrize("target", render.TARGETS)
def test_the_prometheus_rule_is_alerts_yml(rendered: Path, target: str) -> None:
    rule = objects(rendered / target)[("PrometheusRule", f"{TEMPLATE.name}-alerts")]
    assert rule["spec"] == yaml.safe_load((ROOT / "observability/prometheus/alerts.yml").read_text())


def test_every_dashboard_is_a_config_map_for_grafanas_sidecar(rendered: Path) -> None:
    maps = [m for (kind, name), m in objects(rendered / "knative").items() if "-dashboard-" in name]
    sources = sorted((ROOT / "observability/grafana").glob("*/*.json"))
    assert len(maps) == len(sources) >= 4
    for manifest in maps:
        assert manifest["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((key, text),) = manifest["data"].items()
        (source,) = [p for p in sources if key == f"{TEMPLATE.name}-{p.stem}.json"]
        assert json.loads(text) == json.loads(source.read_text())
        assert len(yaml.safe_dump(manifest)) < 256 * 1024  # kubectl apply's annotation limit


# -- hardened pods -------------------------------------------------------------------


def _pod_specs(rendered: Path, target: str) -> dict[str, dict[str, Any]]:
    specs = {}
    for (kind, name), manifest in objects(rendered / target).items():
        if kind in ("Service", "Deployment") and "template" in manifest.get("spec", {}):
            specs[name] = manifest["spec"]["template"]["spec"]
    return specs


@pytest.mark.parametrize("target", render.TARGETS)
def test_every_pod_is_hardened(rendered: Path, target: str) -> None:
    found = objects(rendered / target)
    specs = _pod_specs(rendered, target)
    assert TEMPLATE.worker.name in specs
    account = found[("ServiceAccount", TEMPLATE.name)]
    assert account["automountServiceAccountToken"] is False
    for name, spec in specs.items():
        assert spec["serviceAccountName"] == TEMPLATE.name
        assert spec["automountServiceAccountToken"] is False
        (container,) = spec["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in spec["volumes"]
        assert "livenessProbe" in container, name


# Knative Serving's ports, from knative/serving pkg/networking/constants.go (knative-v1.23.0):
# the queue-proxy serves requests on BackendHTTPPort, BackendHTTP2Port (h2c) and
# BackendHTTPSPort (system-internal-tls), which the activator (in knative-serving) and the
# ingress reach; the autoscaler (in knative-serving) scrapes AutoscalingQueueMetricsPort.
# The user container's 8080 is the queue-proxy's upstream, over the pod's loopback.
KNATIVE_BACKEND_HTTP_PORT = 8012
KNATIVE_BACKEND_HTTP2_PORT = 8013
KNATIVE_BACKEND_HTTPS_PORT = 8112
KNATIVE_AUTOSCALING_QUEUE_METRICS_PORT = 9090
KNATIVE_NAMESPACE = "knative-serving"


def _policies(found: dict[tuple[str, str], dict[str, Any]], pod: str, direction: str) -> list[dict[str, Any]]:
    """The NetworkPolicies of one direction that select the pods of function `pod`."""
    selected = []
    for (kind, _), policy in found.items():
        if kind != "NetworkPolicy" or direction not in policy["spec"]["policyTypes"]:
            continue
        (expression,) = policy["spec"]["podSelector"]["matchExpressions"]
        assert (expression["key"], expression["operator"]) == ("app.kubernetes.io/name", "In")
        if pod in expression["values"]:
            selected.append(policy)
    return selected


def _port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    return ports is None or any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports)


def admits(found: dict[tuple[str, str], dict[str, Any]], pod: str, source: str, port: int) -> bool:
    """Would the rendered ingress policies let a pod in namespace `source` reach `pod` on TCP `port`?
    As Kubernetes reads them: selected by no policy, all is allowed; else any rule may allow."""
    policies = _policies(found, pod, "Ingress")
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                ((expression,),) = [peer["namespaceSelector"]["matchExpressions"]]
                assert set(peer) == {"namespaceSelector"} and expression["key"] == "kubernetes.io/metadata.name"
                if source in expression["values"] and _port_matches(rule.get("ports"), port, "TCP"):
                    return True
    return False


def sends(found: dict[tuple[str, str], dict[str, Any]], pod: str, port: int, protocol: str = "TCP") -> bool:
    """Would the rendered egress policies let `pod` connect to `port` anywhere?"""
    policies = _policies(found, pod, "Egress")
    assert policies, f"{pod} has no egress policy"
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            assert "to" not in rule  # by port: the database and broker may be outside the cluster
            if _port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def test_knative_traffic_reaches_the_queue_proxy_and_nothing_else_gets_in(rendered: Path) -> None:
    found = objects(rendered / "knative")
    ingress = "kourier-system"  # where Kourier, the default local gateway, runs its proxies
    queue_ports = (KNATIVE_BACKEND_HTTP_PORT, KNATIVE_BACKEND_HTTP2_PORT, KNATIVE_BACKEND_HTTPS_PORT)
    for function in TEMPLATE.http_functions:
        for port in queue_ports:
            assert admits(found, function.name, KNATIVE_NAMESPACE, port), (function.name, port)  # the activator
            assert admits(found, function.name, ingress, port), (function.name, port)
            assert not admits(found, function.name, "monitoring", port)
            assert not admits(found, function.name, "default", port)
        assert admits(found, function.name, KNATIVE_NAMESPACE, KNATIVE_AUTOSCALING_QUEUE_METRICS_PORT)
        assert not admits(found, function.name, ingress, KNATIVE_AUTOSCALING_QUEUE_METRICS_PORT)
        # The function's own port: Prometheus only (the queue-proxy reaches it over loopback).
        assert admits(found, function.name, "monitoring", render.HTTP_PORT)
        assert not admits(found, function.name, KNATIVE_NAMESPACE, render.HTTP_PORT)
        assert not admits(found, function.name, ingress, render.HTTP_PORT)
    worker = TEMPLATE.worker.name
    assert admits(found, worker, "monitoring", render.WORKER_METRICS_PORT)
    assert not any(admits(found, worker, KNATIVE_NAMESPACE, p) for p in (*queue_ports, render.WORKER_METRICS_PORT))


def test_the_knative_ingress_namespace_follows_the_local_gateway(tmp_path: Path) -> None:
    flags = ["--registry", REGISTRY, "--knative-local-gateway", "istio-system/knative-local-gateway"]
    render.main(["knative", *flags, "--out", str(tmp_path)])
    found = objects(tmp_path)
    assert admits(found, "enqueue", "istio-system", KNATIVE_BACKEND_HTTP_PORT)
    assert not admits(found, "enqueue", "kourier-system", KNATIVE_BACKEND_HTTP_PORT)
    route = found[("HTTPRoute", TEMPLATE.name)]
    assert {b["name"] for r in route["spec"]["rules"] for b in r["backendRefs"]} == {"knative-local-gateway"}
    grant = found[("ReferenceGrant", f"{TEMPLATE.name}-{TEMPLATE.namespace}-routes")]
    assert grant["metadata"]["namespace"] == "istio-system"
    with pytest.raises(SystemExit):
        render.main(["knative", "--registry", REGISTRY, "--out", str(tmp_path), "--knative-local-gateway", "kourier"])


def test_openfaas_functions_admit_the_gateway_and_prometheus_only(rendered: Path) -> None:
    found = objects(rendered / "openfaas-standard/worker")
    for function in TEMPLATE.http_functions:
        assert admits(found, function.name, "openfaas", render.HTTP_PORT)
        assert admits(found, function.name, "monitoring", render.HTTP_PORT)
        assert not admits(found, function.name, "default", render.HTTP_PORT)
        assert not admits(found, function.name, "openfaas", render.WORKER_METRICS_PORT)


@pytest.mark.parametrize("target", ["knative", "openfaas-ce/worker", "openfaas-standard/worker"])
def test_pods_reach_only_dns_and_the_services_their_own_secrets_name(rendered: Path, target: str) -> None:
    found = objects(rendered / target)
    users = {
        "MONGO_URI": {f.name for f in TEMPLATE.functions},
        "RABBITMQ_URL": {"login", "enqueue", "status", "worker"},
        "RABBITMQ_MANAGEMENT_URL": {"status"},  # the worker's scaler reads it, not the worker
    }
    ports = {"MONGO_URI": (27017,), "RABBITMQ_URL": (5671, 5672), "RABBITMQ_MANAGEMENT_URL": (15671, 15672)}
    for function in TEMPLATE.functions:
        assert sends(found, function.name, 53, "UDP") and sends(found, function.name, 53, "TCP")
        for setting, port_list in ports.items():
            for port in port_list:
                assert sends(found, function.name, port) == (function.name in users[setting]), (function.name, port)
        # Not the Kubernetes API, not the web, not another pod's HTTP port.
        for port in (443, 6443, 80, 8080, 8012):
            assert not sends(found, function.name, port), (function.name, port)
        assert not sends(found, function.name, 27017, "UDP")


@pytest.mark.parametrize(("target", "enforced"), [("knative", "restricted"), ("openfaas-standard/worker", "baseline")])
def test_the_namespace_enforces_a_pod_security_standard(rendered: Path, target: str, enforced: str) -> None:
    # Kubernetes Pod Security Admission labels (kubernetes.io/docs/concepts/security/pod-security-admission).
    (namespace,) = [m for (kind, _), m in objects(rendered / target).items() if kind == "Namespace"]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == enforced
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == "latest"


# The Pod Security Standard `restricted` (kubernetes.io/docs/concepts/security/pod-security-standards):
# the volume types it allows, and what every container must set.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


def restricted_problems(spec: dict[str, Any]) -> list[str]:
    problems = []
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        problems += [f"volume {volume['name']}: {k}" for k in kinds - RESTRICTED_VOLUMES]
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(field)
    pod_security = spec.get("securityContext", {})
    for container in spec["containers"]:
        security = {**pod_security, **container.get("securityContext", {})}
        if security.get("privileged"):
            problems.append("privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append("allowPrivilegeEscalation")
        if security.get("runAsNonRoot") is not True or security.get("runAsUser") == 0:
            problems.append("runAsNonRoot")
        if security.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append("seccompProfile")
        capabilities = security.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []) or set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append("capabilities")
        if any("hostPort" in port for port in container.get("ports", [])):
            problems.append("hostPort")
    return problems


@pytest.mark.parametrize("target", render.TARGETS)
def test_lanes_own_pods_meet_the_restricted_pod_security_standard(rendered: Path, target: str) -> None:
    specs = _pod_specs(rendered, target if target == "knative" else f"{target}/worker")
    assert specs
    for name, spec in specs.items():
        assert restricted_problems(spec) == [], name
    broken = copy.deepcopy(next(iter(specs.values())))
    broken["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    broken["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    assert restricted_problems(broken) == ["volume host: hostPath", "allowPrivilegeEscalation"]


@pytest.mark.parametrize("target", render.TARGETS)
def test_every_function_has_a_network_policy_and_a_disruption_budget(rendered: Path, target: str) -> None:
    found = objects(rendered / (target if target == "knative" else f"{target}/worker"))
    for function in TEMPLATE.functions:
        assert _policies(found, function.name, "Ingress"), function.name
        assert _policies(found, function.name, "Egress"), function.name
        budget = found[("PodDisruptionBudget", function.name)]["spec"]
        assert budget == {"maxUnavailable": 1, "selector": {"matchLabels": render.labels(TEMPLATE, function)}}


def test_the_config_checksum_changes_with_the_settings() -> None:
    worker = TEMPLATE.worker
    changed = dataclasses.replace(TEMPLATE, env={**TEMPLATE.env, "LOG_LEVEL": "DEBUG"})
    before = render.config_checksum(TEMPLATE, worker)["checksum/config"]
    assert render.config_checksum(changed, worker)["checksum/config"] != before
    assert render.config_checksum(TEMPLATE, TEMPLATE.function("login"))["checksum/config"] != before
    for target in render.TARGETS:
        platform, edition = render.TARGETS[target]
        for name, spec in render.RENDERERS[platform](TEMPLATE, render.Options(REGISTRY, edition or "standard")).items():
            if name.endswith("worker-deployment.yaml"):
                assert spec["spec"]["template"]["metadata"]["annotations"]["checksum/config"] == before


def test_images_take_the_registry_and_tag_given_at_render_time(tmp_path: Path) -> None:
    flags = ["--registry", "registry.example.com:5000/acme/", "--tag", "1.2.3"]
    render.main(["knative", "--out", str(tmp_path / "k"), *flags])
    render.main(["openfaas", "--openfaas-edition", "ce", "--out", str(tmp_path / "o"), *flags])
    images = [c["image"] for spec in _pod_specs(tmp_path, "k").values() for c in spec["containers"]] + [
        f["image"] for f in yaml.safe_load((tmp_path / "o" / "stack.yml").read_text())["functions"].values()
    ]
    assert len(images) == len(TEMPLATE.functions) + len(TEMPLATE.http_functions)
    assert all(i.startswith("registry.example.com:5000/acme/lanes/") and i.endswith(":1.2.3") for i in images)
    assert "registry.example.com:5000/acme/lanes/worker:1.2.3" in images
    untagged = dataclasses.replace(TEMPLATE.worker, image="lanes/worker")
    assert render.image(untagged, render.Options("r.example:5000")) == "r.example:5000/lanes/worker:latest"
    assert render.image(TEMPLATE.worker, render.Options(REGISTRY, tag="9")) == f"{REGISTRY}/lanes/worker:9"


@pytest.mark.parametrize("registry", ["", "/"])
def test_no_image_is_rendered_without_a_registry(registry: str, tmp_path: Path) -> None:
    # `lanes/worker:0.1.0` alone is docker.io/lanes/worker: a namespace Lanes does not own.
    with pytest.raises(render.RenderError, match="registry"):
        render.image(TEMPLATE.worker, render.Options(registry))
    with pytest.raises(SystemExit):
        render.main(["knative", "--out", str(tmp_path), "--registry", registry])
    with pytest.raises(SystemExit):
        render.main(["knative", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_openfaas_ce_warns_unless_the_images_are_public(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # faas-netes (CE) refuses an image that does not pull anonymously: pkg/handlers/deploy.go, isAnonymous.
    ce = ["openfaas", "--openfaas-edition", "ce", "--registry", "ghcr.io/acme", "--out", str(tmp_path)]
    render.main(ce)
    assert "anonymously" in capsys.readouterr().err
    render.main([*ce, "--public-images"])
    render.main(["openfaas", "--registry", "ghcr.io/acme", "--out", str(tmp_path / "standard")])
    render.main(["knative", "--registry", "ghcr.io/acme", "--out", str(tmp_path / "knative")])
    assert capsys.readouterr().err == ""
    assert "anonymously" in (tmp_path / "stack.yml").read_text()


def test_keda_reads_the_management_api_with_tls_and_a_private_ca_when_asked(tmp_path: Path) -> None:
    # KEDA's rabbitmq scaler takes tls ("enable"/"disable") and ca from the TriggerAuthentication
    # and applies them to the management API client (kedacore/keda pkg/scalers/rabbitmq_scaler.go).
    plain = render.render_knative(TEMPLATE, OPTIONS)["worker-triggerauthentication.yaml"]
    assert [r["parameter"] for r in plain["spec"]["secretTargetRef"]] == ["host"]
    files = render.render_knative(TEMPLATE, render.Options(REGISTRY, rabbitmq_ca_secret="rabbitmq-ca"))
    auth = files["worker-triggerauthentication.yaml"]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs["tls"] == ("rabbitmq-ca", "tls") and refs["ca"] == ("rabbitmq-ca", "ca")
    assert not validate.validate(auth)
    (example,) = [m for m in files["secrets.yaml.example"] if m["metadata"]["name"] == "rabbitmq-ca"]
    assert example["stringData"]["tls"] == "enable" and set(example["stringData"]) == {"tls", "ca"}
    broken = copy.deepcopy(auth)
    broken["spec"]["secretTargetRef"][1]["parameter"] = "caCert"
    assert any("caCert" in p for p in validate.validate(broken))


def test_more_partitions_than_kedas_page_ask_for_a_larger_page() -> None:
    template = dataclasses.replace(TEMPLATE, env={**TEMPLATE.env, "LANE_PARTITIONS": "240"})
    scaled = render.render_knative(template, OPTIONS)["worker-scaledobject.yaml"]
    assert scaled["spec"]["triggers"][0]["metadata"]["pageSize"] == "240"
    assert not validate.validate(scaled)
    assert render.lane_partitions(TEMPLATE) <= render.KEDA_PAGE_SIZE


def test_a_non_default_vhost_reaches_kedas_trigger() -> None:
    files = render.render_knative(TEMPLATE, render.Options(REGISTRY, rabbitmq_vhost="lanes"))
    assert files["worker-scaledobject.yaml"]["spec"]["triggers"][0]["metadata"]["vhostName"] == "lanes"
    assert not validate.validate(files["worker-scaledobject.yaml"])


@pytest.mark.parametrize(("target", "slots"), [(4, "2"), (2, "4"), (4, None)])
def test_the_template_refuses_a_keda_target_other_than_the_worker_slots(
    tmp_path: Path, target: int, slots: str | None
) -> None:
    raw = yaml.safe_load((ROOT / "template.yaml").read_text())
    worker = raw["functions"]["worker"]
    worker["scale"]["target"] = target
    worker["env"] = {"WORKER_SLOTS": slots} if slots else {}
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(TemplateError, match="WORKER_SLOTS"):
        load(path)


def _gunicorn_slots(function: str, env: dict[str, str], tmp_path: Path) -> int:
    """Requests gunicorn serves at once when the function's gunicorn.conf.py runs with `env`:
    processes x threads (gthread) or x worker_connections (gevent: one greenlet each)."""
    script = (
        "import json, runpy; c = runpy.run_path('gunicorn.conf.py'); "
        "print(json.dumps([c['workers'], c['worker_class'], c['threads'], c['worker_connections']]))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("WEB_CONCURRENCY", "THREADS", "WORKER_CLASS")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT / TEMPLATE.function(function).source,
        env={**clean, **env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / function)},
        capture_output=True,
        text=True,
        check=True,
    )
    workers, worker_class, threads, connections = json.loads(result.stdout)
    return int(workers) * int(threads if worker_class == "gthread" else connections)


def test_knative_and_openfaas_send_a_replica_at_most_the_requests_gunicorn_serves_at_once(
    rendered: Path, tmp_path: Path
) -> None:
    knative = objects(rendered / "knative")
    config = knative[("ConfigMap", f"{TEMPLATE.name}-config")]["data"]
    standard = objects(rendered / "openfaas-standard/functions")
    stack = yaml.safe_load((rendered / "openfaas-ce" / "stack.yml").read_text())["functions"]
    for function in TEMPLATE.http_functions:
        revision = knative[("Service", function.name)]["spec"]["template"]["spec"]
        (container,) = revision["containers"]
        env = {**config, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
        slots = _gunicorn_slots(function.name, env, tmp_path)
        # Knative: the queue-proxy never lets more than containerConcurrency requests in.
        assert revision["containerConcurrency"] == slots, function.name
        # OpenFaaS Standard: `capacity` scaling on in-flight requests per replica.
        spec = standard[("Function", function.name)]["spec"]
        assert spec["labels"]["com.openfaas.scale.target"] == str(slots), function.name
        assert _gunicorn_slots(function.name, spec["environment"], tmp_path) == slots, function.name
        assert _gunicorn_slots(function.name, stack[function.name]["environment"], tmp_path) == slots
        assert slots == function.server.slots
    # The template is the one place: other processes, other slots, everywhere at once.
    raw = yaml.safe_load((ROOT / "template.yaml").read_text())
    raw["functions"]["login"]["server"]["threads"] = 6
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(raw))
    changed = load(path)
    login = render.knative_service(changed, changed.function("login"), OPTIONS)["spec"]["template"]["spec"]
    env = {**config, **{e["name"]: e["value"] for e in login["containers"][0]["env"] if "value" in e}}
    assert login["containerConcurrency"] == _gunicorn_slots("login", env, tmp_path) == 12


DEPLOY_DOC = (ROOT / "docs/deploy.md").read_text()


def test_every_path_docs_deploy_applies_is_rendered(rendered: Path) -> None:
    paths = set(re.findall(r"deploy-out/([\w./-]+)", DEPLOY_DOC))
    assert {"knative", "knative/monitoring", "openfaas-standard", "openfaas-ce/stack.yml"} <= paths
    for path in paths:
        target = rendered / path.rstrip("/")
        assert target.exists(), path
        if target.is_dir():  # applied with -k
            assert (target / "kustomization.yaml").is_file(), path


def test_docs_deploy_creates_every_secret_the_manifests_read_and_lists_every_flag(rendered: Path) -> None:
    per_function = set(re.findall(r"`(\w+-(?:mongo-uri|rabbitmq-url|rabbitmq-management-url))`", DEPLOY_DOC))
    rendered_secrets = {name for (kind, name) in objects(rendered / "knative") if kind == "Secret"}
    assert per_function and per_function <= rendered_secrets
    loops = re.findall(r"for f in ([\w ]+); do\n\s+kubectl -n \$NS create secret generic \$f-([\w-]+)", DEPLOY_DOC)
    created = {f"{f}-{suffix}" for names, suffix in loops for f in names.split()}
    created |= set(re.findall(r"create secret generic ([a-z][\w.-]+)", DEPLOY_DOC))
    needed = {n for n in rendered_secrets if n != "jwt-secret"}  # the optional HS256 key
    assert needed <= created, sorted(needed - created)
    flags = set(re.findall(r"`(--[a-z-]+)`", DEPLOY_DOC))
    parser_flags = set(re.findall(r'"(--[a-z-]+)"', (ROOT / "deploy/render.py").read_text()))
    assert parser_flags - {"--out", "--template", "--openfaas-edition"} <= flags
    assert flags <= parser_flags | {"--server-side"}
