"""Render template.yaml into manifests for Knative (+ KEDA) or OpenFaaS (+ KEDA).

    python -m deploy.render knative --out DIR   # DIR/*.yaml: kubectl apply -f DIR
    python -m deploy.render openfaas --out DIR  # DIR/stack.yml, DIR/functions/, DIR/worker/

HTTP functions become Knative Services (scale to zero, soft concurrency target,
/healthz and /readyz probes) or OpenFaaS functions. The worker is on both platforms
a Deployment that KEDA scales 0..max with a `rabbitmq` trigger on the one ready
queue, whose length (ready + unacknowledged tokens) is the number of busy lanes.
A regex over the per-user lane queues would not do: KEDA sums regex matches from
the management API one page at a time and fails past a single page, which a few
hundred users exceed.

Secrets are never rendered with values: `*.yaml.example` files show their shape
(kubectl skips them when applying a folder); create the real ones as the README's
"Deploy" section says. Each secret is a Secret of its own with one key named like
it, as `faas-cli secret create` makes them, so both platforms share them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from deploy.template import Function, Secret, Template, load

PLATFORMS = ("knative", "openfaas")
OPENFAAS_NAMESPACE = "openfaas-fn"
OPENFAAS_SECRETS = "/var/openfaas/secrets"
SECRET_FILES = "/var/run/lanes/secrets"
HEADER = "# Rendered from template.yaml by `python -m deploy.render`; edit the template, not this file.\n"
Manifest = dict[str, Any]
# Settings every rendered function gets unless template.yaml sets them. The proxies in
# front of a function all live in the cluster: on Knative the queue-proxy (127.0.0.1, in
# the pod), the activator and the ingress; on OpenFaaS the gateway and the ingress. Their
# pod ranges are private ones; narrow these to the cluster's (README, "Security").
# The `fail` test action is off: anyone with an account could fill the dead letters.
PLATFORM_ENV = {
    "TRUSTED_PROXIES": "127.0.0.1/32,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7",
    "ENABLE_FAIL_ACTION": "false",
}


# -- shared pieces ---------------------------------------------------------------


def secret_name(secret: Secret) -> str:
    """The platform secret holding one setting: `mongo-uri`, or the file name for a file secret."""
    return secret.file or secret.name.lower().replace("_", "-")


def labels(template: Template, function: Function) -> dict[str, str]:
    return {"app.kubernetes.io/name": function.name, "app.kubernetes.io/part-of": template.name}


def metadata(template: Template, name: str, namespace: str, function: Function | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    meta["labels"] = labels(template, function) if function else {"app.kubernetes.io/part-of": template.name}
    return meta


def config_map(template: Template, namespace: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(template, f"{template.name}-config", namespace),
        "data": {**PLATFORM_ENV, **template.env},
    }


def example_secrets(template: Template, namespace: str, keda: bool = True) -> list[Manifest]:
    """Secrets with placeholder values, to show their shape; never applied as they are."""
    secrets = [(secret_name(s), f"<{s.name}{' file content' if s.file else ''}>") for s in template.secrets]
    if keda:
        url = "http://<user>:<password>@<rabbitmq-host>:15672/<vhost, %2F for />"
        secrets.append((keda_secret_name(template), url))
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata(template, name, namespace),
            "type": "Opaque",
            "stringData": {name: value},
        }
        for name, value in secrets
    ]


def keda_secret_name(template: Template) -> str:
    return f"{template.name}-rabbitmq-management"


def resources(function: Function) -> dict[str, dict[str, str]]:
    return {kind: dict(values) for kind, values in function.resources.items()}


def container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
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


def pod_parts(template: Template, function: Function) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The container fields every platform's pod shares, and the volumes they mount."""
    env, files = secret_env(template, function)
    env += [{"name": key, "value": value} for key, value in function.env.items()]
    container: dict[str, Any] = {
        "name": function.name,
        "image": function.image,
        "env": env,
        "envFrom": [{"configMapRef": {"name": f"{template.name}-config"}}],
        "resources": resources(function),
        "securityContext": container_security(),
    }
    volumes = []
    if files:
        container["volumeMounts"] = [{"name": "secret-files", "mountPath": SECRET_FILES, "readOnly": True}]
        sources = [
            {"secret": {"name": secret_name(s), "items": [{"key": secret_name(s), "path": s.file}]}} for s in files
        ]
        volumes.append({"name": "secret-files", "projected": {"sources": sources}})
    return container, volumes


# -- the worker: Deployment + KEDA, the same on both platforms --------------------


def worker_manifests(template: Template, namespace: str) -> dict[str, Manifest]:
    worker = template.worker
    container, volumes = pod_parts(template, worker)
    container["command"] = list(worker.command)
    pod: dict[str, Any] = {
        # SIGTERM lets a worker finish its current request (REQUEST_TIMEOUT_SECONDS at most).
        "terminationGracePeriodSeconds": worker.shutdown_seconds,
        "containers": [container],
    }
    if volumes:
        pod["volumes"] = volumes
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(template, worker.name, namespace, worker),
        # No `replicas`: KEDA owns the count, and re-applying must not reset it.
        "spec": {
            "selector": {"matchLabels": labels(template, worker)},
            "template": {"metadata": {"labels": labels(template, worker)}, "spec": pod},
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
                    "metadata": rabbitmq_trigger(worker),
                    "authenticationRef": {"name": f"{worker.name}-rabbitmq"},
                }
            ],
        },
    }
    trigger_auth = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": metadata(template, f"{worker.name}-rabbitmq", namespace, worker),
        "spec": {
            "secretTargetRef": [
                {"parameter": "host", "name": keda_secret_name(template), "key": keda_secret_name(template)}
            ]
        },
    }
    return {
        "worker-deployment.yaml": deployment,
        "worker-scaledobject.yaml": scaled_object,
        "worker-triggerauthentication.yaml": trigger_auth,
    }


def rabbitmq_trigger(worker: Function) -> dict[str, str]:
    """KEDA's rabbitmq scaler on the ready queue: replicas = ceil(busy lanes / target)."""
    return {
        # http: the management API counts unacknowledged tokens (lanes being run);
        # over amqp KEDA would see only waiting lanes and stop workers mid-turn.
        "protocol": "http",
        "mode": "QueueLength",
        "value": str(worker.scale.get("target", 1)),
        "activationValue": "0",  # any waiting lane wakes the worker from zero
        "queueName": worker.queue,
    }


# -- Knative -----------------------------------------------------------------------


def knative_service(template: Template, function: Function) -> Manifest:
    container, volumes = pod_parts(template, function)
    container["ports"] = [{"name": "http1", "containerPort": 8080}]
    container["readinessProbe"] = {"httpGet": {"path": "/readyz"}, "periodSeconds": 5, "failureThreshold": 3}
    container["livenessProbe"] = {"httpGet": {"path": "/healthz"}, "periodSeconds": 10, "failureThreshold": 3}
    scale = function.scale
    annotations = {
        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
        "autoscaling.knative.dev/metric": "concurrency",
        "autoscaling.knative.dev/target": str(scale.get("concurrency", 100)),
        "autoscaling.knative.dev/min-scale": str(scale.get("min", 0)),
        "autoscaling.knative.dev/max-scale": str(scale.get("max", 1)),
    }
    spec: dict[str, Any] = {"timeoutSeconds": 60, "containers": [container]}
    if volumes:
        spec["volumes"] = volumes
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": metadata(template, function.name, template.namespace, function),
        "spec": {
            "template": {
                "metadata": {"labels": labels(template, function), "annotations": annotations},
                "spec": spec,
            }
        },
    }


def render_knative(template: Template) -> dict[str, Any]:
    """File name -> manifest (or list of manifests), for `kubectl apply -f DIR`."""
    namespace = template.namespace
    files: dict[str, Any] = {
        "00-namespace.yaml": {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": template.name}},
        },
        "configmap.yaml": config_map(template, namespace),
        "secrets.yaml.example": example_secrets(template, namespace),
    }
    for function in template.http_functions:
        files[f"service-{function.name}.yaml"] = knative_service(template, function)
    files.update(worker_manifests(template, namespace))
    return files


# -- OpenFaaS ----------------------------------------------------------------------


def openfaas_function(template: Template, function: Function) -> dict[str, Any]:
    """One function's fields as stack.yml and the Function resource share them."""
    environment = {**PLATFORM_ENV, **template.env_of(function), "SECRETS_DIR": OPENFAAS_SECRETS}
    secrets = []
    for secret in (template.secret(name) for name in function.secrets):
        if secret.optional:
            continue  # OpenFaaS refuses to deploy a function whose secret is missing
        secrets.append(secret_name(secret))
        if secret.file:
            environment[secret.name] = f"{OPENFAAS_SECRETS}/{secret_name(secret)}"
    scale = function.scale
    return {
        "image": function.image,
        "environment": environment,
        "secrets": secrets,
        "labels": {
            **labels(template, function),
            # Community Edition refuses scale to zero: at least one replica stays up.
            "com.openfaas.scale.min": str(max(1, scale.get("min", 1))),
            "com.openfaas.scale.max": str(scale.get("max", 1)),
            # Honoured by the autoscaler of OpenFaaS Standard; CE ignores them.
            "com.openfaas.scale.type": "capacity",
            "com.openfaas.scale.target": str(scale.get("concurrency", 100)),
        },
        "annotations": {
            # Honoured by OpenFaaS Standard; CE probes /_/health, which every function answers.
            "com.openfaas.health.http.path": "/healthz",
            "com.openfaas.ready.http.path": "/readyz",
        },
        **{kind: dict(values) for kind, values in function.resources.items()},
    }


def render_openfaas(template: Template) -> dict[str, Any]:
    stack: dict[str, Any] = {
        "version": 1.0,
        "provider": {"name": "openfaas", "gateway": "http://127.0.0.1:8080"},
        "functions": {},
    }
    files: dict[str, Any] = {"stack.yml": stack}
    for function in template.http_functions:
        fields = openfaas_function(template, function)
        # Images are built from the repository root (README, "Deploy"), not by faas-cli.
        stack["functions"][function.name] = {"image": fields["image"], "skip_build": True, **fields}
        files[f"functions/function-{function.name}.yaml"] = {
            "apiVersion": "openfaas.com/v1",
            "kind": "Function",
            "metadata": metadata(template, function.name, OPENFAAS_NAMESPACE, function),
            "spec": {"name": function.name, **fields},
        }
    # OpenFaaS CE has no free RabbitMQ connector: the worker is a plain Deployment
    # that KEDA scales, exactly as on Knative, beside the functions.
    files["worker/configmap.yaml"] = config_map(template, OPENFAAS_NAMESPACE)
    files["worker/secrets.yaml.example"] = example_secrets(template, OPENFAAS_NAMESPACE)
    for name, manifest in worker_manifests(template, OPENFAAS_NAMESPACE).items():
        files[f"worker/{name}"] = manifest
    return files


RENDERERS = {"knative": render_knative, "openfaas": render_openfaas}


def write(files: dict[str, Any], out: Path) -> list[Path]:
    written = []
    for name, content in sorted(files.items()):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        documents: Iterable[Any] = content if isinstance(content, list) else [content]
        path.write_text(HEADER + yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("platform", choices=PLATFORMS)
    parser.add_argument("--out", type=Path, required=True, help="folder to write into (created if missing)")
    parser.add_argument("--template", type=Path, default=None, help="template.yaml to read (default: the repository's)")
    args = parser.parse_args(argv)
    template = load(args.template) if args.template else load()
    for path in write(RENDERERS[args.platform](template), args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
