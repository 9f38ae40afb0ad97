"""Scenario 2, churn: M GPU pods created at once (or paced) and then deleted, once through the
device-plugin path (``nvidia.com/gpu: 1``) and once through DRA (a ResourceClaimTemplate).

Per pod, with one clock: sent -> scheduled -> Running -> in its node's topology record
(status-updater) -> in the exporter's metrics (status-exporter); delete sent -> gone from the
topology record, from the metrics, and from the API. Our services' apiserver requests over the
whole churn come from per-ServiceAccount FlowSchemas (bench.apicount); a pod lifecycle event is
a pod starting or stopping, so each pod is two events.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import apicount, stats
from bench.env import NAMESPACE, BenchEnv
from bench.podbatch import PodBatch
from bench.results import ScenarioResult, Target
from bench.scenarios.context import RunContext
from bench.workload import (
    create_pods,
    delete_pods,
    ensure_claim_template,
    force_delete_run,
    pod,
    pod_names,
)

NAME = "churn"
TITLE = "Churn of GPU pods: device-plugin and DRA paths"
NEEDS_CLUSTER = True
LATENCY_TARGET_S = 1.0
TARGET_EVENT_RATE = 50.0
WRITES_PER_EVENT_TARGET = 2.0
SETTLE_S = 3.0


def paths(dra: bool) -> list[str]:
    return ["device-plugin", "dra"] if dra else ["device-plugin"]


async def wait_claims_gone(env: BenchEnv, timeout_s: float) -> bool:
    """DRA claims made from templates are deleted by the controller-manager after their pod;
    the next batch must not compete with them for devices."""
    from kubernetes_asyncio import client

    resource = client.ResourceV1Api(env.api)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        claims = await resource.list_namespaced_resource_claim(NAMESPACE)
        if not claims.items:
            return True
        await asyncio.sleep(1.0)
    return False


def summarize_latency(values: list[float]) -> dict[str, Any]:
    """Latency summary with negatives (the later view was first) clamped to zero and counted."""
    out: dict[str, Any] = stats.summarize([max(v, 0.0) for v in values])
    out["before_start"] = sum(1 for v in values if v < 0)
    return out


def api_figures(
    before: dict[str, float], after: dict[str, float], events: int, service_accounts: set[str]
) -> dict[str, Any]:
    per = apicount.by_identity(before, after)
    ours = {sa: per.get(sa, {"writes": 0.0, "reads": 0.0}) for sa in sorted(service_accounts)}
    writes = sum(v.get("writes", 0.0) for v in ours.values())
    reads = sum(v.get("reads", 0.0) for v in ours.values())
    return {
        "by_service_account": ours,
        "control_plane": {
            k.removeprefix("builtin:"): v.get("requests", 0.0)
            for k, v in per.items()
            if k.startswith("builtin:")
        },
        "ours_writes": writes,
        "ours_reads": reads,
        "pod_events": events,
        "writes_per_pod_event": writes / events if events else None,
        "reads_per_pod_event": reads / events if events else None,
    }


async def churn_path(
    ctx: RunContext, result: ScenarioResult, path: str, count: int, timeout_s: float
) -> None:
    env = ctx.require_env()
    cfg = ctx.config
    key = "dp" if path == "device-plugin" else "dra"
    run = f"churn-{key}"
    names = pod_names(f"churn-{key}", count)
    if path == "dra":
        await ensure_claim_template(env.api)
    batch = PodBatch(env, run, names)
    await batch.start()
    service_accounts = {w.workload.service_account for w in env.workloads}
    before = await apicount.snapshot(env.api)
    figures: dict[str, Any] = {"pods": count, "rate_asked": cfg.churn_rate or "at once"}
    result.figures[key] = figures
    say = result.say
    try:
        async with env.phase(f"churn-{key}"):
            t0 = time.monotonic()
            await create_pods(
                env.api,
                [pod(n, path, run) for n in names],
                cfg.churn_rate,
                stamps=batch.first.times.setdefault("sent", {}),
            )
            window = time.monotonic() - t0
            figures["create_window_s"] = window
            say(
                f"{path}: {count} pods created in {window:.1f} s "
                f"({count / max(window, 1e-9):.0f} pods/s)"
            )
            up_states = ["running"] + (["in_topology"] if batch.follow_topology else [])
            ok = await batch.wait(up_states, timeout_s / 2, f"{path} up", say)
            if ok and batch.follow_metrics:
                await batch.wait(["in_metrics"], 30.0, f"{path} metrics", say)
            running = sorted(batch.first.get("running").values())
            figures["running_rate_pods_s"] = (
                (len(running) - 1) / (running[-1] - running[0])
                if len(running) > 1 and running[-1] > running[0]
                else None
            )
            figures["all_running_s"] = batch.span("sent", "running")
            figures["all_in_topology_s"] = batch.span("sent", "in_topology")
            figures["all_in_metrics_s"] = batch.span("sent", "in_metrics")
            figures["sent_to_running"] = summarize_latency(batch.latencies("sent", "running"))
            figures["running_to_topology"] = summarize_latency(
                batch.latencies("running", "in_topology")
            )
            figures["scheduled_to_topology"] = summarize_latency(
                batch.latencies("scheduled", "in_topology")
            )
            figures["running_to_metrics"] = summarize_latency(
                batch.latencies("running", "in_metrics")
            )
            sched = list(batch.first.get("scheduled").values())
            figures["scheduling"] = stats.throughput(sched, t0)
            _say_latencies(
                say,
                path,
                "up",
                figures,
                ["sent_to_running", "running_to_topology", "running_to_metrics"],
            )
            result.series[f"{key}.running_to_topology"] = [
                [v] for v in sorted(batch.latencies("running", "in_topology"))
            ]
            result.series[f"{key}.running_to_metrics"] = [
                [v] for v in sorted(batch.latencies("running", "in_metrics"))
            ]
            await asyncio.sleep(1.0)
            td = time.monotonic()
            await delete_pods(
                env.api,
                names,
                rate=cfg.churn_rate,
                stamps=batch.first.times.setdefault("delete_sent", {}),
            )
            figures["delete_window_s"] = time.monotonic() - td
            down = ["gone"] + (["out_topology"] if batch.follow_topology else [])
            ok_down = await batch.wait(down, timeout_s / 2, f"{path} down", say)
            if ok_down and batch.follow_metrics:
                await batch.wait(["out_metrics"], 30.0, f"{path} metrics down", say)
            figures["all_gone_s"] = batch.span("delete_sent", "gone")
            figures["all_out_topology_s"] = batch.span("delete_sent", "out_topology")
            figures["all_out_metrics_s"] = batch.span("delete_sent", "out_metrics")
            figures["delete_to_gone"] = summarize_latency(batch.latencies("delete_sent", "gone"))
            figures["delete_to_out_topology"] = summarize_latency(
                batch.latencies("delete_sent", "out_topology")
            )
            figures["gone_to_out_topology"] = summarize_latency(
                batch.latencies("gone", "out_topology")
            )
            figures["delete_to_out_metrics"] = summarize_latency(
                batch.latencies("delete_sent", "out_metrics")
            )
            _say_latencies(
                say,
                path,
                "down",
                figures,
                ["delete_to_gone", "delete_to_out_topology", "delete_to_out_metrics"],
            )
            # Late writes of the services (e.g. a debounced resync) still count.
            await asyncio.sleep(SETTLE_S)
            if path == "dra":
                await wait_claims_gone(env, 120.0)
    finally:
        after = await apicount.snapshot(env.api)
        figures["api"] = api_figures(before, after, 2 * count, service_accounts)
        figures["reached"] = {
            s: batch.count(s)
            for s in (
                "sent",
                "scheduled",
                "running",
                "in_topology",
                "in_metrics",
                "delete_sent",
                "gone",
                "out_topology",
                "out_metrics",
            )
        }
        figures["scrape_interval_s"] = stats.summarize(batch.scrape_seconds)
        figures["scrape_errors"] = batch.scrape_errors
        await batch.stop()
        if batch.count("gone") < count:
            await force_delete_run(env.api, run)
    api = figures["api"]
    say(
        f"{path}: our services sent {api['ours_writes']:.0f} writes and {api['ours_reads']:.0f} "
        f"reads for {api['pod_events']} pod events "
        f"({api['writes_per_pod_event'] or 0:.2f} writes/event); by identity: "
        + ", ".join(
            f"{sa} w={v.get('writes', 0):.0f} r={v.get('reads', 0):.0f}"
            for sa, v in api["by_service_account"].items()
        )
    )


def _say_latencies(
    say: Any, path: str, phase: str, figures: dict[str, Any], keys: list[str]
) -> None:
    parts = []
    for k in keys:
        s = figures.get(k) or {}
        parts.append(
            f"{k} p50 {stats.fmt_seconds(s.get('p50'))} p99 "
            f"{stats.fmt_seconds(s.get('p99'))} (n={s.get('count', 0)})"
        )
    say(f"{path} {phase}: " + "; ".join(parts))


async def run(ctx: RunContext, result: ScenarioResult) -> None:
    env = ctx.require_env()
    cfg = ctx.config
    capacity = len(env.node_names) * cfg.gpus_per_node
    count = min(cfg.pods, capacity)
    result.params.update(
        pods=count,
        asked=cfg.pods,
        rate=cfg.churn_rate or "at once",
        nodes=len(env.node_names),
        paths=paths(cfg.dra),
    )
    if count < cfg.pods:
        result.note(
            f"only {capacity} GPUs on {len(env.node_names)} nodes: {count} pods "
            f"instead of {cfg.pods}"
        )
    if count == 0:
        raise RuntimeError("no bench nodes with GPUs (run bringup first)")
    per_path_timeout = cfg.scenario_timeout_s / len(paths(cfg.dra))
    for path in paths(cfg.dra):
        await churn_path(ctx, result, path, count, per_path_timeout)
    for path in paths(cfg.dra):
        key = "dp" if path == "device-plugin" else "dra"
        f = result.figures.get(key, {})
        rate = f.get("running_rate_pods_s")
        lat = (f.get("running_to_topology") or {}).get("p99")
        sched = (f.get("scheduled_to_topology") or {}).get("p99")
        early = (f.get("running_to_topology") or {}).get("before_start", 0)
        rate_note = (
            f"pods became Running at {rate:.0f}/s (target load {TARGET_EVENT_RATE:.0f} events/s)"
            if rate
            else ""
        )
        if early:
            # KWOK reporting Running late makes this latency look better than it is.
            rate_note += (
                f"; {early} pods were recorded before KWOK reported them Running; "
                f"from being scheduled, p99 {stats.fmt_seconds(sched)}"
            )
        result.target(
            Target(
                f"{path}: pod Running -> topology updated, p99",
                "<",
                LATENCY_TARGET_S,
                "s",
                lat,
                rate_note,
            )
        )
        api = f.get("api") or {}
        reached = f.get("reached") or {}
        worked = reached.get("running", 0) == f.get("pods") and reached.get("in_topology", 0)
        per_event = api.get("writes_per_pod_event") if worked else None
        why = (
            ""
            if worked
            else (
                f"not measured: the path did not work ({reached.get('running', 0)}/{f.get('pods')} "
                f"pods Running, {reached.get('in_topology', 0)} recorded); "
                f"{api.get('ours_writes', 0):.0f} writes were sent meanwhile"
            )
        )
        result.target(
            Target(
                f"{path}: our apiserver writes per pod lifecycle event",
                "<=",
                WRITES_PER_EVENT_TARGET,
                "writes/event",
                per_event,
                why,
            )
        )
