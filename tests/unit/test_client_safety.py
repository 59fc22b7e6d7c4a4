"""The `lanes` command keeps tokens only where the user alone can reach them, says so before a
password crosses the network in clear, and never reads what a server sent as markup."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from lanes_client import cli, config
from rich.console import Console


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv("LANES_CONFIG_DIR", str(folder))
    return folder


def test_tokens_are_written_0600_under_a_fresh_name_in_a_folder_closed_to_others(config_dir: Path) -> None:
    config_dir.mkdir(mode=0o755)
    config_dir.chmod(0o755)
    # A link planted where the old, predictable partial name was goes untouched
    planted = config_dir / f".tokens.json.{os.getpid()}"
    victim = config_dir.parent / "victim"
    victim.write_text("keep")
    planted.symlink_to(victim)

    config.save_token("http://127.0.0.1:8080", "alice", "tok", 60)

    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700, "a looser folder is tightened"
    assert stat.S_IMODE((config_dir / "tokens.json").stat().st_mode) == 0o600
    assert victim.read_text() == "keep"
    assert sorted(p.name for p in config_dir.iterdir()) == sorted([planted.name, "tokens.json"])
    assert config.saved_token("http://127.0.0.1:8080")["access_token"] == "tok"  # type: ignore[index]


def test_a_linked_folder_or_token_file_is_not_used(config_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    config_dir.symlink_to(elsewhere)
    with pytest.raises(config.UnsafeConfigDir):
        config.save_token("http://127.0.0.1:8080", "alice", "tok", 60)
    assert list(elsewhere.iterdir()) == []

    (elsewhere / "real.json").write_text('{"http://x": {"access_token": "planted"}}')
    config_dir.unlink()
    config_dir.mkdir(mode=0o700)
    (config_dir / "tokens.json").symlink_to(elsewhere / "real.json")
    assert config.saved_token("http://x") is None, "a token file that is a link is not read"


@pytest.mark.skipif(os.getuid() != 0, reason="needs to give a folder to another user")
def test_a_folder_of_another_user_is_refused(config_dir: Path) -> None:
    config_dir.mkdir(mode=0o700)
    os.chown(config_dir, 65534, 65534)
    with pytest.raises(config.UnsafeConfigDir):
        config.save_token("http://127.0.0.1:8080", "alice", "tok", 60)


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://127.0.0.1:8080", False),
        ("http://localhost:8080", False),
        ("http://[::1]:8080", False),
        ("https://lanes.example.org", False),
        ("http://lanes.example.org", True),
        ("http://192.0.2.10:8080", True),
    ],
)
def test_a_password_over_plain_http_to_another_machine_is_warned_of(url: str, warned: bool) -> None:
    err = io.StringIO()
    env = cli.Env(url, False, Console(file=io.StringIO()), Console(file=err, width=200))
    cli.warn_if_cleartext(env)
    assert ("unencrypted" in err.getvalue()) is warned


class _FakeClient:
    RECORD: dict[str, Any] = {
        "request_id": "a" * 32,
        "action": "echo",
        "status": "failed",
        "attempts": 3,
        "created_at": "2026-01-01T00:00:00.000Z",
        "started_at": None,
        "finished_at": None,
        "error": "[bold red]boom[/] [link=http://evil.example]click[/link]",
        "result": "[blink]x[/blink]",
    }

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_record(self, request_id: str) -> dict[str, Any]:
        return self.RECORD


def test_what_a_handler_or_server_wrote_is_shown_as_text_never_as_markup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.Env, "client", lambda self, logged_in=True: _FakeClient())
    result = CliRunner().invoke(cli.main, ["status", "a" * 32])
    assert result.exit_code == 0, result.output
    assert "[bold red]boom[/] [link=http://evil.example]click[/link]" in result.output
    assert '"[blink]x[/blink]"' in result.output
