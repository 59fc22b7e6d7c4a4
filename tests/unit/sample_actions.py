"""A user-supplied actions module, as ACTIONS_MODULE would name it."""

from typing import Any


def register(registry: Any) -> None:
    @registry.action("shout")
    def shout(data: Any, context: Any) -> Any:
        return str(data).upper()
