"""Shared fixtures: a node state directory per test and an in-process runner of nvidia-smi."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fgo_common.nodestate import write_node_state
from fgo_common.topology import NodeTopology
from fgo_nvidia_smi.main import run
from smi_fixtures import h100_capture_node

REFERENCE = Path(__file__).resolve().parents[4] / "shared" / "reference" / "nvidia-smi-h100"
# 2026-11-26 19:10:12 UTC, the capture's time stamp: pins every sampled value.
CAPTURE_TIME = 1_795_720_212.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "rootfs: builds the standalone nvidia-smi and runs it in a Python-less Debian "
        "root filesystem via chroot (slow the first time: debootstrap)",
    )


@dataclass
class Result:
    code: int
    out: str
    err: str


Runner = Callable[..., Result]


def make_env(state_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        "FGO_STATE_DIR": str(state_dir),
        "FGO_SMI_TIME": str(CAPTURE_TIME),
        "TZ": "UTC",
        "HOSTNAME": "test-pod",
    }
    env.update(extra)
    return env


@pytest.fixture
def state_dir(tmp_path: Path) -> Callable[[NodeTopology], Path]:
    def write(node: NodeTopology) -> Path:
        directory = tmp_path / "state"
        write_node_state(directory, node)
        return directory

    return write


@pytest.fixture
def smi(tmp_path: Path) -> Runner:
    """``smi(*args, node=..., env=...)`` runs nvidia-smi in-process and returns its result."""

    def call(*args: str, node: NodeTopology | None = None, **env: str) -> Result:
        directory = tmp_path / "state"
        write_node_state(directory, node if node is not None else h100_capture_node())
        out, err = io.StringIO(), io.StringIO()
        code = run(list(args), out, err, make_env(directory, **env))
        return Result(code, out.getvalue(), err.getvalue())

    return call


def reference(name: str) -> tuple[str, str, int]:
    """(command line, output, exit code) of a capture file."""
    lines = (REFERENCE / name).read_text().splitlines(keepends=True)
    assert lines[0].startswith("$ ") and lines[-1].startswith("[exit ")
    return lines[0][2:].strip(), "".join(lines[1:-1]), int(lines[-1][6:-2])
