"""Scenario 5, footprint: RSS and CPU of each of our services and each control-plane process,
at idle (nodes up, nothing changing) and in every other phase of the run (bring-up, churn,
scheduling), from /proc samples taken once a second all run long (bench.procmon).

``run`` holds the idle phase; ``finalize`` (called after every other scenario) turns all
phases into the tables and the per-service RSS target.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from bench import stats
from bench.results import ScenarioResult, Target
from bench.scenarios.context import RunContext

NAME = "footprint"
TITLE = "Footprint of our services and of the control plane"
NEEDS_CLUSTER = True
RSS_TARGET_MIB = 80.0
TARGET_NODES = 1000


async def run(ctx: RunContext, result: ScenarioResult) -> None:
    env = ctx.require_env()
    result.params.update(idle_seconds=ctx.config.idle_seconds, nodes=len(env.node_names))
    result.say(f"idle for {ctx.config.idle_seconds:.0f}s with {len(env.node_names)} nodes")
    async with env.phase("idle"):
        await asyncio.sleep(ctx.config.idle_seconds)
    idle = ctx.sampler.summary("idle")
    for name, ps in sorted(idle.procs.items()):
        result.say(
            f"idle {name} ({ps.group}): RSS {stats.fmt_bytes(ps.rss_max_bytes)}, "
            f"CPU {ps.cpu_cores_mean:.3f} cores"
        )


def finalize(ctx: RunContext, result: ScenarioResult) -> None:
    sampler = ctx.sampler
    phases: dict[str, Any] = {}
    for phase in sampler.phases():
        if phase in ("setup", "between"):
            continue
        summary = sampler.summary(phase)
        if summary.duration_s <= 0:
            continue
        phases[phase] = dataclasses.asdict(summary)
    result.figures["phases"] = phases
    nodes = len(ctx.env.node_names) if ctx.env else 0
    ours: dict[str, float] = {}
    for phase in phases.values():
        for name, ps in phase["procs"].items():
            if ps["group"] == "ours":
                ours[name] = max(ours.get(name, 0.0), ps["rss_max_bytes"] / 2**20)
    result.figures["ours_rss_max_mib"] = ours
    largest = max(ctx.config.nodes) if ctx.config.nodes else 0
    for name, mib in sorted(ours.items()):
        note = ""
        measured: float | None = mib
        if largest < TARGET_NODES:
            note = f"measured with at most {largest} nodes, not {TARGET_NODES}"
        result.target(
            Target(f"{name} RSS (max over the run)", "<", RSS_TARGET_MIB, "MiB", measured, note)
        )
    if not ours:
        result.note("no service process was sampled")
    result.params.update(nodes_at_end=nodes)
