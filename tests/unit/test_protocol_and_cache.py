"""Pure pieces of lane protocol v2: the message format, the auth cache's bound, the write concern."""

from __future__ import annotations

import pytest

from lanes.db import connect
from lanes.protocol import LaneMessage, token_body, token_owner
from lanes.settings import Settings
from lanes.users import RecentUsers, User


def test_a_lane_message_carries_the_whole_request_and_round_trips() -> None:
    message = LaneMessage("r1", "u1", "echo", '{"a":[1,2]}', "corr-1")
    assert LaneMessage.parse(message.body()) == message
    assert LaneMessage.parse(LaneMessage("r2", "u2", "sleep", "null").body()).correlation_id is None


@pytest.mark.parametrize("body", [b"[]", b"{}", b'{"request_id": "r"}', b"not json"])
def test_a_malformed_lane_message_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        LaneMessage.parse(body)


def test_a_token_names_its_lane_and_a_bad_one_is_a_value_error() -> None:
    assert token_owner(token_body("u9")) == "u9"
    with pytest.raises(ValueError):
        token_owner(b'{"user": "u9"}')


def test_a_remembered_user_expires_after_the_bound_and_logout_forgets_at_once() -> None:
    now = [100.0]
    recent = RecentUsers(5, clock=lambda: now[0])
    user = User(id="u1", username="ada")
    recent.put("jti-1", user)
    recent.put("jti-2", user)
    now[0] += 2.4
    assert recent.get("jti-1") == user  # each entry lives at least half the bound
    now[0] += 2.7
    assert recent.get("jti-1") is None  # past AUTH_CACHE_SECONDS: asked again
    recent.forget("jti-2")
    assert recent.get("jti-2") is None


def test_a_zero_bound_remembers_nothing() -> None:
    recent = RecentUsers(0)
    recent.put("jti", User(id="u", username="u"))
    assert recent.get("jti") is None


def test_writes_wait_for_a_majority_and_the_journal() -> None:
    # pymongo connects lazily: this needs no server.
    concern = connect(Settings()).client.write_concern.document
    assert concern == {"w": "majority", "j": True}
