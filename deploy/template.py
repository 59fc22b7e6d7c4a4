"""template.yaml, read and checked: the one description of every function."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lanes.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TRIGGERS = ("http", "rabbitmq")
SCALE_KEYS = {"http": {"min", "max"}, "rabbitmq": {"min", "max", "target", "idle_seconds"}}
RESOURCE_KEYS = ({"requests", "limits"}, {"cpu", "memory"})
# gunicorn's worker classes Lanes uses, and the `server` key that sizes each one's process.
SERVER_KEYS = {"gthread": "threads", "gevent": "connections"}


class TemplateError(ValueError):
    pass


def lane_queue_pattern(prefix: str) -> str:
    """The regex that selects the queues requests wait in, in a queue listing: the lane
    partitions, `<prefix>.partition.<k>`, and deep lanes' overflow queues,
    `<prefix>.overflow.<user>` (lanes.lane.overflow).

    QUEUE_PREFIX holds only letters, digits, '-' and '_', none of them special in a regex."""
    return rf"^{prefix}\.(partition|overflow)\..*"


@dataclass(frozen=True)
class Route:
    """A path a function answers; an `internal` one (probes, metrics) stays off the public route."""

    path: str
    prefix: bool = False
    internal: bool = False


@dataclass(frozen=True)
class Secret:
    """A setting whose value comes from a secret store; a `file` secret's setting names a file."""

    name: str
    file: str = ""
    optional: bool = False
    # One platform Secret per function that lists it (`enqueue-mongo-uri`), so each
    # function reaches the database or the broker as a user of its own.
    per_function: bool = False


@dataclass(frozen=True)
class Server:
    """How gunicorn runs an HTTP function in its container: processes, each serving
    `per_process` requests at once (threads for gthread, greenlets for gevent)."""

    worker_class: str
    processes: int
    per_process: int

    @property
    def slots(self) -> int:
        """Requests one replica serves at once: Knative's containerConcurrency, OpenFaaS's target."""
        return self.processes * self.per_process


@dataclass(frozen=True)
class Function:
    name: str
    source: str
    image: str
    trigger: str
    app: str = ""
    command: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    scale: dict[str, int] = field(default_factory=dict)
    queue: str = ""
    shutdown_seconds: int = 30
    server: Server | None = None  # http functions only


@dataclass(frozen=True)
class Template:
    name: str
    env: dict[str, str]
    secrets: tuple[Secret, ...]
    functions: tuple[Function, ...]
    namespace: str = "lanes"

    @property
    def http_functions(self) -> tuple[Function, ...]:
        return tuple(f for f in self.functions if f.trigger == "http")

    @property
    def worker(self) -> Function:
        """The RabbitMQ-triggered function."""
        return next(f for f in self.functions if f.trigger == "rabbitmq")

    def function(self, name: str) -> Function:
        for function in self.functions:
            if function.name == name:
                return function
        raise KeyError(name)

    @property
    def public_routes(self) -> tuple[tuple[Function, Route], ...]:
        """Every route the one public base URL serves, with the function behind it."""
        return tuple((f, r) for f in self.http_functions for r in f.routes if not r.internal)

    def secret(self, name: str) -> Secret:
        return next(s for s in self.secrets if s.name == name)

    def env_of(self, function: Function) -> dict[str, str]:
        """The template's settings for one function (the environment may still override them)."""
        return {**self.env, **function.env}


def load(path: Path = ROOT / "template.yaml") -> Template:
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or raw.get("version") != 1:
        raise TemplateError("template.yaml must be a mapping with version: 1")
    functions = tuple(_function(name, spec) for name, spec in (raw.get("functions") or {}).items())
    if not functions:
        raise TemplateError("template.yaml lists no functions")
    paths = [route.path for function in functions for route in function.routes]
    if len(paths) != len(set(paths)):
        raise TemplateError("two functions claim the same route")
    template = Template(
        name=str(raw.get("name", "lanes")),
        namespace=str(raw.get("namespace", "lanes")),
        env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
        secrets=tuple(_secret(s) for s in raw.get("secrets") or ()),
        functions=functions,
    )
    _check(template)
    return template


def _secret(spec: str | dict[str, Any]) -> Secret:
    if isinstance(spec, str):
        return Secret(name=spec)
    return Secret(
        name=str(spec["name"]),
        file=str(spec.get("file", "")),
        optional=bool(spec.get("optional", False)),
        per_function=bool(spec.get("per_function", False)),
    )


def _check(template: Template) -> None:
    """What no single function can check alone."""
    declared = {s.name for s in template.secrets}
    if [f.trigger for f in template.functions].count("rabbitmq") != 1:
        raise TemplateError("exactly one function must have trigger: rabbitmq")
    for function in template.functions:
        if unknown := set(function.secrets) - declared:
            raise TemplateError(f"{function.name}: secrets {sorted(unknown)} are not declared at the top")
    worker = template.worker
    prefix = template.env_of(worker).get("QUEUE_PREFIX", "lanes")
    if worker.queue != lane_queue_pattern(prefix):
        # The worker scales on the queues its requests wait in; any other pattern scales on nothing.
        raise TemplateError(
            f"{worker.name}: queue must be {lane_queue_pattern(prefix)}: where QUEUE_PREFIX's requests wait"
        )
    slots = template.env_of(worker).get("WORKER_SLOTS")
    if slots is None or str(worker.scale.get("target", 1)) != slots:
        # KEDA runs ceil(messages / target) workers: a target above the slots leaves lanes
        # waiting for a slot, one below it starts workers that find nothing to run.
        raise TemplateError(f"{worker.name}: scale target must equal its WORKER_SLOTS setting")
    partitions = int(template.env_of(worker).get("LANE_PARTITIONS", Settings.lane_partitions))
    if worker.scale.get("max", 1) > partitions:
        # A worker process holds whole partitions: those beyond LANE_PARTITIONS would hold none.
        raise TemplateError(f"{worker.name}: scale max must not exceed LANE_PARTITIONS ({partitions})")


def _function(name: str, spec: dict[str, Any]) -> Function:
    trigger = spec.get("trigger")
    if trigger not in TRIGGERS:
        raise TemplateError(f"{name}: trigger must be one of {TRIGGERS}")
    if not (ROOT / str(spec.get("source", ""))).is_dir():
        raise TemplateError(f"{name}: source folder {spec.get('source')!r} does not exist")
    routes = tuple(
        Route(path=str(r["path"]), prefix=bool(r.get("prefix", False)), internal=bool(r.get("internal", False)))
        for r in spec.get("routes") or ()
    )
    if trigger == "http" and not (routes and spec.get("app")):
        raise TemplateError(f"{name}: an http function needs routes and an app")
    if trigger == "rabbitmq" and not (spec.get("queue") and spec.get("command")):
        raise TemplateError(f"{name}: a rabbitmq function needs a queue and a command")
    scale = {str(k): int(v) for k, v in (spec.get("scale") or {}).items()}
    if unknown := set(scale) - SCALE_KEYS[trigger]:
        raise TemplateError(f"{name}: unknown scale keys {sorted(unknown)} for trigger {trigger}")
    if not 0 <= scale.get("min", 0) <= scale.get("max", 1) or scale.get("max", 1) < 1:
        raise TemplateError(f"{name}: scale needs 0 <= min <= max and max >= 1")
    if any(scale.get(key, 1) < 1 for key in ("target", "idle_seconds")):
        raise TemplateError(f"{name}: scale target and idle_seconds must be positive")
    server = _server(name, spec.get("server")) if trigger == "http" else None
    resources = {
        str(k): {str(r): str(v) for r, v in (limits or {}).items()}
        for k, limits in (spec.get("resources") or {}).items()
    }
    if set(resources) - RESOURCE_KEYS[0] or any(set(r) - RESOURCE_KEYS[1] for r in resources.values()):
        raise TemplateError(f"{name}: resources take requests/limits of cpu/memory")
    return Function(
        name=name,
        source=str(spec["source"]),
        image=str(spec.get("image", f"lanes/{name}:latest")),
        trigger=trigger,
        app=str(spec.get("app", "")),
        command=tuple(str(c) for c in spec.get("command") or ()),
        routes=routes,
        env={str(k): str(v) for k, v in (spec.get("env") or {}).items()},
        secrets=tuple(str(s) for s in spec.get("secrets") or ()),
        resources=resources,
        scale=scale,
        queue=str(spec.get("queue", "")),
        shutdown_seconds=int(spec.get("shutdown_seconds", 30)),
        server=server,
    )


def _server(name: str, spec: Any) -> Server:
    """An http function's `server`: {worker_class: gthread, processes, threads} or
    {worker_class: gevent, processes, connections}."""
    if not isinstance(spec, dict) or spec.get("worker_class") not in SERVER_KEYS:
        raise TemplateError(f"{name}: an http function needs server.worker_class, one of {sorted(SERVER_KEYS)}")
    per_process = SERVER_KEYS[spec["worker_class"]]
    if set(spec) != {"worker_class", "processes", per_process}:
        raise TemplateError(f"{name}: server takes worker_class, processes and {per_process} ({spec['worker_class']})")
    server = Server(str(spec["worker_class"]), int(spec["processes"]), int(spec[per_process]))
    if server.processes < 1 or server.per_process < 1:
        raise TemplateError(f"{name}: server processes and {per_process} must be positive")
    return server
