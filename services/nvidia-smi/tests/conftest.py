"""Fixtures of the nvidia-smi tests; helpers live in smi_testlib (imported by name)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from smi_testlib import Runner, make_runner


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "rootfs: builds the standalone nvidia-smi and runs it in a Python-less Debian "
        "root filesystem via chroot (slow the first time: debootstrap)",
    )


@pytest.fixture
def smi(tmp_path: Path) -> Runner:
    """``smi(*args, node=..., **env)`` runs nvidia-smi in-process and returns its result."""
    return make_runner(tmp_path)
