"""Steady traffic for fault scenarios, and the audit of what became of it.

Clients behave as a careful client should: every request carries an
Idempotency-Key, and a 503, a 502 or a dropped connection is retried with the
same key until the request is accepted (202, or 200 for "already accepted").
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import requests

from tests.faults.journal import Verdict
from tests.support import TERMINAL, Api
from tests.support_lanes import ordering_violations, outcome_counts


@dataclass
class Lane:
    user: Api
    accepted: list[str] = field(default_factory=list)


@dataclass
class Traffic:
    """Users sending requests one after another (each after the previous one's 202)."""

    lanes: list[Lane]
    per_user: int
    action: str = "sleep"
    data: dict[str, Any] = field(default_factory=lambda: {"ms": 30})
    statuses: Counter[int] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._send_all, args=(lane,), daemon=True) for lane in self.lanes]
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "clients could not get every request accepted"

    def _send_all(self, lane: Lane) -> None:
        for n in range(self.per_user):
            lane.accepted.append(self._send_until_accepted(lane.user, {**self.data, "n": n}))

    def _send_until_accepted(self, user: Api, data: dict[str, Any]) -> str:
        key = uuid.uuid4().hex
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                response = user.call(
                    "POST", "/enqueue", json={"action": self.action, "data": data}, headers={"Idempotency-Key": key}
                )
            except requests.RequestException:
                time.sleep(0.2)
                continue
            with self._lock:
                self.statuses[response.status_code] += 1
            if response.status_code in (200, 202):
                return str(response.json()["request_id"])
            if response.status_code == 503:
                assert "Retry-After" in response.headers
            time.sleep(0.2)
        raise AssertionError("a request was never accepted")


@dataclass(frozen=True)
class Audit:
    """What a scenario did to the requests it accepted, from their records and, where the
    scenario keeps a handler journal, from what the handlers did (None: no journal)."""

    scenario: str
    accepted: int
    lost: int
    double_outcomes: int
    ordering_violations: int
    server_errors: int
    overlapping_runs: int | None = None
    runs_after_finish: int | None = None

    def with_journal(self, verdict: Verdict) -> Audit:
        return replace(
            self,
            ordering_violations=self.ordering_violations + verdict.out_of_order,
            overlapping_runs=verdict.overlaps,
            runs_after_finish=verdict.runs_after_finish,
        )

    def row(self) -> str:
        journal = [("-" if n is None else str(n)) for n in (self.overlapping_runs, self.runs_after_finish)]
        return (
            f"{self.scenario:<40} {self.accepted:>9} {self.lost:>5} {self.double_outcomes:>7} "
            f"{self.ordering_violations:>9} {self.server_errors:>5} {journal[0]:>8} {journal[1]:>7}"
        )

    @staticmethod
    def header() -> str:
        return (
            f"{'scenario':<40} {'accepted':>9} {'lost':>5} {'doubles':>7} {'ordering':>9} {'5xx':>5} "
            f"{'overlaps':>8} {'reruns':>7}"
        )


def settle(traffic: Traffic, timeout: float) -> list[list[dict[str, Any]]]:
    """Wait until every accepted request is terminal (or time runs out); the records per lane."""
    deadline = time.monotonic() + timeout
    records: list[list[dict[str, Any]]] = []
    for lane in traffic.lanes:
        while True:
            try:
                lane_records = [lane.user.request(r) for r in lane.accepted]
            except (AssertionError, requests.RequestException):
                lane_records = []
            if lane_records and all(r["status"] in TERMINAL for r in lane_records):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.3)
        records.append(lane_records)
    return records


def audit(scenario: str, traffic: Traffic, records: list[list[dict[str, Any]]], database: Any) -> Audit:
    accepted = [r for lane in traffic.lanes for r in lane.accepted]
    finished = {r["request_id"] for lane in records for r in lane if r["status"] in TERMINAL}
    counts = outcome_counts(database, accepted)
    return Audit(
        scenario=scenario,
        accepted=len(accepted),
        lost=len(set(accepted) - finished),
        double_outcomes=sum(1 for c in counts.values() if c > 1),
        ordering_violations=sum(len(ordering_violations(lane)) for lane in records),
        # 503 (with Retry-After) is the promised answer during an outage; anything
        # else from the 5xx family is a defect.
        server_errors=sum(n for status, n in traffic.statuses.items() if status >= 500 and status != 503),
    )
