"""Rendered manifests: every object valid against its real schema, and saying what template.yaml says."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import render, validate
from deploy.template import ROOT, TemplateError, load

TEMPLATE = load()
WORKER_FOLDERS = ("knative", "openfaas-ce/worker", "openfaas-standard/worker")


def render_args(target: str) -> list[str]:
    platform, edition = render.TARGETS[target]
    return [platform, *(["--openfaas-edition", edition] if edition else [])]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    for target in render.TARGETS:
        assert render.main([*render_args(target), "--out", str(out / target)]) == 0
    return out


def objects(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in validate.manifest_files(folder):
        for manifest in validate.documents(path):
            found[(manifest["kind"], manifest["metadata"]["name"])] = manifest
    return found


def test_make_render_writes_knative_and_both_openfaas_editions(tmp_path: Path) -> None:
    result = subprocess.run(["make", "-s", "render", f"OUT={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    monitoring = [
        "monitoring/dashboards.yaml",
        "monitoring/podmonitor-functions.yaml",
        "monitoring/podmonitor-worker.yaml",
        "monitoring/prometheusrule.yaml",
    ]
    worker = [
        "configmap.yaml",
        "networkpolicy.yaml",
        "poddisruptionbudget.yaml",
        "secrets.yaml.example",
        "serviceaccount.yaml",
        "worker-deployment.yaml",
        "worker-scaledobject.yaml",
        "worker-triggerauthentication.yaml",
    ]
    functions = [f"function-{f.name}.yaml" for f in TEMPLATE.http_functions]
    knative = ["00-namespace.yaml", "httproute.yaml", *[f"service-{f.name}.yaml" for f in TEMPLATE.http_functions]]
    assert names == sorted(
        [
            *(f"knative/{n}" for n in [*knative, *monitoring, *worker]),
            *(f"openfaas-ce/{n}" for n in ["stack.yml", "routing/httproute.yaml", *monitoring]),
            *(f"openfaas-ce/worker/{n}" for n in worker),
            *(f"openfaas-standard/{n}" for n in ["routing/httproute.yaml", *monitoring]),
            *(f"openfaas-standard/functions/{n}" for n in functions),
            *(f"openfaas-standard/worker/{n}" for n in worker),
        ]
    )


@pytest.mark.parametrize("platform", render.TARGETS)
def test_every_rendered_object_is_valid_against_its_schema(rendered: Path, platform: str) -> None:
    checked = [
        (f"{path.name}: {manifest['kind']} {manifest['metadata']['name']}", validate.validate(manifest))
        for path in validate.manifest_files(rendered / platform)
        for manifest in validate.documents(path)
    ]
    kinds = {name.split(": ")[1].split()[0] for name, _ in checked}
    assert kinds >= {
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


def test_every_referenced_secret_and_config_map_is_rendered(rendered: Path) -> None:
    for folder in WORKER_FOLDERS:
        found = objects(rendered / folder)
        text = "\n".join(yaml.safe_dump(m) for (kind, _), m in found.items() if kind in ("Service", "Deployment"))
        referenced = {line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("name:")}
        secrets = {name for kind, name in found if kind == "Secret"}
        assert ("ConfigMap", "lanes-config") in found
        env_secret_names = {render.secret_name(s) for s in TEMPLATE.secrets}
        assert env_secret_names <= secrets
        assert referenced & env_secret_names, "no function reads a secret"


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
        assert scaling["com.openfaas.scale.target"] == str(function.scale["concurrency"])
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
        assert {owner[m["path"]["value"]] for m in rule["matches"]} == {backend["name"]}
        (rewrite,) = rule["filters"]
        assert rewrite["urlRewrite"]["hostname"] == f"{backend['name']}.{TEMPLATE.namespace}.svc.cluster.local"
    for rule in openfaas["spec"]["rules"]:
        ((match,),) = [rule["matches"]]
        path = rule["filters"][0]["urlRewrite"]["path"]
        target = path.get("replaceFullPath") or path.get("replacePrefixMatch")
        assert target == f"/function/{owner[match['path']['value']]}{match['path']['value']}"
        assert rule["backendRefs"] == [{"name": "gateway", "port": 8080}]
    assert openfaas["metadata"]["namespace"] == "openfaas"


def test_knative_services_are_reachable_only_through_the_route(rendered: Path) -> None:
    for function in TEMPLATE.http_functions:
        service = objects(rendered / "knative")[("Service", function.name)]
        assert service["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"


def test_the_gateway_and_hostname_are_render_flags(tmp_path: Path) -> None:
    render.main(["knative", "--out", str(tmp_path), "--gateway", "edge", "--gateway-namespace", "infra"])
    render.main(["knative", "--out", str(tmp_path / "h"), "--hostname", "lanes.example.com"])
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
        assert (endpoint["portNumber"], endpoint["path"]) == (port, "/metrics")
        # The job the alerts and dashboards read (`up{job="lanes"}`).
        assert {"action": "replace", "targetLabel": "job", "replacement": "lanes"} in endpoint["relabelings"]
        assert pods[function.name]["labels"]["app.kubernetes.io/name"] == function.name
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [monitor["metadata"]["namespace"]]


def test_the_worker_serves_its_metrics_on_a_named_port(rendered: Path) -> None:
    worker = objects(rendered / "knative")[("Deployment", TEMPLATE.worker.name)]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": render.WORKER_METRICS_PORT}]
    assert {"name": "METRICS_PORT", "value": str(render.WORKER_METRICS_PORT)} in container["env"]


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


@pytest.mark.parametrize("target", render.TARGETS)
def test_every_function_has_a_network_policy_and_a_disruption_budget(rendered: Path, target: str) -> None:
    found = objects(rendered / target)
    policies = [m for (kind, _), m in found.items() if kind == "NetworkPolicy"]
    covered = [v for p in policies for v in p["spec"]["podSelector"]["matchExpressions"][0]["values"]]
    assert sorted(covered) == sorted(f.name for f in TEMPLATE.functions)
    for policy in policies:
        (rule,) = policy["spec"]["ingress"]
        sources = rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
        assert "monitoring" in sources
    (worker_policy,) = [p for p in policies if p["metadata"]["name"] == f"{TEMPLATE.name}-worker"]
    assert worker_policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": render.WORKER_METRICS_PORT}]
    for function in TEMPLATE.functions:
        budget = found[("PodDisruptionBudget", function.name)]["spec"]
        assert budget == {"maxUnavailable": 1, "selector": {"matchLabels": render.labels(TEMPLATE, function)}}


def test_the_config_checksum_changes_with_the_settings() -> None:
    worker = TEMPLATE.worker
    changed = dataclasses.replace(TEMPLATE, env={**TEMPLATE.env, "LOG_LEVEL": "DEBUG"})
    before = render.config_checksum(TEMPLATE, worker)["checksum/config"]
    assert render.config_checksum(changed, worker)["checksum/config"] != before
    assert render.config_checksum(TEMPLATE, TEMPLATE.function("login"))["checksum/config"] != before
    for target in render.TARGETS:
        for name, spec in render.RENDERERS[render.TARGETS[target][0]](TEMPLATE).items():
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
    untagged = dataclasses.replace(TEMPLATE.worker, image="registry:5000/worker")
    assert render.image(untagged, render.Options()) == "registry:5000/worker:latest"
    assert render.image(TEMPLATE.worker, render.Options(tag="9")) == "lanes/worker:9"


def test_keda_and_the_status_function_read_one_management_secret(rendered: Path) -> None:
    found = objects(rendered / "knative")
    (ref,) = found[("TriggerAuthentication", f"{TEMPLATE.worker.name}-rabbitmq")]["spec"]["secretTargetRef"]
    # The status function's lane gauges and the worker's lane sweeper read the management API too.
    for kind, name in (("Service", "status"), ("Deployment", TEMPLATE.worker.name)):
        (container,) = found[(kind, name)]["spec"]["template"]["spec"]["containers"]
        (management,) = [e for e in container["env"] if e["name"] == "RABBITMQ_MANAGEMENT_URL"]
        secret = management["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (secret["name"], secret["key"]) == ("rabbitmq-management-url",) * 2
    secrets = {name for kind, name in found if kind == "Secret"}
    assert "lanes-rabbitmq-management" not in secrets


def test_more_partitions_than_kedas_page_ask_for_a_larger_page() -> None:
    template = dataclasses.replace(TEMPLATE, env={**TEMPLATE.env, "LANE_PARTITIONS": "240"})
    scaled = render.render_knative(template, render.Options())["worker-scaledobject.yaml"]
    assert scaled["spec"]["triggers"][0]["metadata"]["pageSize"] == "240"
    assert not validate.validate(scaled)
    assert render.lane_partitions(TEMPLATE) <= render.KEDA_PAGE_SIZE


def test_a_non_default_vhost_reaches_kedas_trigger() -> None:
    files = render.render_knative(TEMPLATE, render.Options(rabbitmq_vhost="lanes"))
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
