"""Checks of the processing guarantees, shared by the integration and fault suites."""

from __future__ import annotations

import itertools
from typing import Any


def ordering_violations(records_in_acceptance_order: list[dict[str, Any]]) -> list[str]:
    """Each request must start only after the one accepted before it finished (SPEC §3.3)."""
    violations = []
    for before, after in itertools.pairwise(records_in_acceptance_order):
        if after["started_at"] is None or before["finished_at"] is None:
            continue  # cancelled before it started: nothing ran
        if after["started_at"] < before["finished_at"]:
            violations.append(f"{after['request_id']} started before {before['request_id']} finished")
    return violations


def outcome_counts(database: Any, request_ids: list[str]) -> dict[str, int]:
    """How many outcome documents each request has: exactly one is the contract."""
    counts = dict.fromkeys(request_ids, 0)
    for outcome in database.outcomes.find({"_id": {"$in": request_ids}}, {"_id": 1}):
        counts[outcome["_id"]] += 1
    return counts
