"""The correlation id: one id per HTTP request, carried to the worker that runs it.

A caller (or a gateway in front of Lanes) may send `X-Request-Id`; otherwise the
function makes one. It is echoed in the response, logged by the function, stored
with an accepted request and logged again by the worker, so one grep follows a
request from the 202 to its outcome. A malformed id is replaced, never trusted:
it ends up in log lines.
"""

from __future__ import annotations

import re
import uuid

from flask import Response, g, request

HEADER = "X-Request-Id"
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def take() -> None:
    """Before a request: adopt the caller's id if it is well-formed, else make one."""
    offered = request.headers.get(HEADER, "")
    g.correlation_id = offered if _VALID.match(offered) else uuid.uuid4().hex


def echo(response: Response) -> Response:
    """After a request: tell the caller which id its request was logged under."""
    if "correlation_id" in g:
        response.headers[HEADER] = g.correlation_id
    return response


def current() -> str | None:
    value = g.get("correlation_id")
    return value if isinstance(value, str) else None
