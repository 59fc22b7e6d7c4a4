"""Request records in MongoDB and the transitions of a request's life.

    queued ──claim──▶ processing ──outcome──▶ done | failed
       └──cancel (before any claim)──────────▶ cancelled

Every decision that two processes could race for is an *insert* under the
request's id, because a unique `_id` is the one atomic test-and-set that MongoDB
and FerretDB both guarantee (FerretDB's find-and-modify is a read followed by a
write, so two concurrent updates of one document can lose one of them):

- `claims`: the worker's first start and a cancel both insert; the first wins;
- `outcomes`: the first outcome inserted is the request's only outcome, and the
  record's terminal fields are a copy of it;
- `unpublished`: a marker that lives from just before the record is stored until
  its message is confirmed by the broker, so a crash in between is found.

After the claim, only the lane's worker writes to a request record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from lanes.db import iso, now, translate_errors
from lanes.errors import Conflict, NotFound

TERMINAL = ("done", "failed", "cancelled")
PENDING = ("queued", "processing")


def new_request_id() -> str:
    """32 hex digits, time-ordered (a UUIDv7 layout), so `_id` order is acceptance order."""
    millis = time.time_ns() // 1_000_000
    raw = bytearray(millis.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def accepted_at(request_id: str) -> float:
    """When a request was accepted (seconds since the epoch), read back from its id."""
    return int(request_id[:12], 16) / 1000


def body_fingerprint(action: str, data: Any) -> str:
    canonical = json.dumps({"action": action, "data": data}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Outcome:
    status: str
    result: Any = None
    error: str | None = None


def store_value(value: Any) -> str:
    """A client's JSON value as stored: text, because document databases refuse some
    keys (FerretDB any with '.', MongoDB some with '$') that JSON allows."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def stored_value(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def request_data(record: dict[str, Any]) -> Any:
    return stored_value(record.get("data_json"))


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    """The API's shape of a request record."""
    return {
        "request_id": record["_id"],
        "action": record["action"],
        "status": record["status"],
        "result": stored_value(record.get("result_json")),
        "error": record.get("error"),
        "attempts": record.get("attempts", 0),
        "created_at": iso(record.get("created_at")),
        "started_at": iso(record.get("started_at")),
        "finished_at": iso(record.get("finished_at")),
    }


class Requests:
    def __init__(self, db: Database[dict[str, Any]]) -> None:
        self._requests = db.requests
        self._outcomes = db.outcomes
        self._keys = db.idempotency_keys
        self._dead_letters = db.dead_letters
        self._claims = db.claims
        self._unpublished = db.unpublished

    # -- the HTTP side ------------------------------------------------------------

    @translate_errors
    def create(
        self,
        request_id: str,
        user_id: str,
        action: str,
        data: Any,
        fingerprint: str,
        correlation_id: str | None = None,
    ) -> dict[str, Any]:
        """Store a queued request, marked unpublished until `published` is called."""
        created_at = now()
        try:
            self._unpublished.insert_one({"_id": request_id, "user_id": user_id, "created_at": created_at})
        except DuplicateKeyError:
            pass  # a retry finishing what a crashed attempt under the same key began
        record = {
            "_id": request_id,
            "user_id": user_id,
            "action": action,
            "data_json": store_value(data),
            "status": "queued",
            "attempts": 0,
            "created_at": created_at,
            "fingerprint": fingerprint,
        }
        if correlation_id is not None:
            record["correlation_id"] = correlation_id  # the worker logs it with the outcome
        try:
            self._requests.insert_one(record)
        except DuplicateKeyError:
            return self._requests.find_one({"_id": request_id}) or record
        return record

    @translate_errors
    def published(self, request_id: str) -> None:
        self._unpublished.delete_one({"_id": request_id})

    @translate_errors
    def is_unpublished(self, request_id: str) -> bool:
        return self._unpublished.find_one({"_id": request_id}, {"_id": 1}) is not None

    @translate_errors
    def unpublished_before(self, moment: datetime) -> list[dict[str, Any]]:
        """Markers of requests stored before `moment` whose message was never confirmed."""
        return list(self._unpublished.find({"created_at": {"$lt": moment}}))

    @translate_errors
    def discard(self, request_id: str) -> None:
        """Remove a record that was never accepted (its publish was refused)."""
        self._requests.delete_one({"_id": request_id})
        self._unpublished.delete_one({"_id": request_id})

    @translate_errors
    def reserve_key(self, user_id: str, key: str, request_id: str, fingerprint: str) -> dict[str, Any] | None:
        """Bind an Idempotency-Key to a request id; None when bound now, else the earlier binding."""
        key_id = hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()
        try:
            self._keys.insert_one(
                {"_id": key_id, "request_id": request_id, "fingerprint": fingerprint, "created_at": now()}
            )
            return None
        except DuplicateKeyError:
            binding = self._keys.find_one({"_id": key_id})
        if binding is None:  # released between our insert and our read
            return self.reserve_key(user_id, key, request_id, fingerprint)
        if binding["fingerprint"] != fingerprint:
            raise Conflict("This Idempotency-Key was used with a different body.", code="idempotency_key_reused")
        return binding

    @translate_errors
    def release_key(self, user_id: str, key: str) -> None:
        key_id = hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()
        self._keys.delete_one({"_id": key_id})

    @translate_errors
    def get(self, request_id: str) -> dict[str, Any] | None:
        return self._requests.find_one({"_id": request_id})

    def get_owned(self, request_id: str | None, user_id: str) -> dict[str, Any]:
        """A user's own request; another user's is as absent as a missing one."""
        record = self.get(request_id) if request_id else None
        if record is None or record["user_id"] != user_id:
            raise NotFound("No such request.")
        return record

    @translate_errors
    def list_owned(self, user_id: str, status: str | None, limit: int, after: str | None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"user_id": user_id}
        if status:
            query["status"] = status
        if after:
            query["_id"] = {"$gt": after}
        return list(self._requests.find(query).sort("_id", 1).limit(limit))

    @translate_errors
    def cancel(self, request_id: str | None, user_id: str) -> dict[str, Any]:
        """Cancel a request no worker has claimed; Conflict once it started or finished."""
        record = self.get_owned(request_id, user_id)
        if record["status"] in TERMINAL:
            raise Conflict(f"The request is already {record['status']}.", code="not_cancellable")
        if self._claim_for(record["_id"], "cancel") != "cancel":
            raise Conflict("The request has already started.", code="not_cancellable")
        return self.finish(record["_id"], Outcome(status="cancelled"), attempts=record.get("attempts", 0))

    def _claim_for(self, request_id: str, claimant: str) -> str:
        """Insert a claim for `claimant`; returns whoever holds the request's claim."""
        try:
            self._claims.insert_one({"_id": request_id, "by": claimant, "at": now()})
            return claimant
        except DuplicateKeyError:
            existing = self._claims.find_one({"_id": request_id})
        return str(existing["by"]) if existing else claimant

    # -- the worker side ----------------------------------------------------------

    @translate_errors
    def claim(self, request_id: str) -> dict[str, Any] | None:
        """Start an attempt by the lane's worker; None when a cancel claimed the request first."""
        if self._claim_for(request_id, "worker") != "worker":
            return None
        return self._requests.find_one_and_update(
            {"_id": request_id},
            {"$set": {"status": "processing"}, "$inc": {"attempts": 1}, "$min": {"started_at": now()}},
            return_document=ReturnDocument.AFTER,
        )

    @translate_errors
    def pending_records(self) -> list[dict[str, Any]]:
        """Every queued or processing record, oldest first, with what the sweeper needs."""
        projection = {"user_id": 1}
        return list(self._requests.find({"status": {"$in": list(PENDING)}}, projection).sort("_id", 1))

    @translate_errors
    def recorded_outcome(self, request_id: str) -> dict[str, Any] | None:
        return self._outcomes.find_one({"_id": request_id})

    @translate_errors
    def finish(self, request_id: str, outcome: Outcome, attempts: int) -> dict[str, Any]:
        """Record the one outcome of a request (the first writer wins) and apply it to the record."""
        document = {
            "_id": request_id,
            "status": outcome.status,
            "result_json": store_value(outcome.result),
            "error": outcome.error,
            "attempts": attempts,
            "finished_at": now(),
        }
        try:
            self._outcomes.insert_one(document)
        except DuplicateKeyError:
            document = self._outcomes.find_one({"_id": request_id}) or document
        return self.apply_outcome(document)

    @translate_errors
    def apply_outcome(self, outcome: dict[str, Any]) -> dict[str, Any]:
        fields = {k: outcome[k] for k in ("status", "result_json", "error", "attempts", "finished_at")}
        updated = self._requests.find_one_and_update(
            {"_id": outcome["_id"]}, {"$set": fields}, return_document=ReturnDocument.AFTER
        )
        if updated is None:
            raise NotFound("No such request.")
        return updated

    @translate_errors
    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        return list(self._dead_letters.find().sort("failed_at", -1).limit(limit))

    @translate_errors
    def dead_letter(self, request_id: str) -> dict[str, Any] | None:
        return self._dead_letters.find_one({"_id": request_id})

    @translate_errors
    def mark_requeued(self, request_id: str, new_request_id: str) -> None:
        self._dead_letters.find_one_and_update(
            {"_id": request_id}, {"$push": {"requeued_as": new_request_id}, "$set": {"requeued_at": now()}}
        )

    @translate_errors
    def record_dead_letter(self, record: dict[str, Any], error: str) -> None:
        document = {
            "_id": record["_id"],
            "user_id": record["user_id"],
            "action": record["action"],
            "data_json": record.get("data_json"),
            "error": error,
            "attempts": record.get("attempts", 0),
            "failed_at": now(),
        }
        with contextlib.suppress(DuplicateKeyError):
            self._dead_letters.insert_one(document)
