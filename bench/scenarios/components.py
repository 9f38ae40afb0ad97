"""Component benchmarks: the per-service scripts (services/*/bench.py, and libs/common/bench.py
for the node record's codec) their authors wrote, run as they are meant to be run and kept with
the results.

They measure one component in isolation (the device plugin against the kubelet-side test peer,
the exporter in-process on synthetic records, the packaged nvidia-smi ...), which complements the
end-to-end scenarios. Each runs as a subprocess with a time budget; its output is saved under
``components/`` and its last lines (or its JSON, where it writes one) go into the results.
The ones that start their own throw-away control plane only run with ``--components all``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import ScenarioResult
from bench.scenarios.context import RunContext
from bench.scenarios.nvidia_smi import executables

NAME = "components"
TITLE = "Component benchmarks (services/*/bench.py)"
NEEDS_CLUSTER = False
TAIL_LINES = 40
# structlog console lines ("2026-01-01 12:00:00 [debug    ] ...") are not the bench's figures.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:.]+Z? \[\s*(debug|info|warning|error)")


def figure_lines(text: str) -> list[str]:
    """The output without interleaved log lines, last TAIL_LINES of it."""
    return [ln for ln in text.splitlines() if not LOG_LINE.match(ln)][-TAIL_LINES:]


@dataclass(frozen=True)
class Component:
    name: str
    argv: list[str]
    # Starts its own local control plane: slow, only with --components all.
    own_cluster: bool = False
    json_file: Path | None = None
    json_stdout: bool = False


def components(ctx: RunContext) -> list[Component]:
    repo, cfg = ctx.repo, ctx.config
    out = ctx.out_dir / "components"
    py = sys.executable
    nodes = max(cfg.nodes) if cfg.nodes else 100
    found: list[Component] = []
    packaged = executables(repo).get("packaged")
    if packaged is not None and (repo / "services/nvidia-smi/bench.py").exists():
        found.append(
            Component(
                "nvidia-smi",
                [
                    py,
                    "services/nvidia-smi/bench.py",
                    "--runs",
                    str(max(cfg.smi_runs, 5)),
                    "--binary",
                    str(packaged),
                ],
            )
        )
    if (repo / "libs/common/bench.py").exists():
        found.append(
            Component(
                "record-codec",
                [
                    py,
                    "libs/common/bench.py",
                    "--runs",
                    "200",
                    "--json",
                    str(out / "record-codec.json"),
                ],
                json_file=out / "record-codec.json",
            )
        )
    if (repo / "services/status-exporter/bench.py").exists():
        found.append(
            Component(
                "status-exporter",
                [
                    py,
                    "services/status-exporter/bench.py",
                    "--nodes",
                    str(nodes),
                    "--gpus",
                    str(cfg.gpus_per_node),
                    "--scrapes",
                    "5",
                    "--json",
                    str(out / "status-exporter.json"),
                ],
                json_file=out / "status-exporter.json",
            )
        )
    if (repo / "services/device-plugin/bench.py").exists():
        found.append(
            Component(
                "device-plugin",
                [
                    py,
                    "services/device-plugin/bench.py",
                    "node",
                    "--gpus",
                    str(cfg.gpus_per_node),
                    "--allocations",
                    "300",
                    "--updates",
                    "50",
                ],
            )
        )
    if (repo / "services/status-updater/bench.py").exists():
        found.append(
            Component(
                "status-updater",
                [
                    py,
                    "services/status-updater/bench.py",
                    "--nodes",
                    str(min(nodes, 100)),
                    "--gpus",
                    str(cfg.gpus_per_node),
                    "--pods",
                    str(min(cfg.pods * 2, min(nodes, 100) * 8)),
                    "--state-dir",
                    str(out / "status-updater-cluster"),
                    "--log",
                    str(out / "status-updater-controller.log"),
                ],
                own_cluster=True,
            )
        )
    if (repo / "services/kwok-dra-plugin/bench.py").exists():
        found.append(
            Component(
                "kwok-dra-plugin",
                [
                    py,
                    "services/kwok-dra-plugin/bench.py",
                    "--nodes",
                    str(min(nodes, 100)),
                    "--gpus",
                    str(cfg.gpus_per_node),
                    "--json",
                ],
                own_cluster=True,
                json_stdout=True,
            )
        )
    if (repo / "services/dra-plugin/bench.py").exists():
        found.append(
            Component(
                "dra-plugin",
                [py, "services/dra-plugin/bench.py", "--claims", "100"],
                own_cluster=True,
            )
        )
    return found


async def run_component(comp: Component, ctx: RunContext, timeout_s: float) -> dict[str, Any]:
    log = ctx.out_dir / "components" / f"{comp.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with log.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            *comp.argv, cwd=ctx.repo, stdout=asyncio.subprocess.PIPE, stderr=fh
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
            code: int | None = proc.returncode
        except TimeoutError:
            proc.kill()
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
            out, code = b"", None
    text = out.decode(errors="replace")
    log.with_suffix(".out").write_text(text)
    entry: dict[str, Any] = {
        "argv": comp.argv[1:],
        "exit_code": code,
        "duration_s": time.monotonic() - t0,
        "output_tail": figure_lines(text),
        "log": str(log),
    }
    with contextlib.suppress(OSError, ValueError):
        if comp.json_file is not None and comp.json_file.exists():
            entry["json"] = json.loads(comp.json_file.read_text())
        elif comp.json_stdout and text.strip():
            entry["json"] = json.loads(text)
    return entry


async def run(ctx: RunContext, result: ScenarioResult) -> None:
    wanted = ctx.config.components
    chosen = [c for c in components(ctx) if wanted == "all" or not c.own_cluster]
    skipped = [c.name for c in components(ctx) if c not in chosen]
    result.params.update(run=[c.name for c in chosen], skipped=skipped)
    if skipped:
        result.note(
            f"not run (each starts its own control plane; use --components all): "
            f"{', '.join(skipped)}"
        )
    per = min(ctx.config.scenario_timeout_s, 600.0)
    for comp in chosen:
        result.say(f"{comp.name}: {' '.join(comp.argv[1:])}")
        entry = await run_component(comp, ctx, per)
        result.figures[comp.name] = entry
        state = "timed out" if entry["exit_code"] is None else f"exit {entry['exit_code']}"
        result.say(f"{comp.name}: {state} after {entry['duration_s']:.0f}s")
        for line in entry["output_tail"][-15:]:
            result.say(f"  {comp.name} | {line}")
        if entry["exit_code"] != 0:
            result.note(f"{comp.name} bench {state}; see {entry['log']}")
