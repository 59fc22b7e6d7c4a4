"""Retention: what Lanes deletes, and how, so that storage and every pass over it stay
bounded by open work and the retention period, never by history.

Past RETENTION_DAYS (0 keeps them) a terminal request goes with everything hanging off
it: its record, claim and outcome, its Idempotency-Key binding, and its dead letter
once an operator requeued it. Revocations go once their token expired; login failures
once they left the throttle window. A purged request answers 404.

The reaper walks each collection from its front in natural order, which is insertion
order (SQLite's rowid under FerretDB, the RecordId under MongoDB), and so, within a
collection, the order in which records became old. It judges each document in Python
and stops at the first one still young. FerretDB 1.24 pushes down only `_id` equality
into SQLite, and only for finds and find-and-modify: an `_id` range, a sort or a
delete_one scans the whole table (measured: 0.56 s for a 500-document `_id` range of
20,000, 40 ms per delete_one, 1 ms per find-and-modify by `_id`). So the walk asks for
the front with a bare limit, which streams and stops, and deletes each document with
find-and-modify by `_id`. A pass costs one peek per collection when nothing is due, and
otherwise what it deletes plus the documents it must keep (open requests started long
ago, unhandled dead letters) that sit in front of them. A document stored out of
order (a restore, an import of old data) is purged once those in front of it are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database
from pymongo.errors import OperationFailure

from lanes.db import now, translate_errors
from lanes.errors import DatabaseError
from lanes.settings import Settings

log = logging.getLogger("lanes.retention")

BATCH = 200  # documents fetched at once after the first peek

Document = dict[str, Any]


@dataclass
class Reaped:
    """Documents deleted by one pass, by collection."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, collection: str, count: int = 1) -> None:
        self.counts[collection] = self.counts.get(collection, 0) + count

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Reaper:
    """Deletes what is past retention; one pass at a time, within a time budget."""

    def __init__(self, db: Database[Document], settings: Settings) -> None:
        self._db = db
        self._settings = settings

    @translate_errors
    def reap(self, moment: datetime | None = None, budget_seconds: float = 10.0) -> Reaped:
        """One pass over every collection; stops early once `budget_seconds` are spent
        (the next pass goes on where this one stopped)."""
        moment = moment or now()
        deadline = time.monotonic() + budget_seconds
        reaped = Reaped()
        walks: list[tuple[str, Callable[[Document], bool | None], Document]] = []
        if self._settings.retention_days > 0:
            cutoff = moment - timedelta(days=self._settings.retention_days)
            walks += [
                ("outcomes", lambda doc: self._outcome(doc, cutoff, reaped), {"finished_at": 1}),
                ("claims", lambda doc: self._claim(doc, cutoff, reaped), {"by": 1, "at": 1}),
                ("idempotency_keys", lambda doc: self._key(doc, cutoff), {"request_id": 1, "created_at": 1}),
                ("dead_letters", lambda doc: self._dead_letter(doc, cutoff), {"failed_at": 1, "requeued_at": 1}),
            ]
        window = moment - timedelta(seconds=self._settings.login_window_seconds)
        walks += [
            ("revocations", lambda doc: _older(doc.get("expires_at"), moment), {"expires_at": 1}),
            ("login_failures", lambda doc: _older(doc.get("at"), window), {"at": 1}),
        ]
        for name, judge, projection in walks:
            try:
                self._walk(name, judge, projection, deadline, reaped)
            except OperationFailure as error:
                raise DatabaseError(f"retention pass over {name}: {error}") from None
        if reaped.total:
            log.info("retention purged %d documents", reaped.total, extra={"reaped": reaped.counts})
        return reaped

    # Each judge answers None for a young document (the walk stops), True to delete it,
    # False to keep it and walk on.

    def _outcome(self, outcome: Document, cutoff: datetime, reaped: Reaped) -> bool | None:
        if not _older(outcome.get("finished_at"), cutoff):
            return None
        # The record and the claim go first: a record without its outcome would read as
        # queued again, an outcome alone still reads as the finished request.
        self._delete("requests", outcome["_id"], reaped)
        self._delete("claims", outcome["_id"], reaped)
        return True

    def _claim(self, claim: Document, cutoff: datetime, reaped: Reaped) -> bool | None:
        """Claims left after their outcomes went: a running request's (kept), a refused
        enqueue's and a cancel whose canceller died before its outcome (both terminal)."""
        if not _older(claim.get("at"), cutoff):
            return None
        if claim.get("by") == "worker" or self._db.outcomes.find_one({"_id": claim["_id"]}, {"_id": 1}):
            return False
        self._delete("requests", claim["_id"], reaped)
        return True

    def _key(self, binding: Document, cutoff: datetime) -> bool | None:
        """A key lives as long as its request."""
        if not _older(binding.get("created_at"), cutoff):
            return None
        request_id = binding.get("request_id")
        for name in ("requests", "outcomes", "claims"):
            if self._db[name].find_one({"_id": request_id}, {"_id": 1}) is not None:
                return False
        return True

    def _dead_letter(self, letter: Document, cutoff: datetime) -> bool | None:
        """Dead letters go once handled (requeued); an unhandled one waits for its operator."""
        if not _older(letter.get("failed_at"), cutoff):
            return None
        return letter.get("requeued_at") is not None

    def _walk(
        self,
        name: str,
        judge: Callable[[Document], bool | None],
        projection: Document,
        deadline: float,
        reaped: Reaped,
    ) -> None:
        """Judge the collection's documents in natural order until one is young.

        One document first: when it is young (the common case) that is the whole walk.
        Documents kept stay in front; `skip` steps over them."""
        collection = self._db[name]
        kept, size = 0, 1
        while time.monotonic() < deadline:
            batch = list(collection.find({}, projection).skip(kept).limit(size))
            for doc in batch:
                verdict = judge(doc)
                if verdict is None:
                    return  # young: everything behind it was inserted later
                if verdict and collection.find_one_and_delete({"_id": doc["_id"]}) is not None:
                    reaped.add(name)
                elif not verdict:
                    kept += 1
            if len(batch) < size:
                return
            size = BATCH

    def _delete(self, name: str, document_id: Any, reaped: Reaped) -> None:
        if self._db[name].find_one_and_delete({"_id": document_id}) is not None:
            reaped.add(name)


def _older(moment: datetime | None, cutoff: datetime) -> bool | None:
    """True when `moment` is before `cutoff`; None (young) otherwise or when unknown."""
    if moment is None:
        return None
    return True if moment < cutoff else None
