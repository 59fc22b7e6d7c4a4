"""A request as it travels in its lane, and which partition a lane lives in."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from lanes.broker import decode

# The message's headers (lanes.broker publishes them as AMQP headers).
REQUEST, USER, ACTION, CORRELATION = "lanes-request", "lanes-user", "lanes-action", "lanes-correlation"
LEDGER = "lanes-ledger"


def partition_of(user_id: str, partitions: int) -> int:
    return zlib.crc32(user_id.encode()) % partitions


@dataclass(frozen=True)
class LaneMessage:
    """A request as it travels in its lane: everything the worker needs to run it, so the
    worker never has to read the record (and a missing record never loses a request)."""

    request_id: str
    user_id: str
    action: str
    data_json: str
    correlation_id: str | None = None
    # The ledger of the enqueue process that accepted it, which alone is told it settled.
    ledger: str | None = None

    def headers(self) -> dict[str, str]:
        """What the worker needs besides the data, as AMQP headers: the body stays the data
        itself, compact UTF-8 JSON, never escaped again."""
        headers = {REQUEST: self.request_id, USER: self.user_id, ACTION: self.action}
        if self.correlation_id is not None:
            headers[CORRELATION] = self.correlation_id
        if self.ledger is not None:
            headers[LEDGER] = self.ledger
        return headers

    def body(self) -> bytes:
        return self.data_json.encode("utf-8")

    @classmethod
    def parse(cls, body: bytes, headers: dict[str, Any] | None) -> LaneMessage:
        """ValueError for a message that is not a request."""
        try:
            if headers and REQUEST in headers:
                return cls(
                    request_id=_text(headers[REQUEST]),
                    user_id=_text(headers[USER]),
                    action=_text(headers[ACTION]),
                    data_json=body.decode("utf-8"),
                    correlation_id=_text(headers[CORRELATION]) if CORRELATION in headers else None,
                    ledger=_text(headers[LEDGER]) if LEDGER in headers else None,
                )
            # Published before the headers: the whole request as one JSON object.
            fields = decode(body)
            return cls(
                request_id=str(fields["request_id"]),
                user_id=str(fields["user_id"]),
                action=str(fields["action"]),
                data_json=str(fields["data_json"]),
                correlation_id=fields.get("correlation_id"),
            )
        except (KeyError, TypeError, UnicodeDecodeError) as error:
            raise ValueError(f"not a request message: {error!r}") from None


def _text(value: Any) -> str:
    # pika hands AMQP long strings back as bytes
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def as_record(message: LaneMessage) -> dict[str, Any]:
    """The fields of a request that its message carries, shaped like a record."""
    record: dict[str, Any] = {
        "_id": message.request_id,
        "user_id": message.user_id,
        "action": message.action,
        "data_json": message.data_json,
    }
    if message.correlation_id is not None:
        record["correlation_id"] = message.correlation_id
    return record
