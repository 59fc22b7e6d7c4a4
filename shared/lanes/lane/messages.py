"""A request as it travels in its lane, and which partition a lane lives in."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from lanes.broker import decode, encode


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

    def body(self) -> bytes:
        fields = {"request_id": self.request_id, "user_id": self.user_id, "action": self.action}
        fields["data_json"] = self.data_json
        if self.correlation_id is not None:
            fields["correlation_id"] = self.correlation_id
        return encode(fields)

    @classmethod
    def parse(cls, body: bytes) -> LaneMessage:
        """ValueError for a body that is not a request message."""
        try:
            fields = decode(body)
            return cls(
                request_id=str(fields["request_id"]),
                user_id=str(fields["user_id"]),
                action=str(fields["action"]),
                data_json=str(fields["data_json"]),
                correlation_id=fields.get("correlation_id"),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a request message: {error!r}") from None


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
