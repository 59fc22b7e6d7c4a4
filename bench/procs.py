"""The processes a benchmark run starts, each stopped by its own PID when the run ends.

Every child gets a session of its own, so a Ctrl-C in the terminal reaches only the
benchmark, which then stops its children in reverse order of starting: first with
SIGTERM (they drain), then, past a grace period, with SIGKILL to the child's own
process group (the one it leads because we started it in a new session).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

# Set when the run is interrupted: every load loop checks it and returns at once.
STOP = threading.Event()


class Processes:
    """Start, track and stop child processes; output goes to one log file per child."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._running.append((name, process))
        return process

    def run(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> str:
        """Run a command to its end (at most `timeout` seconds) and return its standard output."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        self._running.append((name, process))
        try:
            out, _ = process.communicate(timeout=timeout)
        finally:
            self.stop(process, grace=2)
        return out.decode(errors="replace")

    def alive(self, process: subprocess.Popen[bytes]) -> bool:
        return process.poll() is None

    def stop(self, process: subprocess.Popen[bytes], grace: float = 30.0, signum: int = signal.SIGTERM) -> None:
        """`signum` (SIGTERM), wait up to `grace` seconds, then SIGKILL its process group; forget it."""
        began = time.monotonic()
        if process.poll() is None:
            _signal(process.pid, signum)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        # A leader that exited may leave children behind (it should not); end them too.
        _end_group(process.pid)
        name = next((n for n, p in self._running if p is process), "?")
        self._running = [(n, p) for n, p in self._running if p is not process]
        if (took := time.monotonic() - began) > 3:
            with (self.log_dir / "bench.log").open("a") as log:
                log.write(f"stopping {name} (pid {process.pid}) took {took:.1f} s\n")

    def stop_all(self, grace: float = 30.0) -> None:
        """Stop every child still tracked, newest first; their SIGTERMs go out together."""
        running = list(reversed(self._running))
        for _name, process in running:
            if process.poll() is None:
                _signal(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _name, process in running:
            self.stop(process, grace=max(0.5, deadline - time.monotonic()))


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _end_group(pgid: int) -> None:
    if not _signal_group(pgid, 0):
        return
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not _signal_group(pgid, 0):
            return
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
