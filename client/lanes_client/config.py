"""Where the `lanes` command keeps its tokens: one file in the user's config folder, mode 0600.

The folder is `LANES_CONFIG_DIR` when set, else click's per-user application folder
(`$XDG_CONFIG_HOME/lanes`, usually `~/.config/lanes`). Tokens are kept per base URL;
passwords never are.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

FILE_NAME = "tokens.json"


def config_dir() -> Path:
    return Path(os.environ.get("LANES_CONFIG_DIR") or click.get_app_dir("lanes"))


def token_file() -> Path:
    return config_dir() / FILE_NAME


def _load() -> dict[str, Any]:
    try:
        data = json.loads(token_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(data: dict[str, Any]) -> None:
    folder = config_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = folder / f".{FILE_NAME}.{os.getpid()}"
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(data, out, indent=2)
    os.chmod(partial, 0o600)  # whatever the umask was
    os.replace(partial, token_file())


def saved_token(base_url: str) -> dict[str, Any] | None:
    """`{access_token, username, expires_at}` saved for this base URL, or None."""
    entry = _load().get(base_url)
    return entry if isinstance(entry, dict) and entry.get("access_token") else None


def save_token(base_url: str, username: str, access_token: str, expires_in: float) -> None:
    data = _load()
    data[base_url] = {"access_token": access_token, "username": username, "expires_at": time.time() + expires_in}
    _store(data)


def forget_token(base_url: str) -> None:
    data = _load()
    if data.pop(base_url, None) is not None:
        _store(data)
