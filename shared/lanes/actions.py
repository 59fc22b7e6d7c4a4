"""The registry of actions a worker can run.

A handler is a plain function `handler(data, context) -> result` (the result must be
JSON-serialisable). Raising an exception fails the attempt; the worker retries it
with backoff up to MAX_ATTEMPTS, then marks the request `failed`.

Users add their own handlers with a module named in ACTIONS_MODULE that defines
`register(registry)`:

    def register(registry):
        @registry.action("resize")
        def resize(data, context):
            return {"ok": True}

`context.fence` is the token the attempt runs under (epoch, attempt, deadline;
lanes.lane.fencing): a handler whose side effects must never be applied twice at once
passes it on to the system it writes to, or checks `context.fence.valid()` before
each write.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lanes.errors import ConfigError
from lanes.lane.fencing import Fence
from lanes.settings import Settings


@dataclass(frozen=True)
class ActionContext:
    """What a handler may know about the request it runs."""

    request_id: str
    user_id: str
    attempt: int
    settings: Settings
    fence: Fence | None = None  # None only outside a worker (tests calling a handler directly)


Handler = Callable[[Any, ActionContext], Any]


class ActionFailed(Exception):
    """A handler's way to fail an attempt with a message meant for the client."""


class Registry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def action(self, name: str) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.add(name, handler)
            return handler

        return decorate

    def add(self, name: str, handler: Handler) -> None:
        self._handlers[name] = handler

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._handlers)


def echo(data: Any, context: ActionContext) -> Any:
    return data


def sleep(data: Any, context: ActionContext) -> Any:
    """Sleep `data.ms` milliseconds, capped by SLEEP_MAX_MS."""
    ms = data.get("ms", 0) if isinstance(data, dict) else 0
    if isinstance(ms, bool) or not isinstance(ms, int | float) or ms < 0:
        raise ActionFailed("sleep needs data.ms, a non-negative number")
    slept = min(float(ms), float(context.settings.sleep_max_ms))
    time.sleep(slept / 1000)
    return {"slept_ms": slept}


def fail(data: Any, context: ActionContext) -> Any:
    """Fail the first `data.times` attempts, then succeed: exercises retries and dead letters."""
    times = data.get("times", 1) if isinstance(data, dict) else 1
    if isinstance(times, bool) or not isinstance(times, int):
        raise ActionFailed("fail needs data.times, an integer")
    if context.attempt <= times:
        raise ActionFailed(f"failing on purpose (attempt {context.attempt} of {times} to fail)")
    return {"succeeded_on_attempt": context.attempt}


def build_registry(settings: Settings) -> Registry:
    """Built-in actions plus those of ACTIONS_MODULE, if set."""
    registry = Registry()
    registry.add("echo", echo)
    registry.add("sleep", sleep)
    if settings.enable_fail_action:
        registry.add("fail", fail)
    if settings.actions_module:
        try:
            module = importlib.import_module(settings.actions_module)
        except ImportError as error:
            raise ConfigError(f"ACTIONS_MODULE {settings.actions_module!r} cannot be imported: {error}") from None
        register = getattr(module, "register", None)
        if not callable(register):
            raise ConfigError(f"ACTIONS_MODULE {settings.actions_module!r} has no register(registry)")
        register(registry)
    return registry
