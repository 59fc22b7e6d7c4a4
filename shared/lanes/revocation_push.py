"""Revocations pushed between processes over the broker (lanes.broker.Hints): login and
the operators' delete-user publish what they revoke, and every function that checks
tokens applies it on receipt (lanes.revocations says why the collection stays the fact).
Kept apart from lanes.revocations so that a function without the broker (register)
does not import it."""

from __future__ import annotations

import threading
from collections.abc import Callable

from lanes.broker import Hints
from lanes.revocations import Revocations, exchange_name
from lanes.settings import Settings


def publisher(settings: Settings) -> Callable[[bytes], None]:
    """What a revoking process passes as `Revocations.from_settings(publish=…)`."""
    return Hints(settings, exchange_name(settings)).publish


def listen(revocations: Revocations, settings: Settings) -> None:
    """Apply the revocations other processes publish, from a background thread, for the
    life of the process; catch up from the collection on every (re)connection."""
    hints = Hints(settings, exchange_name(settings), revocations.apply, revocations.catch_up)
    threading.Thread(target=hints.run, name="lanes-revocations", daemon=True).start()
