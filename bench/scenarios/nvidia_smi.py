"""Scenario 4, nvidia-smi: wall time of one invocation, as a GPU pod's shell sees it.

The fake nvidia-smi reads the node-local state file the node agents write (fgo_common.nodestate);
here that file is written for an 8-GPU node of the benchmark's GPU type, and each command is run
as a fresh process (interpreter start-up and imports included, which is what a user waits for).
Measured for the console script in the workspace venv and, when one has been built, the
packaged standalone executable (services/nvidia-smi, PyInstaller).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import stats
from bench.env import POOL, chart_values
from bench.results import ScenarioResult
from bench.scenarios.context import RunContext

NAME = "nvidia-smi"
TITLE = "nvidia-smi invocation time"
NEEDS_CLUSTER = False

COMMANDS: list[list[str]] = [
    [],
    ["-L"],
    ["--query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total", "--format=csv"],
    ["-q"],
]
# Where a packaged build may be (first match wins); BENCH_NVIDIA_SMI overrides.
PACKAGED_CANDIDATES = (
    "build/nvidia-smi/dist/nvidia-smi/nvidia-smi",  # services/nvidia-smi/build.sh
    "services/nvidia-smi/dist/nvidia-smi",
    "services/nvidia-smi/dist/nvidia-smi/nvidia-smi",
    "build/nvidia-smi/nvidia-smi",
    "dist/nvidia-smi",
)


def write_state(directory: Path, ctx: RunContext) -> None:
    from fgo_common.config import parse_cluster_config
    from fgo_common.nodebuild import build_node_topology
    from fgo_common.nodestate import write_node_state

    config = parse_cluster_config(chart_values(ctx.config)["topology"])
    topology = build_node_topology("bench-smi-node", config.pools[POOL], config, kwok=True)
    write_node_state(directory, topology)


def executables(repo: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    script = Path(sys.executable).parent / "nvidia-smi"
    if script.exists():
        found["console-script"] = script
    override = os.environ.get("BENCH_NVIDIA_SMI")
    candidates = [Path(override)] if override else [repo / c for c in PACKAGED_CANDIDATES]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            found["packaged"] = path
            break
    return found


async def time_once(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall time, exit code and (on failure) the end of stderr of one invocation."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env
    )
    _, err = await proc.communicate()
    elapsed = time.perf_counter() - t0
    code = proc.returncode or 0
    return elapsed, code, err.decode(errors="replace")[-300:] if code else ""


async def run(ctx: RunContext, result: ScenarioResult) -> None:
    runs = max(ctx.config.smi_runs, 1)
    found = executables(ctx.repo)
    result.params.update(
        runs=runs,
        executables={k: str(v) for k, v in found.items()},
        gpus=ctx.config.gpus_per_node,
        gpu_type=ctx.config.gpu_type,
    )
    if not found:
        raise RuntimeError("no nvidia-smi executable found (uv sync installs the console script)")
    if "packaged" not in found:
        result.note(
            "no packaged (PyInstaller) nvidia-smi found; build it with "
            "services/nvidia-smi/build.sh or set BENCH_NVIDIA_SMI"
        )
    with tempfile.TemporaryDirectory(prefix="fgo-bench-smi-") as tmp:
        write_state(Path(tmp), ctx)
        env = {**os.environ, "FGO_STATE_DIR": tmp}
        env.pop("NVIDIA_VISIBLE_DEVICES", None)
        env.pop("FGO_VISIBLE_DEVICES", None)
        for kind, exe in found.items():
            for args in COMMANDS:
                label = f"{kind}: nvidia-smi {' '.join(args)}".rstrip()
                cold, code, error = await time_once([str(exe), *args], env)
                times = []
                failures = int(code != 0)
                for _ in range(runs):
                    elapsed, code, err = await time_once([str(exe), *args], env)
                    times.append(elapsed)
                    failures += int(code != 0)
                    error = error or err
                summary = stats.summarize(times)
                key = f"{kind} {' '.join(args) or '(table)'}"
                result.figures[key] = {"first_run_s": cold, "runs": summary, "failures": failures}
                if error:
                    result.note(f"{label} exited non-zero: {error.strip()}")
                result.series[key] = [[v] for v in sorted(times)]
                result.say(
                    f"{label}: p50 {stats.fmt_seconds(summary['p50'])}, p95 "
                    f"{stats.fmt_seconds(summary['p95'])}, first run "
                    f"{stats.fmt_seconds(cold)}"
                    + (f", {failures} non-zero exits" if failures else "")
                )
