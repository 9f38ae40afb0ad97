"""Scenario 6, scheduler throughput: P pods created at once against our nodes, per path:
plain pods (no GPU; the scheduler's own pace on this machine), device-plugin pods
(``nvidia.com/gpu``: our capacity) and DRA pods (claims allocated from our ResourceSlices).
Throughput is scheduled pods per second, measured like scheduler_perf's collector (per-second
samples while pods are being scheduled), shown next to the upstream thresholds.
"""

from __future__ import annotations

import time
from typing import Any

from bench import stats
from bench.podbatch import PodBatch
from bench.results import ScenarioResult
from bench.scenarios.churn import wait_claims_gone
from bench.scenarios.context import RunContext
from bench.workload import (
    create_pods,
    delete_pods,
    ensure_claim_template,
    force_delete_run,
    pod,
    pod_names,
)

NAME = "scheduler"
TITLE = "Scheduler throughput: device-plugin vs DRA"
NEEDS_CLUSTER = True

# Upstream kube-scheduler scheduler_perf thresholds (pods/s), quoted in
# ../shared/spec/peers-and-standards.md section 7 (misc/ and dra/performance-config.yaml).
UPSTREAM: list[dict[str, Any]] = [
    {"path": "plain", "test": "SchedulingBasic/5000Nodes_10000Pods", "threshold": 680},
    {"path": "plain", "test": "SchedulingBasic/5000Nodes_50000Pods", "threshold": 810},
    {
        "path": "device-plugin",
        "test": "SchedulingWithExtendedResource/5000pods_5000nodes",
        "threshold": 180,
    },
    {
        "path": "dra",
        "test": "SchedulingWithResourceClaimTemplate/5000pods_500nodes",
        "threshold": 40,
        "typical": "> 51",
    },
    {
        "path": "dra",
        "test": "SchedulingWithResourceClaimTemplate (queueing hints)",
        "threshold": 56,
        "typical": "> 70",
    },
    {
        "path": "dra",
        "test": "steady state, 500 nodes empty/half/full",
        "threshold": "64/70/60",
        "typical": "81/78/75",
    },
]


async def one_path(
    ctx: RunContext, result: ScenarioResult, path: str, count: int, timeout_s: float
) -> None:
    env = ctx.require_env()
    key = {"plain": "plain", "device-plugin": "dp", "dra": "dra"}[path]
    run = f"sched-{key}"
    names = pod_names(run, count)
    if path == "dra":
        await ensure_claim_template(env.api)
    batch = PodBatch(env, run, names, topology=False, metrics=False)
    await batch.start()
    figures: dict[str, Any] = {"pods": count}
    result.figures[key] = figures
    try:
        async with env.phase(f"sched-{key}"):
            t0 = time.monotonic()
            await create_pods(
                env.api,
                [pod(n, path, run) for n in names],
                stamps=batch.first.times.setdefault("sent", {}),
            )
            figures["create_window_s"] = time.monotonic() - t0
            ok = await batch.wait(["scheduled"], timeout_s, f"{path} scheduling", result.say)
            scheduled = list(batch.first.get("scheduled").values())
            figures["scheduled"] = len(scheduled)
            figures["complete"] = ok
            figures["throughput"] = stats.throughput(scheduled, t0)
            figures["create_rate_pods_s"] = count / max(figures["create_window_s"], 1e-9)
            figures["sent_to_scheduled"] = stats.summarize(batch.latencies("sent", "scheduled"))
            tp = figures["throughput"]
            # The scheduler cannot go faster than pods arrive: say when that is what we saw.
            figures["bounded_by_creation"] = bool(
                tp["average"] and tp["average"] >= 0.7 * figures["create_rate_pods_s"]
            )
            if figures["bounded_by_creation"]:
                result.note(
                    f"{path}: throughput is bounded by pod creation "
                    f"({figures['create_rate_pods_s']:.0f} pods/s through the apiserver), "
                    "not by the scheduler"
                )
            result.say(
                f"{path}: {len(scheduled)}/{count} scheduled, "
                f"{tp['average'] or 0:.0f} pods/s average over {tp['window_s'] or 0:.1f}s"
                f" (created at {figures['create_rate_pods_s']:.0f} pods/s)"
            )
            result.series[f"{key}.scheduled_per_s"] = [
                [i, c] for i, c in enumerate(stats.per_second_counts(scheduled, t0))
            ]
        async with env.phase(f"sched-{key}-cleanup"):
            await delete_pods(env.api, names)
            await batch.wait(["gone"], timeout_s, f"{path} cleanup", result.say)
            if path == "dra":
                await wait_claims_gone(env, 120.0)
    finally:
        await batch.stop()
        if batch.count("gone") < count:
            await force_delete_run(env.api, run)


async def run(ctx: RunContext, result: ScenarioResult) -> None:
    env = ctx.require_env()
    cfg = ctx.config
    capacity = len(env.node_names) * cfg.gpus_per_node
    count = min(cfg.sched_pods, capacity)
    the_paths = ["plain", "device-plugin"] + (["dra"] if cfg.dra else [])
    result.params.update(pods=count, nodes=len(env.node_names), paths=the_paths)
    result.figures["upstream_thresholds"] = UPSTREAM
    if count == 0:
        raise RuntimeError("no bench nodes with GPUs (run bringup first)")
    for path in the_paths:
        await one_path(ctx, result, path, count, cfg.scenario_timeout_s / len(the_paths) / 2)
    result.note(
        "upstream thresholds come from scheduler_perf on 5000/500-node clusters and "
        "dedicated CI machines with the scheduler alone on the API; here the "
        "apiserver, etcd, KWOK, our services and this harness share 2 cores, so "
        "compare each path with the plain-pod baseline measured alongside it"
    )
