"""docs/rbac.md is generated from the chart (hack/rbac-report.py) and must be up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from chartlib import ROOT


def test_rbac_report_is_up_to_date(bin_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "rbac-report.py"), "--check"],
        capture_output=True,
        text=True,
        env={"FGO_BIN_DIR": str(bin_dir), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_rbac_report_lists_every_component() -> None:
    text = (ROOT / "docs" / "rbac.md").read_text()
    for sa in ("fgo-status-updater", "fgo-device-plugin", "fgo-kwok-gpu-capacity",
               "fgo-dra-plugin", "fgo-kwok-dra-plugin", "fgo-status-exporter"):  # fmt: skip
        assert f"## `{sa}`" in text, sa
