"""Render template.yaml into manifests for Knative (+ KEDA) or OpenFaaS (+ KEDA).

    python -m deploy.render knative --out DIR                          # kubectl apply -f DIR -f DIR/monitoring
    python -m deploy.render openfaas --openfaas-edition ce --out DIR   # DIR/stack.yml for faas-cli (trials)
    python -m deploy.render openfaas --openfaas-edition standard --out DIR  # DIR/functions/: Function objects
    ... [--registry REGISTRY] [--tag TAG]                              # images as the cluster pulls them

HTTP functions become cluster-local Knative Services (scale to zero, soft
concurrency target, Knative's probes) behind one Gateway API `HTTPRoute`, or
OpenFaaS functions behind the OpenFaaS gateway and an `HTTPRoute` to it. OpenFaaS
Community Edition refuses scaling labels and more than 5 replicas and keeps one
replica up; Standard has the Function resource and scales to zero. The worker is on
every platform a Deployment that KEDA scales 0..max with a `rabbitmq` trigger that
sums the messages of the LANE_PARTITIONS lane partitions (a regex over their names,
read from the management API). KEDA reads one page of matching queues and fails past
it: a page holds 100 queues, and the trigger asks for a larger one when LANE_PARTITIONS
is larger.

Every pod runs as a non-root user on a read-only root filesystem (an emptyDir at
/tmp), without a service account token, behind a NetworkPolicy and a
PodDisruptionBudget; `monitoring/` holds the PodMonitors, the PrometheusRule and
the Grafana dashboards (deploy/monitoring.py).

Secrets are never rendered with values: `*.yaml.example` files show their shape
(kubectl skips them when applying a folder); create the real ones as docs/deploy.md
says. Each secret is a Secret of its own with one key named like
it, as `faas-cli secret create` makes them, so both platforms share them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploy import monitoring
from deploy.template import Function, Route, Secret, Template, load
from lanes.settings import Settings

PLATFORMS = ("knative", "openfaas")
EDITIONS = ("ce", "standard")
# Every rendered target: `make render OUT=DIR` writes DIR/<target>/ for each.
TARGETS = {"knative": ("knative", ""), "openfaas-ce": ("openfaas", "ce"), "openfaas-standard": ("openfaas", "standard")}
CE_MAX_REPLICAS = 5  # OpenFaaS Community Edition refuses a function asking for more
OPENFAAS_NAMESPACE = "openfaas-fn"
OPENFAAS_GATEWAY_NAMESPACE = "openfaas"
OPENFAAS_SECRETS = "/var/openfaas/secrets"
SECRET_FILES = "/var/run/lanes/secrets"
HTTP_PORT = 8080
WORKER_METRICS_PORT = 9102  # the worker's Dockerfile sets METRICS_PORT to this too
MANAGEMENT_SECRET = "RABBITMQ_MANAGEMENT_URL"
KEDA_PAGE_SIZE = 100  # queues KEDA's rabbitmq scaler lists per regex unless told `pageSize`
HEADER = "# Rendered from template.yaml by `python -m deploy.render`; edit the template, not this file.\n"
Manifest = dict[str, Any]
# Settings every rendered function gets unless template.yaml sets them. The proxies in
# front of a function all live in the cluster: on Knative the queue-proxy (127.0.0.1, in
# the pod), the activator and the ingress; on OpenFaaS the gateway and the ingress. Their
# pod ranges are private ones; narrow these to the cluster's (docs/security.md).
# The `fail` test action is off: anyone with an account could fill the dead letters.
PLATFORM_ENV = {
    "TRUSTED_PROXIES": "127.0.0.1/32,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7",
    "ENABLE_FAIL_ACTION": "false",
}


@dataclass(frozen=True)
class Options:
    """What the cluster decides rather than the template: where images come from, what fronts it."""

    edition: str = "standard"
    registry: str = ""  # prefixed to every image's repository
    tag: str = ""  # replaces every image's tag
    gateway: str = "lanes"  # the Gateway the HTTPRoute attaches to
    gateway_namespace: str = ""  # empty: the route's own namespace
    hostname: str = ""  # the public host name; empty: every host the Gateway serves
    knative_ingress_namespace: str = "kourier-system"  # where Knative's ingress proxies run
    monitoring_namespace: str = "monitoring"  # where Prometheus runs
    rabbitmq_vhost: str = "/"  # the vhost of RABBITMQ_URL, for KEDA's management API reads


# -- shared pieces ---------------------------------------------------------------


def secret_name(secret: Secret) -> str:
    """The platform secret holding one setting: `mongo-uri`, or the file name for a file secret."""
    return secret.file or secret.name.lower().replace("_", "-")


def labels(template: Template, function: Function) -> dict[str, str]:
    return {"app.kubernetes.io/name": function.name, "app.kubernetes.io/part-of": template.name}


def part_of(template: Template) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": template.name}


def metadata(template: Template, name: str, namespace: str, function: Function | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    meta["labels"] = labels(template, function) if function else part_of(template)
    return meta


def image(function: Function, options: Options) -> str:
    """The function's image with the registry and tag the render was asked for."""
    repository, _, tag = function.image.rpartition(":")
    if "/" in tag or not repository:  # no tag, only a registry port
        repository, tag = function.image, "latest"
    if options.registry:
        repository = f"{options.registry.rstrip('/')}/{repository}"
    return f"{repository}:{options.tag or tag}"


def config_data(template: Template) -> dict[str, str]:
    return {**PLATFORM_ENV, **template.env}


def config_checksum(template: Template, function: Function) -> dict[str, str]:
    """An annotation that changes with the function's settings, so a changed ConfigMap rolls its pods."""
    settings = {**config_data(template), **function.env}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return {"checksum/config": digest}


def config_map(template: Template, namespace: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(template, f"{template.name}-config", namespace),
        "data": config_data(template),
    }


def example_secrets(template: Template, namespace: str) -> list[Manifest]:
    """Secrets with placeholder values, to show their shape; never applied as they are."""
    placeholders = {MANAGEMENT_SECRET: "https://<user>:<password>@<rabbitmq-host>:15671 (no path)"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata(template, secret_name(s), namespace),
            "type": "Opaque",
            "stringData": {secret_name(s): placeholders.get(s.name, f"<{s.name}{' file content' if s.file else ''}>")},
        }
        for s in template.secrets
    ]


def resources(function: Function) -> dict[str, dict[str, str]]:
    return {kind: dict(values) for kind, values in function.resources.items()}


def container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,  # /tmp is an emptyDir: metrics files live there
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def secret_env(template: Template, function: Function) -> tuple[list[dict[str, Any]], list[Secret]]:
    """Environment entries for a function's value secrets, and its file secrets to mount."""
    env: list[dict[str, Any]] = []
    files: list[Secret] = []
    for secret in (template.secret(name) for name in function.secrets):
        if secret.file:
            env.append({"name": secret.name, "value": f"{SECRET_FILES}/{secret.file}"})
            files.append(secret)
        else:
            ref = {"name": secret_name(secret), "key": secret_name(secret), "optional": secret.optional}
            env.append({"name": secret.name, "valueFrom": {"secretKeyRef": ref}})
    return env, files


def pod_parts(template: Template, function: Function, options: Options) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The container fields every platform's pod shares, and the volumes they mount."""
    env, files = secret_env(template, function)
    env += [{"name": key, "value": value} for key, value in function.env.items()]
    container: dict[str, Any] = {
        "name": function.name,
        "image": image(function, options),
        "env": env,
        "envFrom": [{"configMapRef": {"name": f"{template.name}-config"}}],
        "resources": resources(function),
        "securityContext": container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    if files:
        container["volumeMounts"].append({"name": "secret-files", "mountPath": SECRET_FILES, "readOnly": True})
        sources = [
            {"secret": {"name": secret_name(s), "items": [{"key": secret_name(s), "path": s.file}]}} for s in files
        ]
        volumes.append({"name": "secret-files", "projected": {"sources": sources}})
    return container, volumes


def pod_identity(template: Template) -> dict[str, Any]:
    """Pods run as a service account of their own that gets no API token: they never call Kubernetes."""
    return {"serviceAccountName": template.name, "automountServiceAccountToken": False}


def service_account(template: Template, namespace: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(template, template.name, namespace),
        "automountServiceAccountToken": False,
    }


def network_policy(
    template: Template, name: str, namespace: str, functions: Iterable[Function], sources: list[str], port: int
) -> Manifest:
    """Let only the pods of `sources` namespaces reach `functions`' pods, and only on `port`.

    Egress stays open: MongoDB and RabbitMQ may live anywhere, inside the cluster or not.
    """
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(template, name, namespace),
        "spec": {
            "podSelector": {
                "matchExpressions": [
                    {"key": "app.kubernetes.io/name", "operator": "In", "values": sorted(f.name for f in functions)}
                ]
            },
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/metadata.name",
                                        "operator": "In",
                                        "values": sorted(set(sources)),
                                    }
                                ]
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": port}],
                }
            ],
        },
    }


def disruption_budget(template: Template, function: Function, namespace: str) -> Manifest:
    """A node drain takes one pod of a function at a time (a one-replica function still drains)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(template, function.name, namespace, function),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(template, function)}},
    }


def monitoring_manifests(template: Template, namespace: str) -> dict[str, Any]:
    """monitoring/: PodMonitors for the functions and the worker, the alerts, the dashboards."""
    meta = part_of(template)
    http = [f.name for f in template.http_functions]
    return {
        "monitoring/podmonitor-functions.yaml": monitoring.pod_monitor(
            f"{template.name}-functions", namespace, meta, http, HTTP_PORT
        ),
        "monitoring/podmonitor-worker.yaml": monitoring.pod_monitor(
            f"{template.name}-worker", namespace, meta, [template.worker.name], WORKER_METRICS_PORT
        ),
        "monitoring/prometheusrule.yaml": monitoring.prometheus_rule(f"{template.name}-alerts", namespace, meta),
        "monitoring/dashboards.yaml": monitoring.dashboard_config_maps(template.name, namespace, meta),
    }


# -- the worker: Deployment + KEDA, the same on every platform ----------------------


def worker_manifests(template: Template, namespace: str, options: Options) -> dict[str, Manifest]:
    worker = template.worker
    container, volumes = pod_parts(template, worker, options)
    container["command"] = list(worker.command)
    container["env"].append({"name": "METRICS_PORT", "value": str(WORKER_METRICS_PORT)})
    container["ports"] = [{"name": "metrics", "containerPort": WORKER_METRICS_PORT}]
    # The worker has no HTTP server of its own: its metrics server answering is its sign of life.
    container["livenessProbe"] = {
        "httpGet": {"path": "/metrics", "port": "metrics"},
        "initialDelaySeconds": 10,
        "periodSeconds": 20,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }
    pod: dict[str, Any] = {
        **pod_identity(template),
        # SIGTERM lets a worker finish its current request (REQUEST_TIMEOUT_SECONDS at most).
        "terminationGracePeriodSeconds": worker.shutdown_seconds,
        "containers": [container],
        "volumes": volumes,
    }
    annotations = {**monitoring.scrape_annotations(WORKER_METRICS_PORT), **config_checksum(template, worker)}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(template, worker.name, namespace, worker),
        # No `replicas`: KEDA owns the count, and re-applying must not reset it.
        "spec": {
            "selector": {"matchLabels": labels(template, worker)},
            "template": {"metadata": {"labels": labels(template, worker), "annotations": annotations}, "spec": pod},
        },
    }
    idle = worker.scale.get("idle_seconds", 60)
    scaled_object = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(template, worker.name, namespace, worker),
        "spec": {
            "scaleTargetRef": {"name": worker.name},
            "minReplicaCount": worker.scale.get("min", 0),
            "maxReplicaCount": worker.scale.get("max", 1),
            "pollingInterval": 5,
            "cooldownPeriod": idle,  # last worker stops after this long with every lane empty
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": idle}},
                }
            },
            "triggers": [
                {
                    "type": "rabbitmq",
                    "metadata": rabbitmq_trigger(worker, options, lane_partitions(template)),
                    "authenticationRef": {"name": f"{worker.name}-rabbitmq"},
                }
            ],
        },
    }
    # The management API's one credential source: the Secret the status function reads too.
    management = secret_name(template.secret(MANAGEMENT_SECRET))
    trigger_auth = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": metadata(template, f"{worker.name}-rabbitmq", namespace, worker),
        "spec": {"secretTargetRef": [{"parameter": "host", "name": management, "key": management}]},
    }
    return {
        "worker-deployment.yaml": deployment,
        "worker-scaledobject.yaml": scaled_object,
        "worker-triggerauthentication.yaml": trigger_auth,
    }


def rabbitmq_trigger(worker: Function, options: Options, partitions: int) -> dict[str, str]:
    """KEDA's rabbitmq scaler on the lane partitions: replicas = ceil(messages / target)."""
    trigger = {
        # http: only the management API matches queues by regex, and it counts the
        # unacknowledged messages, the ones workers hold; over amqp KEDA would see only
        # partitions no worker holds and stop workers in the middle of a backlog.
        "protocol": "http",
        "useRegex": "true",
        "queueName": worker.queue,
        "operation": "sum",
        "mode": "QueueLength",
        "value": str(worker.scale.get("target", 1)),  # = WORKER_SLOTS (the template checks it)
        "activationValue": "0",  # any waiting request wakes the worker from zero
    }
    if partitions > KEDA_PAGE_SIZE:
        trigger["pageSize"] = str(partitions)
    if options.rabbitmq_vhost != "/":
        # The management URL has no path (the status function would take one for a prefix).
        trigger["vhostName"] = options.rabbitmq_vhost
    return trigger


def lane_partitions(template: Template) -> int:
    """How many partitions the worker's settings make: LANE_PARTITIONS, else Lanes' default."""
    return int(template.env_of(template.worker).get("LANE_PARTITIONS", Settings.lane_partitions))


# -- Knative -----------------------------------------------------------------------


def knative_probes(container: dict[str, Any]) -> None:
    """Probes as Knative recommends: readiness without periodSeconds, so the queue-proxy probes
    aggressively at cold start; both on /healthz, so a database or broker blip leaves pods
    ready and callers get Lanes' own 503 with Retry-After instead of waiting in the activator."""
    container["readinessProbe"] = {"httpGet": {"path": "/healthz"}, "successThreshold": 1}
    container["livenessProbe"] = {
        "httpGet": {"path": "/healthz"},
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }


def knative_service(template: Template, function: Function, options: Options) -> Manifest:
    container, volumes = pod_parts(template, function, options)
    container["ports"] = [{"name": "http1", "containerPort": HTTP_PORT}]
    knative_probes(container)
    scale = function.scale
    annotations = {
        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
        "autoscaling.knative.dev/metric": "concurrency",
        "autoscaling.knative.dev/target": str(scale.get("concurrency", 100)),
        "autoscaling.knative.dev/min-scale": str(scale.get("min", 0)),
        "autoscaling.knative.dev/max-scale": str(scale.get("max", 1)),
        **monitoring.scrape_annotations(HTTP_PORT),
        **config_checksum(template, function),
    }
    spec: dict[str, Any] = {
        **pod_identity(template),
        "timeoutSeconds": 60,
        "containers": [container],
        "volumes": volumes,
    }
    meta = metadata(template, function.name, template.namespace, function)
    # Reachable inside the cluster only: the public way in is the HTTPRoute, which leaves
    # the probes and /metrics out.
    meta["labels"]["networking.knative.dev/visibility"] = "cluster-local"
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "template": {
                "metadata": {"labels": labels(template, function), "annotations": annotations},
                "spec": spec,
            }
        },
    }


def path_match(route: Route) -> dict[str, Any]:
    return {"path": {"type": "PathPrefix" if route.prefix else "Exact", "value": route.path}}


def http_route(template: Template, namespace: str, rules: list[dict[str, Any]], options: Options) -> Manifest:
    parent: dict[str, Any] = {"name": options.gateway}
    if options.gateway_namespace:
        parent["namespace"] = options.gateway_namespace
    spec: dict[str, Any] = {"parentRefs": [parent]}
    if options.hostname:
        spec["hostnames"] = [options.hostname]
    spec["rules"] = rules
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(template, template.name, namespace),
        "spec": spec,
    }


def knative_route(template: Template, options: Options) -> Manifest:
    """One base URL: each public path to its Knative Service, by the Service's cluster-local host.

    The backend is the Kubernetes Service Knative makes per Knative Service (an ExternalName of
    Knative's local gateway), reached with the Knative Service's host name.
    """
    rules = []
    for function in template.http_functions:
        public = [route for route in function.routes if not route.internal]
        if not public:
            continue
        host = f"{function.name}.{template.namespace}.svc.cluster.local"
        rules.append(
            {
                "matches": [path_match(route) for route in public],
                "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": host}}],
                "backendRefs": [{"name": function.name, "port": 80}],
            }
        )
    return http_route(template, template.namespace, rules, options)


def render_knative(template: Template, options: Options | None = None) -> dict[str, Any]:
    """File name -> manifest (or list of manifests), for `kubectl apply -f DIR -f DIR/monitoring`."""
    options = options or Options()
    namespace = template.namespace
    files: dict[str, Any] = {
        "00-namespace.yaml": {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": part_of(template)},
        },
        "configmap.yaml": config_map(template, namespace),
        "secrets.yaml.example": example_secrets(template, namespace),
        "serviceaccount.yaml": service_account(template, namespace),
        "httproute.yaml": knative_route(template, options),
        "networkpolicy.yaml": [
            # Requests arrive from the activator (knative-serving) or Knative's ingress; the
            # queue-proxy in the pod forwards them. Prometheus scrapes every pod directly.
            network_policy(
                template,
                f"{template.name}-functions",
                namespace,
                template.http_functions,
                ["knative-serving", options.knative_ingress_namespace, options.monitoring_namespace],
                HTTP_PORT,
            ),
            worker_network_policy(template, namespace, options),
        ],
        "poddisruptionbudget.yaml": [disruption_budget(template, f, namespace) for f in template.functions],
    }
    for function in template.http_functions:
        files[f"service-{function.name}.yaml"] = knative_service(template, function, options)
    files.update(worker_manifests(template, namespace, options))
    files.update(monitoring_manifests(template, namespace))
    return files


def worker_network_policy(template: Template, namespace: str, options: Options) -> Manifest:
    """Nothing calls the worker: only Prometheus reaches its metrics port."""
    return network_policy(
        template,
        f"{template.name}-worker",
        namespace,
        [template.worker],
        [options.monitoring_namespace],
        WORKER_METRICS_PORT,
    )


# -- OpenFaaS ----------------------------------------------------------------------


def openfaas_labels(template: Template, function: Function, edition: str) -> dict[str, str]:
    """Scaling labels each edition accepts: CE refuses target/type/zero and more than 5 replicas."""
    scale = function.scale
    wanted_min, wanted_max = scale.get("min", 0), scale.get("max", 1)
    found = {**labels(template, function), "com.openfaas.scale.min": str(max(1, wanted_min))}
    if edition == "ce":
        # CE keeps at least one replica of every function and scales on requests per second only.
        found["com.openfaas.scale.max"] = str(min(CE_MAX_REPLICAS, max(1, wanted_max)))
        return found
    found["com.openfaas.scale.max"] = str(wanted_max)
    # Standard's autoscaler: in-flight requests per replica, as Knative's concurrency target.
    found["com.openfaas.scale.type"] = "capacity"
    found["com.openfaas.scale.target"] = str(scale.get("concurrency", 100))
    if wanted_min == 0:
        found["com.openfaas.scale.zero"] = "true"
    return found


def openfaas_function(template: Template, function: Function, options: Options) -> dict[str, Any]:
    """One function's fields as stack.yml and the Function resource share them."""
    environment = {**PLATFORM_ENV, **template.env_of(function), "SECRETS_DIR": OPENFAAS_SECRETS}
    secrets = []
    for secret in (template.secret(name) for name in function.secrets):
        if secret.optional:
            continue  # OpenFaaS refuses to deploy a function whose secret is missing
        secrets.append(secret_name(secret))
        if secret.file:
            environment[secret.name] = f"{OPENFAAS_SECRETS}/{secret_name(secret)}"
    annotations = {**monitoring.scrape_annotations(HTTP_PORT), **config_checksum(template, function)}
    if options.edition == "standard":
        # Both on /healthz, as on Knative: a dependency blip answers 503 rather than pulling pods.
        # CE probes /_/health, which every function answers as well.
        annotations["com.openfaas.health.http.path"] = "/healthz"
        annotations["com.openfaas.ready.http.path"] = "/healthz"
    return {
        "image": image(function, options),
        "environment": environment,
        "secrets": secrets,
        "labels": openfaas_labels(template, function, options.edition),
        "annotations": annotations,
        **{kind: dict(values) for kind, values in function.resources.items()},
    }


def openfaas_route(template: Template, options: Options) -> Manifest:
    """One base URL in front of the OpenFaaS gateway: /enqueue -> /function/enqueue/enqueue."""
    rules = []
    for function, route in template.public_routes:
        target = f"/function/{function.name}{route.path}"
        rewrite = (
            {"type": "ReplacePrefixMatch", "replacePrefixMatch": target}
            if route.prefix
            else {"type": "ReplaceFullPath", "replaceFullPath": target}
        )
        rules.append(
            {
                "matches": [path_match(route)],
                "filters": [{"type": "URLRewrite", "urlRewrite": {"path": rewrite}}],
                "backendRefs": [{"name": "gateway", "port": 8080}],
            }
        )
    return http_route(template, OPENFAAS_GATEWAY_NAMESPACE, rules, options)


CE_NOTE = (
    "# OpenFaaS Community Edition, for trials: one replica of every function stays up, at\n"
    "# most 5 per function, scaled on requests per second. Production: --openfaas-edition standard.\n"
)


def render_openfaas(template: Template, options: Options | None = None) -> dict[str, Any]:
    options = options or Options()
    files: dict[str, Any] = {}
    if options.edition == "ce":
        stack: dict[str, Any] = {
            "version": 1.0,
            "provider": {"name": "openfaas", "gateway": "http://127.0.0.1:8080"},
            "functions": {},
        }
        for function in template.http_functions:
            fields = openfaas_function(template, function, options)
            # Images are built from the repository root (docs/deploy.md), not by faas-cli.
            stack["functions"][function.name] = {
                "image": fields["image"],
                "skip_build": True,
                **fields,
                "readonly_root_filesystem": True,
            }
        files["stack.yml"] = stack
    else:
        for function in template.http_functions:
            fields = openfaas_function(template, function, options)
            files[f"functions/function-{function.name}.yaml"] = {
                "apiVersion": "openfaas.com/v1",
                "kind": "Function",
                "metadata": metadata(template, function.name, OPENFAAS_NAMESPACE, function),
                "spec": {"name": function.name, **fields, "readOnlyRootFilesystem": True},
            }
    files["routing/httproute.yaml"] = openfaas_route(template, options)
    # OpenFaaS has no free RabbitMQ connector: the worker is a plain Deployment that KEDA
    # scales, exactly as on Knative, beside the functions.
    worker = {
        "configmap.yaml": config_map(template, OPENFAAS_NAMESPACE),
        "secrets.yaml.example": example_secrets(template, OPENFAAS_NAMESPACE),
        "serviceaccount.yaml": service_account(template, OPENFAAS_NAMESPACE),
        "networkpolicy.yaml": [
            # The gateway (namespace openfaas) calls the functions; Prometheus scrapes them.
            network_policy(
                template,
                f"{template.name}-functions",
                OPENFAAS_NAMESPACE,
                template.http_functions,
                [OPENFAAS_GATEWAY_NAMESPACE, options.monitoring_namespace],
                HTTP_PORT,
            ),
            worker_network_policy(template, OPENFAAS_NAMESPACE, options),
        ],
        "poddisruptionbudget.yaml": [disruption_budget(template, f, OPENFAAS_NAMESPACE) for f in template.functions],
        **worker_manifests(template, OPENFAAS_NAMESPACE, options),
    }
    files.update({f"worker/{name}": manifest for name, manifest in worker.items()})
    files.update(monitoring_manifests(template, OPENFAAS_NAMESPACE))
    return files


RENDERERS = {"knative": render_knative, "openfaas": render_openfaas}
NOTES = {"stack.yml": CE_NOTE}


def write(files: dict[str, Any], out: Path) -> list[Path]:
    written = []
    for name, content in sorted(files.items()):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        documents: Iterable[Any] = content if isinstance(content, list) else [content]
        text = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False)
        path.write_text(HEADER + NOTES.get(name, "") + text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("platform", choices=PLATFORMS)
    parser.add_argument("--out", type=Path, required=True, help="folder to write into (created if missing)")
    parser.add_argument("--template", type=Path, default=None, help="template.yaml to read (default: the repository's)")
    parser.add_argument("--openfaas-edition", choices=EDITIONS, default="standard", help="OpenFaaS CE or Standard")
    parser.add_argument("--registry", default="", help="registry prefixed to every image, e.g. ghcr.io/acme")
    parser.add_argument("--tag", default="", help="tag of every image (default: the template's)")
    parser.add_argument("--gateway", default="lanes", help="the Gateway the HTTPRoute attaches to")
    parser.add_argument("--gateway-namespace", default="", help="its namespace (default: the route's)")
    parser.add_argument("--hostname", default="", help="the public host name of the base URL")
    parser.add_argument("--knative-ingress-namespace", default="kourier-system", help="Knative's ingress pods")
    parser.add_argument("--monitoring-namespace", default="monitoring", help="where Prometheus runs")
    parser.add_argument("--rabbitmq-vhost", default="/", help="RABBITMQ_URL's vhost, for KEDA")
    args = parser.parse_args(argv)
    template = load(args.template) if args.template else load()
    options = Options(
        edition=args.openfaas_edition,
        registry=args.registry,
        tag=args.tag,
        gateway=args.gateway,
        gateway_namespace=args.gateway_namespace,
        hostname=args.hostname,
        knative_ingress_namespace=args.knative_ingress_namespace,
        monitoring_namespace=args.monitoring_namespace,
        rabbitmq_vhost=args.rabbitmq_vhost,
    )
    for path in write(RENDERERS[args.platform](template, options), args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
