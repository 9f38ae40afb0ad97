"""The bad-input corpus (docs/reliability.md, "Bad input"): every surface that takes input from
a user or another component gets malformed, hostile and huge inputs; each must produce a clear
error (or Event) and a safe fallback, never a crash.

Tests count what they tried per surface (``badinput_counts.tried``); the totals are printed at
the end of the session and written to ``FGO_BADINPUT_RESULTS`` (default
``bench-results/badinput/counts.json``). Unit-tier tests need no cluster; the ones that do are
marked ``integration`` (the live status-updater).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

# The helper modules next to this file are imported by name.
sys.path.insert(0, str(Path(__file__).parent))

from badinput_counts import TRIED

REPO = Path(__file__).resolve().parents[2]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TRIED:
        return
    terminalreporter.section("bad inputs tried per surface")
    for surface, count in sorted(TRIED.items()):
        terminalreporter.write_line(f"{count:7d}  {surface}")
    target = Path(
        os.environ.get("FGO_BADINPUT_RESULTS", REPO / "bench-results" / "badinput" / "counts.json")
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(dict(sorted(TRIED.items())), indent=2) + "\n")
