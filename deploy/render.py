"""Render template.yaml into manifests for Knative (+ KEDA) or OpenFaaS (+ KEDA).

    python -m deploy.render knative --registry R --out DIR                  # kubectl apply -k DIR
    python -m deploy.render openfaas --openfaas-edition ce --registry R --out DIR  # DIR/stack.yml for faas-cli (trials)
    python -m deploy.render openfaas --openfaas-edition standard --registry R --out DIR  # Function objects
    ... [--tag TAG] [--monitoring-labels release=kube-prometheus-stack] ...   # `--help` lists them all

`--registry` is required: the images are Lanes' own, pushed where the cluster pulls
from, and no default may name someone else's namespace (docs/deploy.md).

HTTP functions become cluster-local Knative Services (scale to zero, a hard
`containerConcurrency` equal to gunicorn's slots, Knative's probes) behind one
Gateway API `HTTPRoute` to Knative's local gateway, or OpenFaaS functions behind the
OpenFaaS gateway and an `HTTPRoute` to it. OpenFaaS Community Edition refuses scaling
labels and more than 5 replicas and keeps one replica up; Standard has the Function
resource and scales to zero. The worker is on every platform a Deployment that KEDA
scales 0..max with a `rabbitmq` trigger that sums the messages of the LANE_PARTITIONS
lane partitions (a regex over their names, read from the management API). KEDA reads
one page of matching queues and fails past it: a page holds 100 queues, and the
trigger asks for a larger one when LANE_PARTITIONS is larger.

Every pod runs as a non-root user on a read-only root filesystem (an emptyDir at
/tmp), without a service account token, behind ingress and egress NetworkPolicies
and a PodDisruptionBudget, in a namespace whose Pod Security labels say what it
enforces; `monitoring/` holds the PodMonitors, the PrometheusRule and the Grafana
dashboards (deploy/monitoring.py). Each folder has a `kustomization.yaml`, so
`kubectl apply -k` and overlays work.

Secrets are never rendered with values: `*.yaml.example` files show their shape
(no kustomization lists them); create the real ones as docs/deploy.md says. Each
secret is a Secret of its own with one key named like the setting (`mongo-uri`), as
`faas-cli secret create` makes them, so both platforms share them; the database and
broker credentials are one Secret per function (`enqueue-mongo-uri`).

This module needs only PyYAML and the template code (deploy/ and shared/lanes'
settings): `make render` runs it in a small environment of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
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

# The names the platforms give the port a function's metrics are served on, so that
# PodMonitors select it by name (prometheus-operator takes `portNumber` only from v0.79):
# knative/serving pkg/apis/serving/v1/revision_helpers.go, UserPortName: Knative renames
# the user container's port; openfaas/faas-netes pkg/handlers/deploy.go, makeDeploymentSpec:
# the function container's one port is named "http".
KNATIVE_USER_PORT_NAME = "user-port"
OPENFAAS_PORT_NAME = "http"
WORKER_PORT_NAME = "metrics"

# Where each pod may connect: DNS, and the ports of the services its secrets name.
DNS_PORTS = ((53, "UDP"), (53, "TCP"))
EGRESS_PORTS = {
    "MONGO_URI": (27017,),
    "RABBITMQ_URL": (5671, 5672),
    MANAGEMENT_SECRET: (15671, 15672),
}
# Pod Security Standards: the functions' and the worker's pods meet `restricted`.
# Knative's queue-proxy does too (knative/serving pkg/reconciler/revision/resources/queue.go,
# queueSecurityContext); faas-netes' function pods set no seccomp profile or dropped
# capabilities, so openfaas-fn can only enforce `baseline` and warns of `restricted`.
POD_SECURITY = {
    "restricted": {"enforce": "restricted", "audit": "restricted", "warn": "restricted"},
    "baseline": {"enforce": "baseline", "audit": "restricted", "warn": "restricted"},
}
Manifest = dict[str, Any]
# Settings every rendered function gets unless template.yaml sets them. Only loopback is
# trusted to write X-Forwarded-For (the sidecar in the pod): no private range is, since
# anything in the cluster could then choose its address. The operator names the ingress's
# and the activator's (or the gateway's) ranges, or a hop count, in template.yaml's `env`
# (TRUSTED_PROXIES, TRUSTED_PROXY_HOPS; docs/security.md says what to set where).
# The `fail` test action is off: anyone with an account could fill the dead letters.
PLATFORM_ENV = {
    "TRUSTED_PROXIES": "127.0.0.1/32,::1/128",
    "TRUSTED_PROXY_HOPS": "0",
    "ENABLE_FAIL_ACTION": "false",
}


class RenderError(ValueError):
    pass


@dataclass(frozen=True)
class Options:
    """What the cluster decides rather than the template: where images come from, what fronts it."""

    registry: str  # prefixed to every image's repository; required, Lanes publishes no images
    edition: str = "standard"
    tag: str = ""  # replaces every image's tag
    public_images: bool = False  # the registry serves the images anonymously (OpenFaaS CE needs it)
    gateway: str = "lanes"  # the Gateway the HTTPRoute attaches to
    gateway_namespace: str = ""  # empty: the route's own namespace
    hostname: str = ""  # the public host name; empty: every host the Gateway serves
    # Knative's cluster-local gateway, `namespace/name:port` of its Service: the public
    # route's backend (Kourier's; Istio's is istio-system/knative-local-gateway:80).
    knative_local_gateway: str = "kourier-system/kourier-internal:80"
    knative_ingress_namespace: str = ""  # where Knative's ingress proxies run; empty: the local gateway's
    monitoring_namespace: str = "monitoring"  # where Prometheus runs
    monitoring_labels: dict[str, str] = field(default_factory=dict)  # e.g. release: kube-prometheus-stack
    rabbitmq_vhost: str = "/"  # the vhost of RABBITMQ_URL, for KEDA's management API reads
    rabbitmq_ca_secret: str = ""  # a Secret with keys `tls` ("enable") and `ca` (PEM) for KEDA

    def local_gateway(self) -> tuple[str, str, int]:
        """Knative's local gateway Service as (namespace, name, port)."""
        where, _, port = self.knative_local_gateway.partition(":")
        namespace, _, name = where.partition("/")
        if not (namespace and name and (port or "80").isdigit()):
            raise RenderError(f"--knative-local-gateway {self.knative_local_gateway!r}: expected NAMESPACE/NAME[:PORT]")
        return namespace, name, int(port or 80)

    def ingress_namespace(self) -> str:
        return self.knative_ingress_namespace or self.local_gateway()[0]


# -- shared pieces ---------------------------------------------------------------


def secret_key(secret: Secret) -> str:
    """The key of a setting's platform Secret, and the file OpenFaaS mounts it as: `mongo-uri`,
    or the file name of a file secret (lanes.settings.secret_files reads `mongo-uri` back)."""
    return secret.file or secret.name.lower().replace("_", "-")


def secret_name(secret: Secret, function: Function | None = None) -> str:
    """The platform Secret holding one setting for one function: `enqueue-mongo-uri` for a
    per-function secret, else its key (`jwt-public.pem`)."""
    if secret.per_function:
        if function is None:
            raise RenderError(f"{secret.name} is one Secret per function: name the function")
        return f"{function.name}-{secret_key(secret)}"
    return secret_key(secret)


def keda_secret(template: Template) -> tuple[str, str]:
    """The Secret (name, key) KEDA's trigger reads the management API URL from: the worker's,
    a monitoring-only broker user (the worker's own pods do not get it)."""
    management = template.secret(MANAGEMENT_SECRET)
    return secret_name(management, template.worker), secret_key(management)


def pod_secrets(template: Template, function: Function) -> list[Secret]:
    """The secrets a function's pods get: the worker's management URL is its scaler's, not its own."""
    secrets = [template.secret(name) for name in function.secrets]
    if function.trigger == "rabbitmq":
        secrets = [s for s in secrets if s.name != MANAGEMENT_SECRET]
    return secrets


def labels(template: Template, function: Function) -> dict[str, str]:
    return {"app.kubernetes.io/name": function.name, "app.kubernetes.io/part-of": template.name}


def part_of(template: Template) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": template.name}


def metadata(template: Template, name: str, namespace: str, function: Function | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    meta["labels"] = labels(template, function) if function else part_of(template)
    return meta


def image(function: Function, options: Options) -> str:
    """The function's image in the registry the render was asked for, with its tag."""
    if not options.registry.strip("/"):
        # `lanes/enqueue` alone would be docker.io/lanes/enqueue: a namespace Lanes does not own.
        raise RenderError("a registry is required (--registry, e.g. ghcr.io/acme): Lanes publishes no images")
    repository, _, tag = function.image.rpartition(":")
    if "/" in tag or not repository:  # no tag, only a registry port
        repository, tag = function.image, "latest"
    return f"{options.registry.rstrip('/')}/{repository}:{options.tag or tag}"


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


# Who each function's own broker and database users are, for the placeholders.
PLACEHOLDERS = {
    "MONGO_URI": "mongodb://lanes-{function}:<password>@<mongodb-hosts>/lanes?replicaSet=<set>",
    "RABBITMQ_URL": "amqps://lanes-{function}:<password>@<rabbitmq-host>:5671/%2F",
    MANAGEMENT_SECRET: "https://lanes-{function}:<password>@<rabbitmq-host>:15671 (no path)",
}


def example_secrets(template: Template, namespace: str, options: Options) -> list[Manifest]:
    """Secrets with placeholder values, to show their shape; never applied as they are.
    One per function for a per-function secret: each function its own credentials."""
    found: dict[str, tuple[Secret, Function | None]] = {}
    for function in template.functions:
        for secret in pod_secrets(template, function):
            found.setdefault(secret_name(secret, function), (secret, function))
    manifests = []
    for name, (secret, function) in sorted(found.items()):
        value = PLACEHOLDERS.get(secret.name, f"<{secret.name}{' file content' if secret.file else ''}>")
        manifests.append(example_secret(template, namespace, name, {secret_key(secret): value}, function))
    name, key = keda_secret(template)
    value = PLACEHOLDERS[MANAGEMENT_SECRET].format(function="keda")
    manifests.append(example_secret(template, namespace, name, {key: value}, template.worker))
    if options.rabbitmq_ca_secret:
        tls = {"tls": "enable", "ca": "<PEM of the CA that signed the broker's certificate>"}
        manifests.append(example_secret(template, namespace, options.rabbitmq_ca_secret, tls))
    return manifests


def example_secret(
    template: Template, namespace: str, name: str, data: dict[str, str], function: Function | None = None
) -> Manifest:
    who = function.name if function else template.name
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(template, name, namespace, function),
        "type": "Opaque",
        "stringData": {key: value.replace("{function}", who) for key, value in data.items()},
    }


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
    for secret in pod_secrets(template, function):
        if secret.file:
            env.append({"name": secret.name, "value": f"{SECRET_FILES}/{secret.file}"})
            files.append(secret)
        else:
            ref = {"name": secret_name(secret, function), "key": secret_key(secret), "optional": secret.optional}
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
            {"secret": {"name": secret_name(s, function), "items": [{"key": secret_key(s), "path": s.file}]}}
            for s in files
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


@dataclass(frozen=True)
class Allow:
    """One ingress rule: pods of the `sources` namespaces may reach `ports` (TCP)."""

    sources: tuple[str, ...]
    ports: tuple[int, ...]


def pod_selector(functions: Iterable[Function]) -> dict[str, Any]:
    names = sorted(f.name for f in functions)
    return {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": names}]}


def network_policy(
    template: Template, name: str, namespace: str, functions: Iterable[Function], rules: list[Allow]
) -> Manifest:
    """Admit to `functions`' pods only what `rules` allow: namespaces, each to its ports."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(template, name, namespace),
        "spec": {
            "podSelector": pod_selector(functions),
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
                                        "values": sorted(set(rule.sources)),
                                    }
                                ]
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": port} for port in rule.ports],
                }
                for rule in rules
            ],
        },
    }


def egress_ports(template: Template, function: Function) -> list[int]:
    """The ports a function's pods connect to: those of the services its secrets name."""
    names = {s.name for s in pod_secrets(template, function)}
    return sorted(port for name, ports in EGRESS_PORTS.items() if name in names for port in ports)


def egress_policy(template: Template, function: Function, namespace: str) -> Manifest:
    """A function's pods may resolve names and reach its database and broker, nothing else:
    not the Kubernetes API, not other pods' ports, not the internet at large. The services may
    live inside the cluster or outside it, so the rule names ports, not addresses."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(template, f"{template.name}-{function.name}-egress", namespace, function),
        "spec": {
            "podSelector": pod_selector([function]),
            "policyTypes": ["Egress"],
            "egress": [
                {"ports": [{"protocol": protocol, "port": port} for port, protocol in DNS_PORTS]},
                {"ports": [{"protocol": "TCP", "port": port} for port in egress_ports(template, function)]},
            ],
        },
    }


def namespace_manifest(template: Template, name: str, level: str) -> Manifest:
    """The namespace, labelled with the Pod Security Standard it enforces (and audits and warns of)."""
    labels = {**part_of(template)}
    for mode, standard in POD_SECURITY[level].items():
        labels[f"pod-security.kubernetes.io/{mode}"] = standard
        labels[f"pod-security.kubernetes.io/{mode}-version"] = "latest"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def disruption_budget(template: Template, function: Function, namespace: str) -> Manifest:
    """A node drain takes one pod of a function at a time (a one-replica function still drains)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(template, function.name, namespace, function),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(template, function)}},
    }


def monitoring_manifests(template: Template, namespace: str, options: Options, http_port: str) -> dict[str, Any]:
    """monitoring/: PodMonitors for the functions (their port named `http_port` on this
    platform) and the worker, the alerts, the dashboards. `--monitoring-labels` go on the
    PodMonitors and the PrometheusRule, for a Prometheus that selects by label."""
    selected = {**part_of(template), **options.monitoring_labels}
    http = [f.name for f in template.http_functions]
    return {
        "monitoring/podmonitor-functions.yaml": monitoring.pod_monitor(
            f"{template.name}-functions", namespace, selected, http, http_port
        ),
        "monitoring/podmonitor-worker.yaml": monitoring.pod_monitor(
            f"{template.name}-worker", namespace, selected, [template.worker.name], WORKER_PORT_NAME
        ),
        "monitoring/prometheusrule.yaml": monitoring.prometheus_rule(f"{template.name}-alerts", namespace, selected),
        "monitoring/dashboards.yaml": monitoring.dashboard_config_maps(template.name, namespace, part_of(template)),
    }


# -- the worker: Deployment + KEDA, the same on every platform ----------------------


def worker_manifests(template: Template, namespace: str, options: Options) -> dict[str, Manifest]:
    worker = template.worker
    container, volumes = pod_parts(template, worker, options)
    container["command"] = list(worker.command)
    container["env"].append({"name": "METRICS_PORT", "value": str(WORKER_METRICS_PORT)})
    container["ports"] = [{"name": WORKER_PORT_NAME, "containerPort": WORKER_METRICS_PORT}]
    # The worker has no HTTP server of its own: its metrics server answering is its sign of life.
    container["livenessProbe"] = {
        "httpGet": {"path": "/metrics", "port": WORKER_PORT_NAME},
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
    trigger_auth = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": metadata(template, f"{worker.name}-rabbitmq", namespace, worker),
        "spec": {"secretTargetRef": trigger_auth_refs(template, options)},
    }
    return {
        "worker-deployment.yaml": deployment,
        "worker-scaledobject.yaml": scaled_object,
        "worker-triggerauthentication.yaml": trigger_auth,
    }


def trigger_auth_refs(template: Template, options: Options) -> list[dict[str, str]]:
    """KEDA's rabbitmq scaler parameters from Secrets: `host`, the management API URL of a
    monitoring-only user; with --rabbitmq-ca-secret, `tls` ("enable") and `ca` too, for a
    broker whose certificate a private CA signed (kedacore/keda pkg/scalers/rabbitmq_scaler.go
    reads `tls`, `ca`, `cert`, `key` from the TriggerAuthentication and applies them to the
    management API's HTTP client as well)."""
    name, key = keda_secret(template)
    refs = [{"parameter": "host", "name": name, "key": key}]
    if options.rabbitmq_ca_secret:
        refs += [{"parameter": p, "name": options.rabbitmq_ca_secret, "key": p} for p in ("tls", "ca")]
    return refs


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


def server_env(function: Function) -> dict[str, str]:
    """gunicorn's settings (lanes.gunicorn_conf) that give an HTTP function the slots the
    template's `server` says: the number Knative's containerConcurrency and OpenFaaS's target
    are set to, so that neither sends a replica more requests than it can serve at once."""
    server = function.server
    if server is None:
        return {}
    env = {"WORKER_CLASS": server.worker_class, "WEB_CONCURRENCY": str(server.processes)}
    if server.worker_class == "gthread":
        env["THREADS"] = str(server.per_process)
    return env


def slots(function: Function) -> int:
    if function.server is None:
        raise RenderError(f"{function.name}: an http function needs a server")
    return function.server.slots


def knative_service(template: Template, function: Function, options: Options) -> Manifest:
    container, volumes = pod_parts(template, function, options)
    container["env"] += [{"name": key, "value": value} for key, value in server_env(function).items()]
    container["ports"] = [{"name": "http1", "containerPort": HTTP_PORT}]
    knative_probes(container)
    scale = function.scale
    annotations = {
        # The KPA's target is containerConcurrency x its target utilization (70 % unless
        # the cluster's config-autoscaler says otherwise): a replica is added before the
        # slots are full, and the queue-proxy never lets more requests in than there are slots.
        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
        "autoscaling.knative.dev/metric": "concurrency",
        "autoscaling.knative.dev/min-scale": str(scale.get("min", 0)),
        "autoscaling.knative.dev/max-scale": str(scale.get("max", 1)),
        **monitoring.scrape_annotations(HTTP_PORT),
        **config_checksum(template, function),
    }
    spec: dict[str, Any] = {
        **pod_identity(template),
        "containerConcurrency": slots(function),
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
    """One base URL: each public path to Knative's local gateway, with the host name of the
    function's Knative Service, which the local gateway routes by.

    Not the Service Knative makes per Knative Service: that one is an ExternalName of the
    local gateway, and the Gateway API says implementations should not follow ExternalName
    backends (Envoy Gateway refuses them). The local gateway's own ClusterIP Service lives in
    another namespace, so a ReferenceGrant there lets this route name it.
    """
    gateway_namespace, gateway_service, port = options.local_gateway()
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
                "backendRefs": [{"name": gateway_service, "namespace": gateway_namespace, "port": port}],
            }
        )
    return http_route(template, template.namespace, rules, options)


def knative_reference_grant(template: Template, options: Options) -> Manifest:
    """Lets the route in the functions' namespace name the local gateway's Service."""
    gateway_namespace, gateway_service, _ = options.local_gateway()
    return {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": metadata(template, f"{template.name}-{template.namespace}-routes", gateway_namespace),
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": template.namespace}],
            "to": [{"group": "", "kind": "Service", "name": gateway_service}],
        },
    }


# The ports Knative reaches a revision's pods on, from knative/serving
# pkg/networking/constants.go: the queue-proxy serves requests on BackendHTTPPort (8012),
# BackendHTTP2Port (8013, h2c) and BackendHTTPSPort (8112, with system-internal-tls), to the
# activator and to the ingress; the autoscaler scrapes AutoscalingQueueMetricsPort (9090).
# Only the queue-proxy, over the pod's loopback, reaches the user container's 8080.
KNATIVE_QUEUE_PORTS = (8012, 8013, 8112)
KNATIVE_AUTOSCALING_METRICS_PORT = 9090
KNATIVE_SYSTEM_NAMESPACE = "knative-serving"


def knative_network_policies(template: Template, options: Options) -> list[Manifest]:
    namespace = template.namespace
    functions = network_policy(
        template,
        f"{template.name}-functions",
        namespace,
        template.http_functions,
        [
            # Requests: from the activator (knative-serving) or straight from the ingress.
            Allow((KNATIVE_SYSTEM_NAMESPACE, options.ingress_namespace()), KNATIVE_QUEUE_PORTS),
            # The autoscaler's scrape of the queue-proxy.
            Allow((KNATIVE_SYSTEM_NAMESPACE,), (KNATIVE_AUTOSCALING_METRICS_PORT,)),
            # Prometheus scrapes each function's own /metrics.
            Allow((options.monitoring_namespace,), (HTTP_PORT,)),
        ],
    )
    return [
        functions,
        worker_network_policy(template, namespace, options),
        *(egress_policy(template, f, namespace) for f in template.functions),
    ]


def render_knative(template: Template, options: Options) -> dict[str, Any]:
    """File name -> manifest (or list of manifests); `kubectl apply -k` the folder, then monitoring/."""
    namespace = template.namespace
    files: dict[str, Any] = {
        "00-namespace.yaml": namespace_manifest(template, namespace, "restricted"),
        "configmap.yaml": config_map(template, namespace),
        "secrets.yaml.example": example_secrets(template, namespace, options),
        "serviceaccount.yaml": service_account(template, namespace),
        "httproute.yaml": knative_route(template, options),
        "referencegrant.yaml": knative_reference_grant(template, options),
        "networkpolicy.yaml": knative_network_policies(template, options),
        "poddisruptionbudget.yaml": [disruption_budget(template, f, namespace) for f in template.functions],
    }
    for function in template.http_functions:
        files[f"service-{function.name}.yaml"] = knative_service(template, function, options)
    files.update(worker_manifests(template, namespace, options))
    files.update(monitoring_manifests(template, namespace, options, KNATIVE_USER_PORT_NAME))
    return with_kustomizations(files, {"": [], "monitoring": []})


def worker_network_policy(template: Template, namespace: str, options: Options) -> Manifest:
    """Nothing calls the worker: only Prometheus reaches its metrics port."""
    return network_policy(
        template,
        f"{template.name}-worker",
        namespace,
        [template.worker],
        [Allow((options.monitoring_namespace,), (WORKER_METRICS_PORT,))],
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
    # Standard's autoscaler: in-flight requests per replica, at most the slots gunicorn has
    # (it adds a replica at 90 % of the target, its default target-proportion).
    found["com.openfaas.scale.type"] = "capacity"
    found["com.openfaas.scale.target"] = str(slots(function))
    if wanted_min == 0:
        found["com.openfaas.scale.zero"] = "true"
    return found


def openfaas_function(template: Template, function: Function, options: Options) -> dict[str, Any]:
    """One function's fields as stack.yml and the Function resource share them."""
    environment = {
        **PLATFORM_ENV,
        **template.env_of(function),
        **server_env(function),
        "SECRETS_DIR": OPENFAAS_SECRETS,
    }
    secrets = []
    for secret in pod_secrets(template, function):
        if secret.optional:
            continue  # OpenFaaS refuses to deploy a function whose secret is missing
        # faas-netes mounts each key of each Secret as a file named like the key, under
        # /var/openfaas/secrets (pkg/k8s/secrets.go, ConfigureSecrets): `enqueue-mongo-uri`
        # holds the key `mongo-uri`, which SECRETS_DIR reads as MONGO_URI.
        secrets.append(secret_name(secret, function))
        if secret.file:
            environment[secret.name] = f"{OPENFAAS_SECRETS}/{secret_key(secret)}"
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
    "# CE deploys only images that pull anonymously: the registry must serve them publicly.\n"
)
CE_PUBLIC_WARNING = (
    "warning: OpenFaaS Community Edition deploys only images anyone can pull (faas-netes checks\n"
    "that each image pulls anonymously); make {registry}'s Lanes images public, or pass\n"
    "--public-images once they are. Registries such as ghcr.io make new images private.\n"
)


def render_openfaas(template: Template, options: Options) -> dict[str, Any]:
    files: dict[str, Any] = {}
    folders: dict[str, list[str]] = {"worker": [], "routing": [], "monitoring": []}
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
        root = ["worker", "routing"]  # the functions come from stack.yml, through faas-cli
    else:
        for function in template.http_functions:
            fields = openfaas_function(template, function, options)
            files[f"functions/function-{function.name}.yaml"] = {
                "apiVersion": "openfaas.com/v1",
                "kind": "Function",
                "metadata": metadata(template, function.name, OPENFAAS_NAMESPACE, function),
                "spec": {"name": function.name, **fields, "readOnlyRootFilesystem": True},
            }
        folders["functions"] = []
        root = ["functions", "worker", "routing"]
    files["routing/httproute.yaml"] = openfaas_route(template, options)
    # A RabbitMQ connector (OpenFaaS Standard has one) pushes each message to a function
    # over HTTP as it arrives, so it cannot run a lane's requests one at a time in order:
    # the worker is a plain Deployment that KEDA scales, exactly as on Knative.
    worker = {
        # openfaas-fn is the OpenFaaS chart's; these labels join the ones it has.
        "00-namespace.yaml": namespace_manifest(template, OPENFAAS_NAMESPACE, "baseline"),
        "configmap.yaml": config_map(template, OPENFAAS_NAMESPACE),
        "secrets.yaml.example": example_secrets(template, OPENFAAS_NAMESPACE, options),
        "serviceaccount.yaml": service_account(template, OPENFAAS_NAMESPACE),
        "networkpolicy.yaml": [
            # The gateway (namespace openfaas) calls the functions; Prometheus scrapes them.
            network_policy(
                template,
                f"{template.name}-functions",
                OPENFAAS_NAMESPACE,
                template.http_functions,
                [Allow((OPENFAAS_GATEWAY_NAMESPACE, options.monitoring_namespace), (HTTP_PORT,))],
            ),
            worker_network_policy(template, OPENFAAS_NAMESPACE, options),
            *(egress_policy(template, f, OPENFAAS_NAMESPACE) for f in template.functions),
        ],
        "poddisruptionbudget.yaml": [disruption_budget(template, f, OPENFAAS_NAMESPACE) for f in template.functions],
        **worker_manifests(template, OPENFAAS_NAMESPACE, options),
    }
    files.update({f"worker/{name}": manifest for name, manifest in worker.items()})
    files.update(monitoring_manifests(template, OPENFAAS_NAMESPACE, options, OPENFAAS_PORT_NAME))
    return with_kustomizations(files, {"": root, **folders})


# -- kustomize -----------------------------------------------------------------------


def with_kustomizations(files: dict[str, Any], folders: dict[str, list[str]]) -> dict[str, Any]:
    """A kustomization.yaml in each folder ("" is the top), listing its object files (never
    the `.example` secrets) and the given sub-folders, so that `kubectl apply -k` and
    overlays work. monitoring/ stays out of the top one: it needs the Prometheus Operator."""
    for folder, subfolders in folders.items():
        prefix = f"{folder}/" if folder else ""
        own = sorted(
            name.removeprefix(prefix)
            for name in files
            if name.startswith(prefix) and "/" not in name.removeprefix(prefix) and name.endswith(".yaml")
        )
        files[f"{prefix}kustomization.yaml"] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [*own, *subfolders],
        }
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


def label_pairs(text: str) -> dict[str, str]:
    """`release=kube-prometheus-stack,team=lanes` -> a label map."""
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=VALUE")
        pairs[key] = value
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("platform", choices=PLATFORMS)
    parser.add_argument("--out", type=Path, required=True, help="folder to write into (created if missing)")
    parser.add_argument(
        "--registry", required=True, help="registry and path the images were pushed to, e.g. ghcr.io/acme"
    )
    parser.add_argument("--template", type=Path, default=None, help="template.yaml to read (default: the repository's)")
    parser.add_argument("--openfaas-edition", choices=EDITIONS, default="standard", help="OpenFaaS CE or Standard")
    parser.add_argument("--tag", default="", help="tag of every image (default: the template's)")
    parser.add_argument(
        "--public-images", action="store_true", help="the registry serves the images anonymously (OpenFaaS CE)"
    )
    parser.add_argument("--gateway", default="lanes", help="the Gateway the HTTPRoute attaches to")
    parser.add_argument("--gateway-namespace", default="", help="its namespace (default: the route's)")
    parser.add_argument("--hostname", default="", help="the public host name of the base URL")
    parser.add_argument(
        "--knative-local-gateway",
        default=Options.knative_local_gateway,
        help="NAMESPACE/NAME[:PORT] of Knative's cluster-local gateway Service, the route's backend "
        "(Kourier: kourier-system/kourier-internal; Istio: istio-system/knative-local-gateway)",
    )
    parser.add_argument(
        "--knative-ingress-namespace", default="", help="Knative's ingress pods (default: the local gateway's)"
    )
    parser.add_argument("--monitoring-namespace", default="monitoring", help="where Prometheus runs")
    parser.add_argument(
        "--monitoring-labels",
        type=label_pairs,
        default={},
        help="labels for the PodMonitors and PrometheusRule, e.g. release=kube-prometheus-stack",
    )
    parser.add_argument("--rabbitmq-vhost", default="/", help="RABBITMQ_URL's vhost, for KEDA")
    parser.add_argument(
        "--rabbitmq-ca-secret", default="", help="Secret with keys tls=enable and ca=<PEM> for KEDA's broker reads"
    )
    args = parser.parse_args(argv)
    template = load(args.template) if args.template else load()
    options = Options(
        registry=args.registry,
        edition=args.openfaas_edition,
        tag=args.tag,
        public_images=args.public_images,
        gateway=args.gateway,
        gateway_namespace=args.gateway_namespace,
        hostname=args.hostname,
        knative_local_gateway=args.knative_local_gateway,
        knative_ingress_namespace=args.knative_ingress_namespace,
        monitoring_namespace=args.monitoring_namespace,
        monitoring_labels=args.monitoring_labels,
        rabbitmq_vhost=args.rabbitmq_vhost,
        rabbitmq_ca_secret=args.rabbitmq_ca_secret,
    )
    try:
        files = RENDERERS[args.platform](template, options)
    except RenderError as error:
        parser.error(str(error))
    if args.platform == "openfaas" and options.edition == "ce" and not options.public_images:
        sys.stderr.write(CE_PUBLIC_WARNING.format(registry=options.registry))
    for path in write(files, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
