"""The settled feed's sending side: the ids a worker settled, announced in batches to the
ledger of the enqueue process that accepted each (lanes.lane.admission.LaneLedger)."""

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
    """Settled ids waiting to be announced, by ledger (None: a message that names none,
    announced to every ledger); a hint, so a failed send is only logged."""

    def __init__(self) -> None:
        self._ids: dict[str | None, list[str]] = {}
        self._count = 0
        self._since = 0.0

    def add(self, request_id: str, ledger: str | None) -> None:
        if not self._count:
            self._since = time.monotonic()
        self._ids.setdefault(ledger, []).append(request_id)
        self._count += 1

    def seconds_to_flush(self) -> float | None:
        """How long until the batch is due; None with nothing to send."""
        if not self._count:
            return None
        return max(0.0, self._since + SETTLED_FLUSH_SECONDS - time.monotonic())

    def flush(self, send: Callable[[bytes, str | None], None], force: bool = False) -> None:
        if not self._count:
            return
        due = time.monotonic() - self._since >= SETTLED_FLUSH_SECONDS
        if force or due or self._count >= SETTLED_FLUSH_IDS:
            batches, self._ids, self._count = self._ids, {}, 0
            for ledger, ids in batches.items():
                try:
                    send(json.dumps(ids, separators=(",", ":")).encode(), ledger)
                except Exception as error:  # noqa: BLE001 - a hint: the ledgers verify before refusing
                    log.warning("could not announce settled requests: %r", error)
