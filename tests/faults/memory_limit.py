"""A memory limit for one process, as a container runtime sets it: a cgroup of its own
with the limit, whose OOM killer ends the process when its memory passes it.

cgroup v2 where its memory controller is enabled, else v1's memory hierarchy; a test
skips on a machine with neither (no container runtime could limit memory there either).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


class MemoryLimit:
    """A cgroup with `limit_bytes` of memory (and no swap) that processes can be started in."""

    def __init__(self, name: str, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.v2 = "memory" in _read(CGROUP_ROOT / "cgroup.subtree_control").split()
        parent = CGROUP_ROOT if self.v2 else CGROUP_ROOT / "memory"
        self.path = parent / f"{name}-{os.getpid()}"
        self.path.mkdir(exist_ok=True)
        if self.v2:
            (self.path / "memory.max").write_text(str(limit_bytes))
            _write_if_there(self.path / "memory.swap.max", "0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            _write_if_there(self.path / "memory.memsw.limit_in_bytes", str(limit_bytes))

    @staticmethod
    def available() -> str | None:
        """Why no limit can be set here, or None when it can."""
        if "memory" in _read(CGROUP_ROOT / "cgroup.subtree_control").split():
            return None if os.access(CGROUP_ROOT, os.W_OK) else "cgroup v2 is not writable"
        v1 = CGROUP_ROOT / "memory"
        if (v1 / "memory.limit_in_bytes").exists():
            return None if os.access(v1, os.W_OK) else "the cgroup v1 memory hierarchy is not writable"
        return "no cgroup memory controller on this machine"

    def command(self, argv: list[str]) -> list[str]:
        """`argv`, run inside the cgroup: the shell moves itself in, then becomes the process."""
        procs = self.path / "cgroup.procs"
        return ["/bin/sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "in-cgroup", *argv]

    def oom_kills(self) -> int:
        text = _read(self.path / ("memory.events" if self.v2 else "memory.oom_control"))
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def peak_bytes(self) -> int:
        """The most memory the cgroup's processes used at once (0: the kernel does not say)."""
        text = _read(self.path / ("memory.peak" if self.v2 else "memory.max_usage_in_bytes"))
        return int(text) if text.strip().isdigit() else 0

    def remove(self) -> None:
        for _ in range(50):  # the kernel lets go of an emptied cgroup a moment after its last process
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write_if_there(path: Path, value: str) -> None:
    if path.exists():
        path.write_text(value)
