"""Helpers shared by the nvidia-smi tests (a uniquely named module: other suites in the same
pytest session have their own ``conftest``, so tests never ``import conftest``)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fgo_common.nodestate import write_node_state
from fgo_common.topology import NodeTopology
from fgo_nvidia_smi.main import run
from smi_fixtures import h100_capture_node

# The team's ground truth lives beside the repository (../shared); a verbatim copy in the
# repository keeps a clone that lacks it testable, and test_reference_copy keeps the two equal.
SHARED_REFERENCE = Path(__file__).resolve().parents[4] / "shared" / "reference" / "nvidia-smi-h100"
REFERENCE_COPY = Path(__file__).resolve().parent / "data" / "nvidia-smi-h100"
REFERENCE = SHARED_REFERENCE if SHARED_REFERENCE.is_dir() else REFERENCE_COPY
# 2026-11-26 19:10:12 UTC, the capture's time stamp: pins every sampled value.
CAPTURE_TIME = 1_795_720_212.0


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


def run_in_utc(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """nvidia-smi in-process with the process's TZ set to UTC (the time functions read the
    process's zone, as the bundle's do in a container with TZ=UTC); (exit code, stdout)."""
    import os
    import time

    out, err = io.StringIO(), io.StringIO()
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    try:
        time.tzset()
        code = run(args, out, err, env)
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()
    return code, out.getvalue()


def make_runner(tmp_path: Path) -> Runner:
    """``smi(*args, node=..., **env)`` runs nvidia-smi in-process and returns its result."""

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
