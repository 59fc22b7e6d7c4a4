"""JSON logs: one object per line, with the request's identifiers when a record carries them."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else was passed through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# Never written, whatever a caller passes: secrets have no business in logs.
_SECRET_KEYS = {"password", "password_hash", "token", "access_token", "authorization", "jwt_secret"}
# ...and whatever a message or traceback carries by accident (a library quoting a
# query, an exception holding a document) is cut out by shape: JWTs, password
# hashes, PEM private keys and credentials in URLs.
_SECRET_SHAPES = (
    (re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"), "[redacted token]"),
    (re.compile(r"\$argon2(?:id|i|d)\$[^\s\"',}]+"), "[redacted hash]"),
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S),
        "[redacted key]",
    ),
    (re.compile(r"(?<=://)[^/\s:@\"]+:[^/\s@\"]+(?=@)"), "[redacted]"),
)


def redact(text: str) -> str:
    """`text` with anything shaped like a token, a password hash or a key replaced."""
    for shape, replacement in _SECRET_SHAPES:
        text = shape.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, function: str) -> None:
        super().__init__()
        self._function = function

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname.lower(),
            "function": self._function,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key.lower() not in _SECRET_KEYS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error_type"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


class AccessFormatter(JsonFormatter):
    """gunicorn's access log as JSON: chosen fields only, never a query string or a header
    other than the correlation id (a query or a header may carry a credential)."""

    _ATOMS = {"m": "method", "U": "path", "s": "status", "M": "duration_ms", "B": "bytes", "h": "remote_addr"}

    def format(self, record: logging.LogRecord) -> str:
        atoms: Mapping[str, Any] = record.args if isinstance(record.args, Mapping) else {}
        fields = {name: _number(atoms.get(atom)) for atom, name in self._ATOMS.items()}
        fields["correlation_id"] = atoms.get("{x-request-id}o")
        access = logging.makeLogRecord({**vars(record), "msg": "http access", "args": None, **fields})
        return super().format(access)


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.isdigit() else value


def configure_logging(function: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(function))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pika logs every connection hiccup at WARNING with tracebacks; ours say it once.
    logging.getLogger("pika").setLevel(logging.ERROR)
    # pymongo's DEBUG lines quote whole commands: user documents, tokens' ids.
    logging.getLogger("pymongo").setLevel(max(logging.INFO, root.level))


def gunicorn_logconfig(function: str, level: str = "INFO", access: bool = False) -> dict[str, Any]:
    """A logging.config dictionary that makes gunicorn's own error and access logs JSON lines.

    The access log is off unless asked for: each function already logs every request
    (with its user and correlation id), and probes would otherwise flood it.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": JsonFormatter, "function": function},
            "access": {"()": AccessFormatter, "function": function},
        },
        "handlers": {
            "json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stderr"},
        },
        "root": {"level": level.upper(), "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["json"], "propagate": False},
            "gunicorn.access": {
                "level": "INFO" if access else "WARNING",
                "handlers": ["access"],
                "propagate": False,
            },
        },
    }
