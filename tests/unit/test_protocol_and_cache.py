"""Pure pieces of the lane protocol: the message format, verified tokens, the write concern."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from lanes.db import connect
from lanes.errors import AuthError
from lanes.lane.messages import LaneMessage
from lanes.settings import Settings
from lanes.tokens import TokenService


def test_a_lane_message_carries_the_whole_request_and_round_trips() -> None:
    message = LaneMessage("r1", "u1", "echo", '{"a":[1,2]}', "corr-1", ledger="ledger-1")
    assert LaneMessage.parse(message.body(), message.headers()) == message
    plain = LaneMessage("r2", "u2", "sleep", "null")
    parsed = LaneMessage.parse(plain.body(), plain.headers())
    assert (parsed.correlation_id, parsed.ledger) == (None, None)


def test_a_lane_message_body_is_the_data_as_compact_utf8() -> None:
    # Given data of 2,000 non-ASCII characters: escaped JSON inside JSON tripled it on the wire
    data_json = '{"text":"' + "é" * 2000 + '"}'
    message = LaneMessage("r1", "u1", "echo", data_json)
    assert message.body() == data_json.encode("utf-8")
    assert len(message.body()) == len(data_json.encode("utf-8")) <= 2 * 2000 + 20
    assert LaneMessage.parse(message.body(), message.headers()).data_json == data_json


def test_a_message_published_before_the_headers_is_still_read() -> None:
    body = b'{"request_id":"r1","user_id":"u1","action":"echo","data_json":"{}"}'
    assert LaneMessage.parse(body, None) == LaneMessage("r1", "u1", "echo", "{}")


def test_headers_pika_hands_back_as_bytes_are_read_as_text() -> None:
    headers = {key: value.encode() for key, value in LaneMessage("r1", "u1", "echo", "1").headers().items()}
    assert LaneMessage.parse(b"1", headers) == LaneMessage("r1", "u1", "echo", "1")


@pytest.mark.parametrize("body", [b"[]", b"{}", b'{"request_id": "r"}', b"not json"])
def test_a_malformed_lane_message_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        LaneMessage.parse(body, None)


@pytest.mark.parametrize("headers", [{"lanes-request": "r"}, {"lanes-request": "r", "lanes-user": "u"}])
def test_a_message_missing_a_header_is_a_value_error(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        LaneMessage.parse(b"{}", headers)


def test_a_verified_token_is_not_checked_again_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    service = TokenService(Settings(jwt_secret="s" * 40, jwt_expires_seconds=60))
    token = service.issue("u1", "ada").access_token
    claims = service.verify(token)
    checks: list[str] = []
    decode = jwt.decode

    def counted(*args: Any, **kwargs: Any) -> Any:
        checks.append("decode")
        return decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counted)
    assert service.verify(token) is claims and checks == []  # the same bytes: no second signature check
    # Past `exp` and its leeway (on this process's clock), the token is decoded again,
    # and PyJWT (on its own clock, not moved here) decides whether it expired.
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 66)
    assert service.verify(token) == claims and checks == ["decode"]


def test_a_token_that_differs_by_a_byte_is_checked_again() -> None:
    service = TokenService(Settings(jwt_secret="s" * 40))
    token = service.issue("u1", "ada").access_token
    service.verify(token)
    with pytest.raises(AuthError):
        service.verify(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1])


def test_writes_wait_for_a_majority_and_the_journal() -> None:
    # pymongo connects lazily: this needs no server.
    concern = connect(Settings()).client.write_concern.document
    assert concern == {"w": "majority", "j": True}
