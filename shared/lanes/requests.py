"""Request records in MongoDB and the transitions of a request's life.

    queued ──claim──▶ processing ──outcome──▶ done | failed
       └──cancel (claim first)───────────────▶ cancelled

A request costs three writes, each an *insert* under the request's id, because a
unique `_id` is the one atomic test-and-set that MongoDB and FerretDB both give
(FerretDB's conditional updates read and then write, so two concurrent ones can both
"win": docs/design.md §6 has the measurement):

- `requests`: the record, inserted once at acceptance and never updated;
- `claims`: the first start by the lane's worker, or a cancel; the first insert wins,
  so a request is either started or cancelled, never both;
- `outcomes`: the first outcome inserted is the request's only one.

A record's status is derived when it is read: an outcome gives the terminal status,
a worker's claim without an outcome means `processing`, neither means `queued`. Only
the head of a lane can be claimed and unfinished, so a listing page needs one claim
read, not one per item.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from lanes.db import is_ferretdb, iso, now, time_ordered_id, translate_errors
from lanes.errors import Conflict, NotFound
from lanes.inserts import GroupInserts

TERMINAL = ("done", "failed", "cancelled")


def new_request_id() -> str:
    """Time-ordered (lanes.db.time_ordered_id), so `_id` order is acceptance order."""
    return time_ordered_id()


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
        **_state_fields(record),
    }


def listed_view(record: dict[str, Any], max_result_bytes: int) -> dict[str, Any]:
    """A request as a listing shows it: a result larger than `max_result_bytes` (as stored
    JSON) is left out and flagged, so a page costs what its items' sizes allow, not what
    users stored (GET /requests/<id> has the whole result)."""
    result_json = record.get("result_json")
    # Characters first: only a short text is encoded to count its bytes.
    omitted = result_json is not None and (
        len(result_json) > max_result_bytes or len(result_json.encode()) > max_result_bytes
    )
    return {
        "request_id": record["_id"],
        "action": record["action"],
        "status": record["status"],
        "result": None if omitted else stored_value(result_json),
        "result_omitted": omitted,
        **_state_fields(record),
    }


def _state_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "error": record.get("error"),
        "attempts": record.get("attempts", 0),
        "created_at": iso(record.get("created_at")),
        "started_at": iso(record.get("started_at")),
        "finished_at": iso(record.get("finished_at")),
    }


LIST_SCAN_MAX = 1000  # records one listing page looks at, at most
LIST_CHUNK = 100  # records read before their outcomes, under a status filter


@dataclass(frozen=True)
class Page:
    """A listing page: its records, and the id to list after for the next page (None: no more)."""

    items: list[dict[str, Any]]
    next_after: str | None


@dataclass(frozen=True)
class Claim:
    """Who started a request first (`worker` or `cancel`), when, and the attempts so far."""

    by: str
    at: datetime | None
    attempts: int
    fresh: bool  # True when this call inserted it
    # The fence of its first attempt (lanes.lane.fencing), and the last attempt its
    # holder said was over.
    epoch: int = 0
    deadline: datetime | None = None
    ended: int = 0


class Requests:
    def __init__(self, db: Database[dict[str, Any]], inserts: GroupInserts | None = None) -> None:
        # Records, claims and outcomes are written together with the process's other
        # inserts of the moment (lanes.inserts): one command for several documents.
        self._inserts = inserts or GroupInserts()
        self._db = db
        self._batched: bool | None = None  # outcomes by one `$in` (outcomes_of): asked once
        self._requests = db.requests
        self._outcomes = db.outcomes
        self._keys = db.idempotency_keys
        self._dead_letters = db.dead_letters
        self._claims = db.claims

    # -- the HTTP side ------------------------------------------------------------

    @translate_errors
    def create(
        self,
        request_id: str,
        user_id: str,
        action: str,
        data_json: str,
        fingerprint: str,
        correlation_id: str | None = None,
    ) -> dict[str, Any]:
        """Store the record of an accepted request (its message is in its lane already)."""
        record = {
            "_id": request_id,
            "user_id": user_id,
            "action": action,
            "data_json": data_json,
            # When its id was made, before the publish: a worker may finish the request
            # before this record is stored, and it must never look created after it started.
            "created_at": datetime.fromtimestamp(accepted_at(request_id), UTC),
            "fingerprint": fingerprint,
        }
        if correlation_id is not None:
            record["correlation_id"] = correlation_id  # the worker logs it with the outcome
        try:
            self._inserts.insert(self._requests, record)
        except DuplicateKeyError:
            return self._requests.find_one({"_id": request_id}) or record
        return record

    @translate_errors
    def reserve_key(self, user_id: str, key: str, request_id: str, fingerprint: str) -> dict[str, Any] | None:
        """Bind an Idempotency-Key to a request id; None when bound now, else the earlier binding."""
        key_id = _key_id(user_id, key)
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
        # Find-and-modify: FerretDB answers it by `_id` through its index, a delete_one
        # by scanning the collection (docs/design.md §4.9).
        self._keys.find_one_and_delete({"_id": _key_id(user_id, key)})

    @translate_errors
    def get(self, request_id: str) -> dict[str, Any] | None:
        """A request as the API shows it: its record with the status derived from its claim
        and outcome. A request whose worker recorded an outcome before its record was
        stored (the enqueue died in between) is shown from the outcome alone."""
        record = self._requests.find_one({"_id": request_id})
        outcome = self._outcomes.find_one({"_id": request_id})
        if record is None:
            if outcome is None:
                return None
            record = _record_from_outcome(outcome)
        claim = None if outcome is not None else self._claims.find_one({"_id": request_id})
        return _derive(record, claim, outcome)

    def get_owned(self, request_id: str | None, user_id: str) -> dict[str, Any]:
        """A user's own request; another user's is as absent as a missing one."""
        record = self.get(request_id) if request_id else None
        if record is None or record["user_id"] != user_id:
            raise NotFound("No such request.")
        return record

    @translate_errors
    def list_owned(self, user_id: str, status: str | None, limit: int, after: str | None) -> Page:
        """A user's requests oldest first, with derived statuses; at most `limit` of `status`.

        At most LIST_SCAN_MAX records are looked at per page, so a status filter over a
        long history costs one bounded page: it may come back short, or empty, with
        `next_after` set; the client pages on until `next_after` is None."""
        query: dict[str, Any] = {"user_id": user_id}
        if after:
            query["_id"] = {"$gt": after}
        if self._batched is None:
            self._batched = not is_ferretdb(self._db)
        listed: list[dict[str, Any]] = []
        claimed_head_seen = False
        examined, last = 0, None
        # The request's data is never listed: leave it in the database. One record past
        # the scan bound says whether anything is left.
        found = self._requests.find(query, {"data_json": 0, "fingerprint": 0}).sort("_id", 1).limit(LIST_SCAN_MAX + 1)
        records = iter(found)
        # A chunk of records, then their outcomes in one call: without a status filter a
        # page is one chunk (plus the record that says whether one is left).
        chunk_size = limit + 1 if status is None else max(limit, LIST_CHUNK)
        while chunk := list(itertools.islice(records, chunk_size)):
            wanted = min(LIST_SCAN_MAX - examined, len(chunk))
            if status is None:
                wanted = min(wanted, limit - len(listed))
            outcomes = outcomes_of(self._db, [r["_id"] for r in chunk[:wanted]], batched=self._batched)
            for record in chunk:
                if len(listed) >= limit or examined >= LIST_SCAN_MAX:
                    return Page(listed, last)
                examined, last = examined + 1, record["_id"]
                outcome = outcomes.get(record["_id"])
                claim = None
                if outcome is None and not claimed_head_seen:
                    # Only the oldest unfinished request of a lane can be running, so one
                    # claim read per page (past a cancel that has not recorded its outcome yet).
                    claim = self._claims.find_one({"_id": record["_id"]})
                    claimed_head_seen = claim is None or claim.get("by") == "worker"
                derived = _derive(record, claim, outcome)
                if status is None or derived["status"] == status:
                    listed.append(derived)
        return Page(listed, None)

    @translate_errors
    def cancel(self, request_id: str | None, user_id: str) -> dict[str, Any]:
        """Cancel a request no worker has claimed; Conflict once it started or finished."""
        record = self.get_owned(request_id, user_id)
        if record["status"] in TERMINAL:
            raise Conflict(f"The request is already {record['status']}.", code="not_cancellable")
        if self._claim_for(record["_id"], "cancel").by != "cancel":
            raise Conflict("The request has already started.", code="not_cancellable")
        self.finish(record["_id"], record["user_id"], Outcome(status="cancelled"), attempts=record["attempts"])
        return self.get_owned(record["_id"], user_id)

    @translate_errors
    def mark_published(self, user_id: str, key: str) -> None:
        """The request bound to this key is in its lane (its publish was confirmed)."""
        self._keys.update_one({"_id": _key_id(user_id, key)}, {"$set": {"published": True}})

    @translate_errors
    def refuse(self, request_id: str) -> bool:
        """Make sure a request whose acceptance failed never starts, should its message arrive.
        False when a worker started it first (then it did arrive, and runs)."""
        try:
            self._inserts.insert(self._claims, {"_id": request_id, "by": "refused", "at": now(), "attempts": 0})
        except DuplicateKeyError:
            existing = self._claims.find_one({"_id": request_id}) or {}
            return existing.get("by") != "worker"
        return True

    def _claim_for(self, request_id: str, claimant: str, fence: dict[str, Any] | None = None) -> Claim:
        """Insert a claim for `claimant`; returns the request's claim, whoever holds it."""
        at = now()
        claim = {"_id": request_id, "by": claimant, "at": at, "attempts": 1, **(fence or {})}
        existing: dict[str, Any] | None = claim
        try:
            self._inserts.insert(self._claims, claim)
        except DuplicateKeyError:
            existing = self._claims.find_one({"_id": request_id})
        if existing is None:  # removed in between (cannot happen while the request is open)
            return self._claim_for(request_id, claimant, fence)
        return Claim(
            by=str(existing["by"]),
            at=existing.get("at"),
            attempts=int(existing.get("attempts", 1)),
            fresh=existing is claim,
            epoch=int(existing.get("epoch", 0)),
            deadline=existing.get("deadline"),
            ended=int(existing.get("ended", 0)),
        )

    # -- the worker side ----------------------------------------------------------

    @translate_errors
    def claim(self, request_id: str, epoch: int, deadline: datetime) -> Claim:
        """Start the request's first attempt under a fence (lanes.lane.fencing), or find who
        started it before (a cancel, or an earlier holder: then `fresh` is False)."""
        return self._claim_for(request_id, "worker", {"epoch": epoch, "deadline": deadline})

    @translate_errors
    def recorded_outcome(self, request_id: str) -> dict[str, Any] | None:
        return self._outcomes.find_one({"_id": request_id})

    @translate_errors
    def finish(
        self,
        request_id: str,
        user_id: str,
        outcome: Outcome,
        attempts: int,
        action: str | None = None,
        started_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Record the one outcome of a request; the first writer wins and its outcome is returned."""
        document = {
            "_id": request_id,
            "user_id": user_id,
            "action": action,
            "status": outcome.status,
            "result_json": store_value(outcome.result),
            "error": outcome.error,
            "attempts": attempts,
            "started_at": started_at,
            "finished_at": now(),
        }
        try:
            self._inserts.insert(self._outcomes, document)
        except DuplicateKeyError:
            document = self._outcomes.find_one({"_id": request_id}) or document
        return document

    @translate_errors
    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        return list(self._dead_letters.find().sort("failed_at", -1).limit(limit))

    @translate_errors
    def dead_letter(self, request_id: str) -> dict[str, Any] | None:
        return self._dead_letters.find_one({"_id": request_id})

    @translate_errors
    def mark_requeued(self, request_id: str, new_request_id: str) -> None:
        self._dead_letters.update_one(
            {"_id": request_id}, {"$push": {"requeued_as": new_request_id}, "$set": {"requeued_at": now()}}
        )

    @translate_errors
    def record_dead_letter(self, record: dict[str, Any], error: str, attempts: int) -> None:
        document = {
            "_id": record["_id"],
            "user_id": record["user_id"],
            "action": record["action"],
            "data_json": record.get("data_json"),
            "error": error,
            "attempts": attempts,
            "failed_at": now(),
        }
        with contextlib.suppress(DuplicateKeyError):
            self._dead_letters.insert_one(document)


def _key_id(user_id: str, key: str) -> str:
    return hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()


def _derive(record: dict[str, Any], claim: dict[str, Any] | None, outcome: dict[str, Any] | None) -> dict[str, Any]:
    """The record with its status, attempts and times as its claim and outcome say."""
    derived = dict(record)
    if outcome is not None:
        derived.update(
            status=outcome["status"],
            result_json=outcome.get("result_json"),
            error=outcome.get("error"),
            attempts=outcome.get("attempts", 0),
            started_at=outcome.get("started_at"),
            finished_at=outcome.get("finished_at"),
        )
    elif claim is not None and claim.get("by") == "worker":
        derived.update(status="processing", attempts=claim.get("attempts", 1), started_at=claim.get("at"))
    elif claim is not None:  # a cancel that claimed it and died before recording the outcome
        derived.update(status="cancelled", attempts=0)
    else:
        derived.update(status="queued", attempts=0)
    return _in_order(derived, "created_at", "started_at", "finished_at")


def _in_order(record: dict[str, Any], *fields: str) -> dict[str, Any]:
    """Times written by different hosts may disagree by their clocks' difference: each is
    shown no earlier than the one before it, so created ≤ started ≤ finished always."""
    latest = None
    for name in fields:
        moment = record.get(name)
        if moment is not None and latest is not None and moment < latest:
            record[name] = moment = latest
        latest = moment if moment is not None else latest
    return record


def _record_from_outcome(outcome: dict[str, Any]) -> dict[str, Any]:
    created_at = datetime.fromtimestamp(accepted_at(outcome["_id"]), UTC)
    return {
        "_id": outcome["_id"],
        "user_id": outcome.get("user_id"),
        "action": outcome.get("action"),
        "created_at": created_at,
    }


@translate_errors
def outcomes_of(db: Database[dict[str, Any]], request_ids: list[str], *, batched: bool) -> dict[str, dict[str, Any]]:
    """The recorded outcomes of a listing page's requests, by request id.

    batched: one `$in` query on `_id`, which MongoDB answers from the `_id` index. Else one
    find by `_id` per request: FerretDB 1.24 pushes down only `_id` equality and answers
    `$in` by reading the whole collection, so there the batch costs more the longer the
    history (docs/security.md, "Cheap status", has the figures). Callers pass
    `batched=not is_ferretdb(db)`, asked once.
    """
    if not request_ids:
        return {}
    if batched:
        return {outcome["_id"]: outcome for outcome in db.outcomes.find({"_id": {"$in": request_ids}})}
    found = (db.outcomes.find_one({"_id": request_id}) for request_id in request_ids)
    return {outcome["_id"]: outcome for outcome in found if outcome is not None}
