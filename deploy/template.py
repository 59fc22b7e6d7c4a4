"""template.yaml, read and checked: the one description of every function."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TRIGGERS = ("http", "rabbitmq")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Route:
    path: str
    prefix: bool = False


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
    scale: dict[str, int] = field(default_factory=dict)
    signs_tokens: bool = False
    queue: str = ""


@dataclass(frozen=True)
class Template:
    name: str
    env: dict[str, str]
    secrets: tuple[str, ...]
    functions: tuple[Function, ...]

    @property
    def http_functions(self) -> tuple[Function, ...]:
        return tuple(f for f in self.functions if f.trigger == "http")

    def function(self, name: str) -> Function:
        for function in self.functions:
            if function.name == name:
                return function
        raise KeyError(name)


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
    return Template(
        name=str(raw.get("name", "lanes")),
        env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
        secrets=tuple(str(s) for s in raw.get("secrets") or ()),
        functions=functions,
    )


def _function(name: str, spec: dict[str, Any]) -> Function:
    trigger = spec.get("trigger")
    if trigger not in TRIGGERS:
        raise TemplateError(f"{name}: trigger must be one of {TRIGGERS}")
    if not (ROOT / str(spec.get("source", ""))).is_dir():
        raise TemplateError(f"{name}: source folder {spec.get('source')!r} does not exist")
    routes = tuple(Route(path=str(r["path"]), prefix=bool(r.get("prefix", False))) for r in spec.get("routes") or ())
    if trigger == "http" and not (routes and spec.get("app")):
        raise TemplateError(f"{name}: an http function needs routes and an app")
    if trigger == "rabbitmq" and not (spec.get("queue") and spec.get("command")):
        raise TemplateError(f"{name}: a rabbitmq function needs a queue and a command")
    return Function(
        name=name,
        source=str(spec["source"]),
        image=str(spec.get("image", f"lanes/{name}:latest")),
        trigger=trigger,
        app=str(spec.get("app", "")),
        command=tuple(str(c) for c in spec.get("command") or ()),
        routes=routes,
        env={str(k): str(v) for k, v in (spec.get("env") or {}).items()},
        scale={str(k): int(v) for k, v in (spec.get("scale") or {}).items()},
        signs_tokens=bool(spec.get("signs_tokens", False)),
        queue=str(spec.get("queue", "")),
    )
