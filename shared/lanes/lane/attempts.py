"""The database side of fencing: holder epochs, and attempts written down once each.

A request's first attempt is its claim (lanes.requests, `claims`), which carries the
epoch and deadline it runs under. A further attempt (a retry, or a new holder going on
after a lost one) is an insert into `attempts` under `<request id>:<number>`: a unique
`_id` is the one test-and-set MongoDB and FerretDB both guarantee, so of two processes
that try to start the same attempt, one does. The path is taken only when an attempt
fails or a holder is lost, so a request that succeeds at once pays nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from lanes.db import now, translate_errors
from lanes.errors import DatabaseError
from lanes.requests import Claim


@dataclass(frozen=True)
class Attempt:
    """The latest attempt written down for a request: its number, its holder's epoch, its
    deadline, and whether its holder said it ended (handed back between attempts)."""

    number: int
    epoch: int
    deadline: datetime | None
    ended: bool


class Attempts:
    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self._attempts = db.attempts
        self._claims = db.claims
        self._holders = db.holders

    @translate_errors
    def draw_epoch(self, partition: str) -> int:
        """The partition's next holder epoch. Takers of one partition are serialised by the
        broker (one consumer at a time), so the increment never races with itself."""
        for _ in range(2):
            try:
                holder = self._holders.find_one_and_update(
                    {"_id": partition}, {"$inc": {"epoch": 1}}, upsert=True, return_document=ReturnDocument.AFTER
                )
            except DuplicateKeyError:
                continue  # two first takes raced to create it: it exists now, increment it
            assert holder is not None  # upserted
            return int(holder["epoch"])
        raise DatabaseError("could not draw an epoch")

    @translate_errors
    def start(self, request_id: str, number: int, epoch: int, deadline: datetime) -> bool:
        """Write attempt `number` (≥ 2) down; False when another process started it first."""
        try:
            self._attempts.insert_one(
                {"_id": _attempt_id(request_id, number), "epoch": epoch, "at": now(), "deadline": deadline}
            )
        except DuplicateKeyError:
            return False
        # The claim's count is what readers show as `attempts`.
        self._claims.update_one({"_id": request_id}, {"$max": {"attempts": number}})
        return True

    @translate_errors
    def latest(self, request_id: str, claim: Claim) -> Attempt:
        """The request's latest attempt. The claim's count may lag one behind an attempt
        whose holder died between the two writes, so the next numbers are looked at too."""
        latest = Attempt(1, claim.epoch, claim.deadline, claim.ended >= 1)
        number = max(2, claim.attempts)
        while (found := self._attempts.find_one({"_id": _attempt_id(request_id, number)})) is not None:
            latest = Attempt(number, int(found["epoch"]), found.get("deadline"), claim.ended >= number)
            number += 1
        return latest

    @translate_errors
    def end(self, request_id: str, number: int) -> None:
        """Attempt `number` is over and no further one runs here: the next holder need not wait."""
        self._claims.update_one({"_id": request_id}, {"$max": {"ended": number}})

    @translate_errors
    def forget(self, request_id: str, attempts: int) -> None:
        """Delete the request's attempts 2..`attempts` once its outcome is recorded."""
        for number in range(2, attempts + 1):
            self._attempts.find_one_and_delete({"_id": _attempt_id(request_id, number)})


def _attempt_id(request_id: str, number: int) -> str:
    return f"{request_id}:{number}"
