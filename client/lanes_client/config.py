"""Where the `lanes` command keeps its tokens: one file in the user's config folder, mode 0600.

The folder is `LANES_CONFIG_DIR` when set, else click's per-user application folder
(`$XDG_CONFIG_HOME/lanes`, usually `~/.config/lanes`). Tokens are kept per base URL;
passwords never are.

A token is as good as the password for its lifetime, so the folder must be the user's
own: a real folder (not a link), owned by the user, closed to others (a looser mode is
tightened to 0700; a folder owned by someone else is refused). The file is written
under a fresh name (`mkstemp`: O_EXCL, 0600, never through a link someone planted) and
renamed over the old one, and read without following a link.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from lanes_client.errors import LanesError

FILE_NAME = "tokens.json"


class UnsafeConfigDir(LanesError):
    """The config folder is not one only this user controls; no token is kept there."""


def config_dir() -> Path:
    return Path(os.environ.get("LANES_CONFIG_DIR") or click.get_app_dir("lanes"))


def token_file() -> Path:
    return config_dir() / FILE_NAME


def private_dir() -> Path:
    """The config folder, made if missing, checked to be the user's own and closed to others."""
    folder = config_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeConfigDir(f"{folder} is not a folder (a link?); no token is kept there")
    if info.st_uid != os.getuid():
        raise UnsafeConfigDir(f"{folder} belongs to another user; no token is kept there")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(folder, 0o700)
    return folder


def _load() -> dict[str, Any]:
    try:
        descriptor = os.open(token_file(), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(descriptor) as file:
            data = json.load(file)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(data: dict[str, Any]) -> None:
    folder = private_dir()
    descriptor, partial = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=folder)  # O_EXCL, 0600
    try:
        with os.fdopen(descriptor, "w") as out:
            json.dump(data, out, indent=2)
        os.replace(partial, folder / FILE_NAME)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


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
