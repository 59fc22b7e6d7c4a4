"""Pure checks of everything a client sends. Plain values in, plain values or ValidationError out."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lanes.errors import ValidationError

USERNAME_MAX = 64
USERNAME_RE = re.compile(r"[A-Za-z0-9_.\-]{3,64}")
PASSWORD_MIN, PASSWORD_MAX = 8, 1024
ACTION_RE = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
REQUEST_ID_RE = re.compile(r"[0-9a-f]{32}")
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,128}")
STATUSES = ("queued", "processing", "done", "failed", "cancelled")
LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX = 50, 200
LIMIT_RE = re.compile(r"[0-9]{1,4}")
# How deep a body may nest. MongoDB stores documents up to 100 levels, and Python's own
# recursion limit is reached near 1,000 when a deeper value is serialised again
# (storing, listing): refusing at the door is the only place that is a clean 400.
MAX_JSON_DEPTH = 100


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class EnqueueBody:
    action: str
    data: Any


@dataclass(frozen=True)
class ListQuery:
    status: str | None
    limit: int
    after: str | None


def json_value(value: Any) -> Any:
    """A parsed JSON value that can be stored and served again as JSON, or ValidationError.

    json.loads accepts three things that fail later, far from the client: lone UTF-16
    surrogates from `\\ud800` escapes (not encodable as UTF-8), numbers that overflow to
    infinity (`1e999`, served back as the invalid `Infinity`), and nesting deeper than
    the stored form allows.
    """
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            _require_encodable(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValidationError("Numbers must be finite.", code="invalid_json")
        elif isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ValidationError(f"The body nests deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json")
            if isinstance(item, dict):
                for key in item:
                    _require_encodable(key)
                pending.extend((child, depth + 1) for child in item.values())
            else:
                pending.extend((child, depth + 1) for child in item)
    return value


def _require_encodable(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Strings must not hold lone surrogates.", code="invalid_json") from None


def require_object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise ValidationError("The body must be a JSON object.", code="invalid_body")
    return body


def credentials(body: Any, *, check_rules: bool) -> Credentials:
    """Username and password from a JSON body.

    check_rules: apply the registration rules; login checks types and lengths only, so
    that a malformed name gets the same 401 as an unknown one, while no name or password
    longer than any registration allows costs a lookup, a log line or a hash.
    """
    body = require_object(body)
    unknown = set(body) - {"username", "password"}
    if unknown:
        raise ValidationError(f"Unknown field: {sorted(unknown)[0]}.", code="unknown_field")
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str):
        raise ValidationError("username must be a string.", code="invalid_username")
    if not isinstance(password, str):
        raise ValidationError("password must be a string.", code="invalid_password")
    if len(username) > USERNAME_MAX:
        raise ValidationError(f"username must be at most {USERNAME_MAX} characters.", code="invalid_username")
    if len(password) > PASSWORD_MAX:
        raise ValidationError(f"password must be at most {PASSWORD_MAX} characters.", code="invalid_password")
    if check_rules:
        if not USERNAME_RE.fullmatch(username):
            raise ValidationError(
                "username must be 3-64 ASCII letters, digits, '_', '.' or '-'.",
                code="invalid_username",
            )
        if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX or "\x00" in password:
            raise ValidationError(
                f"password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters without NUL.",
                code="invalid_password",
            )
    return Credentials(username=username, password=password)


def username_key(username: str) -> str:
    """The case-insensitive identity of a username (ASCII only, so lower() is exact)."""
    return username.lower()


def enqueue_body(body: Any, known_actions: frozenset[str]) -> EnqueueBody:
    body = require_object(body)
    unknown = set(body) - {"action", "data"}
    if unknown:
        raise ValidationError(f"Unknown field: {sorted(unknown)[0]}.", code="unknown_field")
    action = body.get("action", "echo")
    if not isinstance(action, str) or not ACTION_RE.fullmatch(action):
        raise ValidationError("action must be a short lower-case name.", code="invalid_action")
    if action not in known_actions:
        raise ValidationError(f"Unknown action {action!r}.", code="unknown_action")
    return EnqueueBody(action=action, data=body.get("data"))


def idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not IDEMPOTENCY_KEY_RE.fullmatch(raw):
        raise ValidationError("Idempotency-Key must be 1-128 visible ASCII characters.", code="invalid_idempotency_key")
    return raw


def request_id(raw: str) -> str | None:
    """A well-formed request id, or None (the caller answers 404: ids are not secrets to probe)."""
    return raw if REQUEST_ID_RE.fullmatch(raw) else None


def list_query(args: Mapping[str, str]) -> ListQuery:
    unknown = set(args) - {"status", "limit", "after"}
    if unknown:
        raise ValidationError(f"Unknown parameter: {sorted(unknown)[0]}.", code="unknown_parameter")
    status = args.get("status") or None
    if status is not None and status not in STATUSES:
        raise ValidationError(f"status must be one of {', '.join(STATUSES)}.", code="invalid_status")
    raw_limit = args.get("limit", str(LIST_LIMIT_DEFAULT))
    # Not str.isdigit(): it is true for '²' and other digits int() refuses.
    if not LIMIT_RE.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= LIST_LIMIT_MAX:
        raise ValidationError(f"limit must be 1-{LIST_LIMIT_MAX}.", code="invalid_limit")
    after = args.get("after") or None
    if after is not None and not REQUEST_ID_RE.fullmatch(after):
        raise ValidationError("after must be a request_id.", code="invalid_after")
    return ListQuery(status=status, limit=int(raw_limit), after=after)
