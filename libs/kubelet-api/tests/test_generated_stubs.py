"""The committed stubs are exactly what hack/gen-protos.sh produces from the .proto files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is needed to run hack/gen-protos.sh")
def test_generated_stubs_are_up_to_date() -> None:
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "gen-protos.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
