"""Test-only fault injection. Every hook is inert unless its setting is non-zero."""

from __future__ import annotations

import logging
import os
import random

log = logging.getLogger("lanes.faults")


def maybe_crash(point: str, probability: float) -> None:
    """Kill this process at `point` with the given probability, as a power cut would."""
    if probability > 0 and random.random() < probability:
        log.warning("fault injection: crashing at %s", point)
        os._exit(70)
