"""The settled feed's sending side: the ids a worker settled, announced in batches to the
enqueue processes' ledgers (lanes.lane.admission.LaneLedger)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

log = logging.getLogger("lanes.lane")

# The settled feed is sent at most this often, and at once past this many ids.
SETTLED_FLUSH_SECONDS = 0.02
SETTLED_FLUSH_IDS = 500


class SettledNotices:
    """Settled ids waiting to be announced; a hint, so a failed send is only logged."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._since = 0.0

    def add(self, request_id: str) -> None:
        if not self._ids:
            self._since = time.monotonic()
        self._ids.append(request_id)

    def seconds_to_flush(self) -> float | None:
        """How long until the batch is due; None with nothing to send."""
        if not self._ids:
            return None
        return max(0.0, self._since + SETTLED_FLUSH_SECONDS - time.monotonic())

    def flush(self, send: Callable[[bytes], None], force: bool = False) -> None:
        if not self._ids:
            return
        due = time.monotonic() - self._since >= SETTLED_FLUSH_SECONDS
        if force or due or len(self._ids) >= SETTLED_FLUSH_IDS:
            body = json.dumps(self._ids, separators=(",", ":")).encode()
            self._ids = []
            try:
                send(body)
            except Exception as error:  # noqa: BLE001 - a hint: the ledgers verify before refusing
                log.warning("could not announce settled requests: %r", error)
