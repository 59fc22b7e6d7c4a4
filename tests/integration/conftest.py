"""Integration suite: prints the hostile-input table (tests/integration/test_hostile_probes.py)
at the end of the run, as the fault suite prints its scenarios."""

from __future__ import annotations

from typing import Any

from tests.integration.hostile import TABLE


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TABLE.rows:
        return
    terminalreporter.section("hostile input")
    for line in TABLE.lines():
        terminalreporter.write_line(line)
