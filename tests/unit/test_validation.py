from typing import Any

import pytest

from lanes import validation
from lanes.errors import ValidationError

ACTIONS = frozenset({"echo", "sleep"})


@pytest.mark.parametrize("username", ["abc", "Alice_01", "a.b-c", "x" * 64])
def test_valid_usernames_are_kept_as_typed(username: str) -> None:
    credentials = validation.credentials({"username": username, "password": "p" * 8}, check_rules=True)
    assert credentials.username == username


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "alice",
        {"username": "ab", "password": "p" * 8},
        {"username": "x" * 65, "password": "p" * 8},
        {"username": "bad name", "password": "p" * 8},
        {"username": "ålice", "password": "p" * 8},
        {"username": {"$gt": ""}, "password": "p" * 8},
        {"username": "alice", "password": {"$ne": None}},
        {"username": "alice", "password": "short"},
        {"username": "alice", "password": "p" * 1025},
        {"username": "alice", "password": "pass\x00word"},
        {"username": "alice", "password": "p" * 8, "admin": True},
        {"password": "p" * 8},
    ],
)
def test_invalid_registrations_are_rejected(body: Any) -> None:
    with pytest.raises(ValidationError):
        validation.credentials(body, check_rules=True)


def test_login_accepts_any_string_so_bad_names_get_the_same_401() -> None:
    assert validation.credentials({"username": "a", "password": "b"}, check_rules=False).username == "a"


def test_username_key_is_case_insensitive() -> None:
    assert validation.username_key("Alice") == validation.username_key("aLICE")


def test_enqueue_body_defaults_to_echo() -> None:
    assert validation.enqueue_body({}, ACTIONS) == validation.EnqueueBody(action="echo", data=None)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"action": "rm -rf"}, "invalid_action"),
        ({"action": 5}, "invalid_action"),
        ({"action": "launch"}, "unknown_action"),
        ({"action": "echo", "extra": 1}, "unknown_field"),
        ([1, 2], "invalid_body"),
    ],
)
def test_bad_enqueue_bodies_name_their_problem(body: Any, code: str) -> None:
    with pytest.raises(ValidationError) as raised:
        validation.enqueue_body(body, ACTIONS)
    assert raised.value.code == code


@pytest.mark.parametrize(
    "args",
    [
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "ten"},
        {"limit": "\u00b2"},  # '²' passes str.isdigit() but not int()
        {"limit": "\u0661"},  # an Arabic-Indic one: int() takes it, but it is not ASCII
        {"limit": "9" * 5000},
        {"status": "lost"},
        {"after": "../etc"},
        {"sort": "x"},
    ],
)
def test_bad_list_queries_are_rejected(args: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        validation.list_query(args)


def test_list_query_defaults() -> None:
    assert validation.list_query({}) == validation.ListQuery(status=None, limit=50, after=None)


def test_malformed_request_ids_are_treated_as_absent() -> None:
    assert validation.request_id("../../admin") is None
    assert validation.request_id("0" * 32) == "0" * 32


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        "\ud800",
        {"data": ["ok", {"deep": "x\udfffy"}]},
        {"\udc00key": 1},
        {"data": float("inf")},
        [float("-inf")],
        {"data": float("nan")},
        _nested(validation.MAX_JSON_DEPTH + 1),
        _nested(980),
    ],
)
def test_json_values_that_cannot_be_stored_or_served_again_are_refused(value: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        validation.json_value(value)
    assert raised.value.code == "invalid_json"


@pytest.mark.parametrize(
    "value", [None, "héllo ✓ 🚀", {"a.b": [1, 2.5, -1e308, 10**40]}, _nested(validation.MAX_JSON_DEPTH)]
)
def test_json_values_that_round_trip_are_kept(value: Any) -> None:
    assert validation.json_value(value) is value
