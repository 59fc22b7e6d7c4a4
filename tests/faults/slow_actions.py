"""An actions module (ACTIONS_MODULE) for the fault suite: a handler that outlives its timeout
and writes down when each of its attempts began and ended."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def register(registry: Any) -> None:
    @registry.action("overrun")
    def overrun(data: Any, context: Any) -> Any:
        journal = Path(data["journal"])
        began = time.time()
        try:
            deadline = began + data["seconds"]
            while time.time() < deadline:  # plain Python, as most handlers are: interruptible
                time.sleep(0.01)
        finally:
            with journal.open("a") as out:
                out.write(json.dumps({"attempt": context.attempt, "began": began, "ended": time.time()}) + "\n")
        return "finished"
