"""An actions module (ACTIONS_MODULE) for the fault suite: a handler that outlives its timeout
and writes down when each of its attempts began and ended."""

from __future__ import annotations

import json
import os
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

    @registry.action("journaled")
    def journaled(data: Any, context: Any) -> Any:
        """Runs for `data["seconds"]` and writes down when it began and ended, with its fence.

        A fenced side effect, as the fence is meant to be used: nothing is written once the
        attempt's deadline has passed (its end is refused: "fenced"), so the journal holds
        what the handler did while it could still show it held its lane."""
        fence = context.fence
        entry = {"request": context.request_id, "lane": context.user_id, "pid": os.getpid()}
        entry.update(epoch=fence.epoch, attempt=fence.attempt, deadline=fence.deadline.timestamp())
        if not fence.valid():
            raise RuntimeError("started past its deadline")
        _write(Path(data["journal"]), {**entry, "event": "begin", "t": time.time()})
        ends = time.monotonic() + data["seconds"]
        while time.monotonic() < ends:
            time.sleep(0.01)
        event = "end" if fence.valid() else "fenced"
        _write(Path(data["journal"]), {**entry, "event": event, "t": time.time()})
        return data.get("n")


def _write(journal: Path, entry: dict[str, Any]) -> None:
    # One write of one line to a file opened for appending: lines of several processes
    # never interleave.
    with journal.open("a") as out:
        out.write(json.dumps(entry) + "\n")
