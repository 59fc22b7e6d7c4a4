"""Validate rendered manifests offline, as kubeconform -strict would.

    python -m deploy.validate DIR...   # prints each problem; exit 1 if any

Core kinds (Namespace, ConfigMap, Secret, Deployment) are checked by
`kubernetes-validate` against the Kubernetes OpenAPI schemas it ships; Knative
Service, KEDA ScaledObject/TriggerAuthentication and the OpenFaaS Function by the
CRD schemas in deploy/schemas/ (see its README for their source). Like
kubeconform's -strict, a field the schema does not know is an error: a typo in a
CRD is otherwise pruned silently by the API server. KEDA's trigger metadata is a
free-form map in its CRD, so the rabbitmq trigger is checked against the keys and
values KEDA documents for its RabbitMQ scaler.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUSTOMIZATION = "kustomization.yaml"
CORE_GROUPS = ("v1", "apps/v1", "policy/v1", "networking.k8s.io/v1")

# KEDA's RabbitMQ scaler (keda.sh/docs/2.20/scalers/rabbitmq-queue): every metadata key
# and the values of the enumerated ones. `queueLength` is deprecated upstream.
KEDA_RABBITMQ_KEYS = {
    "host",
    "hostFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "protocol",
    "mode",
    "value",
    "activationValue",
    "queueName",
    "vhostName",
    "useRegex",
    "pageSize",
    "operation",
    "timeout",
    "excludeUnacknowledged",
    "unsafeSsl",
}
KEDA_RABBITMQ_VALUES = {
    "protocol": {"auto", "http", "amqp"},
    "mode": {
        "QueueLength",
        "MessageRate",
        "DeliverGetRate",
        "PublishedToDeliveredRatio",
        "ExpectedQueueConsumptionTime",
    },
    "useRegex": {"true", "false"},
    "operation": {"sum", "max", "avg"},
    "excludeUnacknowledged": {"true", "false"},
    "unsafeSsl": {"true", "false"},
}
# The rabbitmq scaler's parameters that a TriggerAuthentication may set (`order=...authParams`
# in kedacore/keda pkg/scalers/rabbitmq_scaler.go, rabbitMQMetadata, v2.20).
KEDA_RABBITMQ_AUTH_PARAMETERS = {
    "host",
    "protocol",
    "vhostName",
    "username",
    "password",
    "tls",
    "ca",
    "cert",
    "key",
    "keyPassword",
    "workloadIdentityResource",
}


def documents(path: Path) -> Iterator[dict[str, Any]]:
    for document in yaml.safe_load_all(path.read_text()):
        if document is not None:
            yield document


def manifest_files(folder: Path) -> list[Path]:
    """Every Kubernetes object file under folder, including the `.yaml.example` secrets
    (not the kustomization.yaml files, which kustomize reads, not the API server)."""
    found = [*folder.rglob("*.yaml"), *folder.rglob("*.yaml.example")]
    return sorted(p for p in found if p.name not in ("stack.yml", KUSTOMIZATION))


def kustomization_problems(folder: Path) -> list[str]:
    """Each folder's kustomization.yaml lists exactly its object files and sub-folders that
    have one, and never an `.example` secret (kustomize fails on a missing resource)."""
    problems = []
    for path in sorted(folder.rglob(KUSTOMIZATION)):
        here = path.parent
        listed = yaml.safe_load(path.read_text()).get("resources", [])
        own = {p.name for p in here.glob("*.yaml") if p.name != KUSTOMIZATION}
        missing = sorted(own - set(listed))
        problems += [f"{path}: {name} is not listed" for name in missing]
        for name in listed:
            target = here / name
            if not (target.is_file() and name in own) and not (target / KUSTOMIZATION).is_file():
                problems.append(f"{path}: {name} is neither an object file nor a folder with a kustomization")
    return problems


def validate(manifest: dict[str, Any]) -> list[str]:
    """Problems with one object; an object of a kind without a schema is a problem too."""
    api_version, kind = manifest.get("apiVersion", ""), manifest.get("kind", "")
    if api_version in CORE_GROUPS:
        try:
            kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as error:
            return [f"{kind}: {error.message} at {'.'.join(str(p) for p in error.path)}"]
        return []
    group, _, version = api_version.partition("/")
    schema_path = SCHEMAS / group / f"{kind.lower()}_{version}.json"
    if not schema_path.is_file():
        return [f"no schema for {api_version} {kind}"]
    schema = json.loads(schema_path.read_text())
    problems = [
        f"{kind}: {error.message} at {'.'.join(str(p) for p in error.absolute_path)}"
        for error in jsonschema.Draft7Validator(schema).iter_errors(manifest)
    ]
    problems += [f"{kind}: unknown field {field}" for field in unknown_fields(manifest, schema)]
    if kind == "ScaledObject":
        problems += [f"ScaledObject: {p}" for p in rabbitmq_trigger_problems(manifest)]
    if kind == "TriggerAuthentication":
        for ref in manifest.get("spec", {}).get("secretTargetRef", []):
            if ref.get("parameter") not in KEDA_RABBITMQ_AUTH_PARAMETERS:
                problems.append(f"TriggerAuthentication: {ref.get('parameter')!r} is no RabbitMQ scaler parameter")
    return problems


def unknown_fields(value: Any, schema: dict[str, Any], at: str = "") -> Iterator[str]:
    """Fields the schema does not declare (where it declares its fields at all)."""
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                yield from unknown_fields(item, properties[key], f"{at}.{key}")
            elif isinstance(extra, dict):
                yield from unknown_fields(item, extra, f"{at}.{key}")
            elif properties is not None and extra is None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                yield f"{at}.{key}".lstrip(".")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{at}[{index}]")


def rabbitmq_trigger_problems(scaled_object: dict[str, Any]) -> list[str]:
    problems = []
    for trigger in scaled_object.get("spec", {}).get("triggers", []):
        if trigger.get("type") != "rabbitmq":
            continue
        metadata = trigger.get("metadata", {})
        problems += [f"rabbitmq trigger: unknown key {key!r}" for key in sorted(set(metadata) - KEDA_RABBITMQ_KEYS)]
        for key, allowed in KEDA_RABBITMQ_VALUES.items():
            if key in metadata and metadata[key] not in allowed:
                problems.append(f"rabbitmq trigger: {key}={metadata[key]!r} is not one of {sorted(allowed)}")
        for key in ("value", "activationValue", "pageSize", "timeout"):
            if key in metadata and not _is_number(metadata[key]):
                problems.append(f"rabbitmq trigger: {key}={metadata[key]!r} is not a number")
        if "queueName" not in metadata:
            problems.append("rabbitmq trigger: queueName is required")
        # KEDA: regex queue selection, and the rate modes, need the management API.
        needs_http = metadata.get("useRegex") == "true" or metadata.get("mode", "QueueLength") != "QueueLength"
        if needs_http and metadata.get("protocol") != "http":
            problems.append("rabbitmq trigger: useRegex and rate modes need protocol http")
    return problems


def _is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return isinstance(text, str)  # KEDA's metadata is a map of strings


def main(argv: list[str] | None = None) -> int:
    folders = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    problems = [
        f"{path}: {problem}"
        for folder in folders
        for path in manifest_files(folder)
        for manifest in documents(path)
        for problem in validate(manifest)
    ]
    problems += [problem for folder in folders for problem in kustomization_problems(folder)]
    print("\n".join(problems) or "every manifest is valid")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
