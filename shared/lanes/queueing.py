"""Accepting a request: its message into the user's lane first, then its record.

The order is the durability argument (docs/design.md, "Accepted means durable"):
1. an Idempotency-Key, if sent, is bound to the new request id (an insert), and marked
   once the publish is confirmed, so a retry knows whether to adopt or replace it;
2. the request's message, which carries everything needed to run it, is published to
   the lane with a publisher confirm: from here on it is on the broker's disk and runs;
   a refusal (full lane: 429) or a failure (503) leaves nothing behind to run;
   if the broker's answer is lost, the request id is refused (a claim no worker can
   take), so a copy that reached the lane after all is skipped;
3. the record is inserted, for reads and listings; should that fail, the request is
   accepted all the same (it is durable and will run, and its outcome makes it
   readable), so a 503 always means "never runs";
4. the client gets 202.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from lanes.errors import BrokerError, DatabaseError, TooManyRequests, Unavailable
from lanes.faults import maybe_crash
from lanes.lane.admission import LaneFull, PartitionPublisher
from lanes.lane.messages import LaneMessage
from lanes.requests import Requests, accepted_at, body_fingerprint, new_request_id, store_value
from lanes.settings import Settings
from lanes.validation import EnqueueBody

log = logging.getLogger("lanes.enqueue")


@dataclass(frozen=True)
class Accepted:
    record: dict[str, Any]
    position: int
    created: bool


class Enqueuer:
    def __init__(self, settings: Settings, requests: Requests, publisher: PartitionPublisher) -> None:
        self._settings = settings
        self._requests = requests
        self._publisher = publisher

    def enqueue(
        self, user_id: str, body: EnqueueBody, idempotency_key: str | None, correlation_id: str | None = None
    ) -> Accepted:
        fingerprint = body_fingerprint(body.action, body.data)
        request_id = new_request_id()
        message = LaneMessage(request_id, user_id, body.action, store_value(body.data), correlation_id)
        if idempotency_key is not None:
            earlier = self._bind_key(message, idempotency_key, fingerprint)
            if earlier is not None:
                return earlier
        try:
            position = self._publisher.publish(message, accepted_at(request_id))
        except LaneFull:
            self._release_key(user_id, idempotency_key)
            raise TooManyRequests(
                f"Your lane holds {self._settings.lane_depth_limit} requests already.",
                retry_after=self._settings.retry_after_seconds,
                code="lane_full",
            ) from None
        except BrokerError:
            # Not confirmed, yet it may have reached the lane: refuse the id, so that a copy
            # that did arrive is skipped, and a 503 keeps meaning "never runs".
            if self._refuse(request_id):
                self._release_key(user_id, idempotency_key)
                raise self._unavailable("The message broker is unavailable.") from None
            position = 0  # a worker started it already: it did arrive
        if idempotency_key is not None:
            self._mark_published(user_id, idempotency_key)
        maybe_crash("after_publish", self._settings.fault_crash_after_store)
        record = self._store(message, fingerprint)
        return Accepted(record=record, position=position, created=True)

    def _bind_key(self, message: LaneMessage, key: str, fingerprint: str) -> Accepted | None:
        """Bind the key to this message's request; or answer with the request it is bound to.

        An earlier attempt under the key that stopped before storing its record is finished
        here: adopted if its publish was confirmed (or a worker started it), else refused
        and replaced by this one, so the key never stands for two runs."""
        user_id = message.user_id
        try:
            binding = self._requests.reserve_key(user_id, key, message.request_id, fingerprint)
            if binding is None:
                return None
            earlier_id = str(binding["request_id"])
            earlier = self._requests.get(earlier_id)
            if earlier is None and (binding.get("published") or not self._requests.refuse(earlier_id)):
                self._store(replace(message, request_id=earlier_id), fingerprint)
                earlier = self._requests.get(earlier_id)
        except DatabaseError:
            raise self._unavailable("The database is unavailable.") from None
        if earlier is not None:
            return Accepted(record=earlier, position=0, created=False)
        self._release_key(user_id, key)
        return self._bind_key(message, key, fingerprint)

    def _store(self, message: LaneMessage, fingerprint: str) -> dict[str, Any]:
        try:
            return self._requests.create(
                message.request_id,
                message.user_id,
                message.action,
                message.data_json,
                fingerprint,
                message.correlation_id,
            )
        except DatabaseError as error:
            log.warning(
                "accepted without a record (the worker's outcome will make it readable): %s",
                error,
                extra={"request_id": message.request_id, "user_id": message.user_id},
            )
            return {"_id": message.request_id, "user_id": message.user_id, "action": message.action}

    def _refuse(self, request_id: str) -> bool:
        """True when the request can no longer start; False when a worker started it already."""
        try:
            return self._requests.refuse(request_id)
        except DatabaseError:
            log.warning("could not refuse a request whose publish failed", extra={"request_id": request_id})
            return True

    def _mark_published(self, user_id: str, key: str) -> None:
        try:
            self._requests.mark_published(user_id, key)
        except DatabaseError:
            pass  # a retry under this key then refuses this id and publishes a new one

    def _release_key(self, user_id: str, key: str | None) -> None:
        if key is None:
            return
        try:
            self._requests.release_key(user_id, key)
        except DatabaseError:
            pass

    def _unavailable(self, message: str) -> Unavailable:
        return Unavailable(message, retry_after=self._settings.retry_after_seconds)
