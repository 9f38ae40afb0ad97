"""Faults under GPU pod churn; after each one the invariant checker must be green.

One test per kind of fault, in one shared world (tests/faults/faultlib/world.py). Each
injection: the churn runs, the fault is injected while it runs, the fault is lifted, the churn
is paused, the checker is polled until green (the recovery time), and after a settle period it
must still be green (the violations counted in the table). ``make test`` injects each fault
once; ``make soak`` repeats them for ``FGO_FAULT_SOAK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from faultlib.knobs import outage_seconds, soak_seconds
from faultlib.report import FaultReport, Outcome
from faultlib.world import (
    DEVICE_PLUGIN,
    DRA_PLUGIN,
    KWOK_CAPACITY,
    KWOK_DRA,
    KWOK_EXPORTER,
    LEASE_S,
    STATUS_UPDATER,
    World,
    until,
)
from fgo_testkit.kubelet import claim
from kubernetes_asyncio.client.exceptions import ApiException

WARMUP_S = 4.0  # churn running before the fault
SETTLE_TIMEOUT_S = 120.0  # pods of the paused churn all Running
RECOVERY_TIMEOUT_S = 180.0  # checker green after the fault
SETTLE_S = 3.0  # then still green after this
N_FAULTS = 19  # kinds of faults below, for the soak time share
COMPETE_EXTRA_S = 50.0  # competing writer: longest it goes on past the outage for a 409
STARTUP_PARTITION_S = 60.0  # longest a service may take to open its health port, cut off

Inject = Callable[[World, float], Awaitable[str]]


async def episode(world: World, inject: Inject, outage_s: float) -> Outcome:
    churn = world.churn
    assert churn is not None
    churn.resume()
    await asyncio.sleep(WARMUP_S)
    crashes_before = len(world.crash_log)
    note = await inject(world, outage_s)
    lifted = time.monotonic()
    churn.pause()
    settled = await churn.settle(SETTLE_TIMEOUT_S)
    took, violations = await world.wait_green(RECOVERY_TIMEOUT_S)
    recovery = time.monotonic() - lifted if took is not None else None
    await asyncio.sleep(SETTLE_S)
    final = [str(v) for v in await world.violations()]
    if not settled.ok:
        why = ""
        with contextlib.suppress(Exception):
            why = await world.explain_unsettled()
        final.append(f"[churn] pods never settled: {settled.detail}\n{why}")
    if recovery is None and not final:
        final = [f"never green within {RECOVERY_TIMEOUT_S:.0f}s: {violations[0]}"]
    churn.resume()
    return Outcome(recovery, final, note, world.crash_log[crashes_before:])


def run_fault(world: World, report: FaultReport, name: str, inject: Inject) -> None:
    rng = random.Random(name)
    budget = soak_seconds() / N_FAULTS
    start = time.monotonic()
    outcomes: list[Outcome] = []
    while True:
        outage = outage_seconds(rng)
        outcome = world.call(functools.partial(episode, world, inject, outage), timeout_s=900)
        report.add(name, outcome)
        outcomes.append(outcome)
        if outcome.violations or time.monotonic() - start >= budget:
            break
    bad = [v for o in outcomes for v in o.violations]
    assert not bad, f"{name}: invariants violated after the fault:\n" + "\n".join(bad[:20])
    assert all(o.recovery_s is not None for o in outcomes)
    crashed = [c for o in outcomes for c in o.crashes]
    assert not crashed, (
        f"{name}: services crashed (exited on their own; restarted like a kubelet would):\n"
        + "\n".join(crashed[:10])
    )


# ------------------------------------------------------------------------------------------------
# injections: each returns once the fault is lifted, with a note for the table
# ------------------------------------------------------------------------------------------------


async def no_fault(world: World, _: float) -> str:
    return ""


def kill_component(component: str) -> Inject:
    async def inject(world: World, outage: float) -> str:
        assert world.cluster.kill_component(component, signal.SIGKILL), f"{component} not running"
        await asyncio.sleep(outage)
        await world.cluster.restart_component(component)
        await world.cluster.wait_component_healthy("kube-apiserver")
        world.control_plane_restarts.append(time.time())
        return f"kill -9, down {outage:.0f} s"

    return inject


def _expired_watches(world: World) -> int:
    assert world.operator is not None
    total = 0
    for name in world.workloads:
        log = world.operator.log(name)
        total += log.read_text(errors="replace").count("watch.expired") if log.exists() else 0
    for agent in world.agents.values():
        total += agent.log.read_text(errors="replace").count("watch.expired")
    return total


async def expire_watches(world: World, _: float) -> str:
    """410 Gone: etcd history compacted while the apiserver restarts, so every watch resuming
    from its last resourceVersion is told it expired and must relist."""
    before = _expired_watches(world)
    port = world.cluster.ports.etcd_client
    base = f"http://127.0.0.1:{port}/v3/kv"
    # Changes happen while we compact (the churn runs): the resourceVersions the services hold
    # are older than the compacted revision.
    await asyncio.sleep(2)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/range", json={"key": "AA=="}) as resp:
            revision = (await resp.json())["header"]["revision"]
        async with http.post(
            f"{base}/compaction", json={"revision": revision, "physical": True}
        ) as resp:
            resp.raise_for_status()
    await world.cluster.restart_component("kube-apiserver")
    world.control_plane_restarts.append(time.time())
    with contextlib.suppress(AssertionError):
        await until(
            lambda: asyncio.sleep(0, _expired_watches(world) > before), 60, "a watch to expire"
        )
    await asyncio.sleep(3)
    expired = _expired_watches(world) - before
    if not expired:
        # Only possible when every service died on the apiserver's restart (then it lists
        # afresh): the crash is reported; the fault itself did not reach a watch.
        return f"etcd compacted at revision {revision}; no watch expired (services restarted)"
    return f"etcd compacted at revision {revision}; {expired} watches expired (410) and relisted"


async def partition(world: World, outage: float) -> str:
    assert world.proxy is not None
    dropped = world.proxy.partition(outage)
    await asyncio.sleep(outage)
    return f"{dropped} connections reset, new ones refused for {outage:.0f} s"


async def competing_writer(world: World, outage: float) -> str:
    """Another writer keeps changing the records' metadata, so the status-updater's replace
    (with the resourceVersion it read) meets 409 Conflict and must re-read and recompute.

    A 409 needs a record write of the status-updater to land between a competing patch and its
    watch event: usually several happen within the outage, but not always (CI saw 0 once, 3 in
    another run), so the competitor goes on, up to ``COMPETE_EXTRA_S`` more, until one did."""
    metric = "fgo_status_updater_write_conflicts_total"
    before = await world.service_metric(STATUS_UPDATER, metric)
    writes = 0
    start = time.monotonic()
    checked = start
    conflicts = 0.0
    core = world.core
    names = [f"topology-{n}" for n in sorted(world.live_nodes)]
    while time.monotonic() < start + outage + COMPETE_EXTRA_S:
        for name in names:
            try:
                await core.patch_namespaced_config_map(
                    name,
                    world.op_ns,
                    {"metadata": {"annotations": {"fgo.test/competitor": str(writes)}}},
                )
                writes += 1
            except ApiException:
                pass
        await asyncio.sleep(0.05)
        if time.monotonic() - checked >= 1.0:
            checked = time.monotonic()
            conflicts = await world.service_metric(STATUS_UPDATER, metric) - before
            if conflicts > 0 and checked - start >= outage:
                break
    conflicts = await world.service_metric(STATUS_UPDATER, metric) - before
    assert conflicts > 0, f"{writes} competing writes caused no 409 for the status-updater"
    return f"{writes} competing writes; {conflicts:.0f} record writes got 409 and were recomputed"


def kill_service(name: str) -> Inject:
    async def inject(world: World, _: float) -> str:
        churn = world.churn
        assert churn is not None
        burst = asyncio.create_task(churn.burst(8))
        await asyncio.sleep(0.3)
        world.held.add(name)
        try:
            assert world.kill_service(name), f"{name} not running"
            made = await burst
            await asyncio.sleep(2)
            await world.restart_service(name)
        finally:
            world.held.discard(name)
        return f"kill -9 during a burst of {made} pod deletions and creations"

    return inject


def kill_leader(deployment: str) -> Inject:
    """kill -9 of whichever replica of ``deployment`` holds its Lease, mid-burst: another replica
    must take the Lease (timed) and carry on; the killed one comes back as a standby."""

    async def inject(world: World, _: float) -> str:
        churn = world.churn
        assert churn is not None
        leader = await world.lease_holder(deployment)
        assert leader in world.replicas_of(deployment), f"Lease held by {leader!r}"
        burst = asyncio.create_task(churn.burst(8))
        await asyncio.sleep(0.3)
        world.held.add(leader)
        try:
            assert world.kill_service(leader), f"{leader} not running"
            took = await until(
                lambda: _held_by_another(world, deployment, leader),
                timeout_s=LEASE_S * 4,
                what=f"another replica taking the Lease from {leader}",
                interval_s=0.1,
            )
            successor = await world.lease_holder(deployment)
            made = await burst
            await world.restart_service(leader)
        finally:
            world.held.discard(leader)
        world.failovers.append(took)
        return (
            f"leader {leader} kill -9 during a burst of {made}; {successor} held the Lease "
            f"{took:.1f} s later (lease {LEASE_S} s)"
        )

    return inject


async def _held_by_another(world: World, lease: str, old: str) -> bool:
    holder = await world.lease_holder(lease)
    return holder is not None and holder != old


def kill_agent(name: str) -> Inject:
    async def inject(world: World, _: float) -> str:
        churn = world.churn
        assert churn is not None
        burst = asyncio.create_task(churn.burst(8))
        await asyncio.sleep(0.3)
        world.held.add(name)
        try:
            assert world.kill_agent(name), f"{name} not running"
            await world.wait_agent_dead(name)
            made = await burst
            await asyncio.sleep(2)
            await world.start_agent(name)
        finally:
            world.held.discard(name)
        return f"kill -9 during a burst of {made} pod deletions and creations"

    return inject


async def kubelet_restart_device_plugin(world: World, _: float) -> str:
    kubelet = world.kubelets[world.kubelet_dp]
    assert kubelet.dp is not None
    before = len(kubelet.dp.registrations)
    await kubelet.restart_device_plugin_side()
    took = await until(
        lambda: asyncio.sleep(0, len(kubelet.dp.registrations) > before if kubelet.dp else False),
        30,
        "the device plugin to register with the new kubelet",
    )
    await kubelet.dp.plugin("nvidia.com/gpu").wait_for_devices(timeout_seconds=10)
    return f"kubelet.sock and plugin sockets re-created; re-registered after {took:.1f} s"


async def kubelet_restart_dra(world: World, _: float) -> str:
    kubelet = world.kubelets[world.kubelet_dra]
    assert kubelet.dra is not None
    await kubelet.restart_dra_side()
    took = await until(
        lambda: asyncio.sleep(0, "gpu.nvidia.com" in kubelet.dra.plugins if kubelet.dra else False),
        30,
        "the DRA plugin to register with the new kubelet",
    )
    return f"registrations forgotten, sockets rescanned; re-registered after {took:.1f} s"


async def dra_killed_between_prepare_and_start(world: World, _: float) -> str:
    """The kubelet prepared a claim, then the plugin dies before the pod starts: the claim must
    survive in the plugin's checkpoint, a repeated prepare must answer the same devices, and
    unprepare later must work."""
    kubelet = world.kubelets[world.kubelet_dra]
    churn = world.churn
    assert churn is not None and kubelet.dra is not None
    fired = asyncio.Event()
    seen: dict[str, object] = {}

    async def hook(entry: object) -> None:
        seen["entry"] = entry
        # Keep this pod (and its claim) alive until the repeated prepare: the churn would
        # otherwise expire it while the plugin restarts on a loaded machine, and the restarted
        # plugin rightly drops a checkpointed claim that no longer exists.
        churn.pause()
        world.held.add(DRA_PLUGIN)
        assert world.kill_agent(DRA_PLUGIN)
        await world.wait_agent_dead(DRA_PLUGIN)
        fired.set()

    kubelet.before_start = hook
    churn.excluded |= set(churn.dp_nodes) | {n for n in churn.dra_nodes if n != world.kubelet_dra}
    try:

        async def made_one() -> bool:
            await churn.burst(1)
            return fired.is_set()

        await until(made_one, 60, "a DRA pod prepared on the kubelet node", interval_s=1.0)
    finally:
        churn.excluded -= {*churn.dp_nodes, *churn.dra_nodes}
        kubelet.before_start = None
    try:
        await world.start_agent(DRA_PLUGIN)
    finally:
        world.held.discard(DRA_PLUGIN)
    await until(
        lambda: asyncio.sleep(0, "gpu.nvidia.com" in kubelet.dra.plugins if kubelet.dra else False),
        30,
        "the restarted DRA plugin to register",
    )
    entry = seen["entry"]
    uid, key = next(iter(entry.claims.items()))  # type: ignore[attr-defined]
    ns, name = key.split("/", 1)
    again = await kubelet.dra.plugin("gpu.nvidia.com").prepare([claim(uid, name, ns)])
    result = again.claims[uid]
    assert not result.error, f"repeated prepare after the restart failed: {result.error}"
    return f"claim {key} survived in the checkpoint; repeated prepare gave {[d.device_name for d in result.devices]}"


async def prometheus_outage(world: World, outage: float) -> str:
    await until(
        lambda: _util_is(world, 50), 90, "the Knative pod's utilisation to follow Prometheus (50)"
    )
    assert world.kill_prometheus()
    world.counter.set_rate(30.0)
    await asyncio.sleep(outage)
    kept = await world.knative_utilization()
    assert kept == 50, f"utilisation during the Prometheus outage is {kept}, expected 50 kept"
    await world.start_prometheus()
    took = await until(lambda: _util_is(world, 30), 120, "the utilisation to follow again (30)")
    world.counter.set_rate(50.0)
    return f"value kept during a {outage:.0f} s outage; followed the new rate {took:.1f} s after Prometheus came back"


async def _util_is(world: World, value: int) -> bool:
    return await world.knative_utilization() == value


async def node_deleted(world: World, _: float) -> str:
    churn = world.churn
    assert churn is not None
    node = world.kwok_dp[1]
    if node in churn.excluded:  # deleted by the previous round of a soak: bring it back first
        await restore_node(world)
        await asyncio.sleep(WARMUP_S)
    pods = [
        p
        for p in await churn.list_pods()
        if p["spec"]["nodeSelector"]["kubernetes.io/hostname"] == node
    ]
    churn.excluded.add(node)
    await world.core.delete_node(node)
    return f"node deleted with {len(pods)} churn pod(s) on it"


async def corrupt_record(world: World, _: float) -> str:
    """A foreign writer replaces a record with valid YAML of the wrong shape (what a bad
    `kubectl edit` or another tool can do): readers must keep their last good record and the
    status-updater, the record's owner, must write the truth back."""
    node = world.kwok_dp[0]
    name = f"topology-{node}"
    await world.core.patch_namespaced_config_map(
        name, world.op_ns, {"data": {"topology.yml": "gpus: [1, 2]\nnodeName: 5\n"}}
    )
    return f"{name} overwritten with a malformed record"


async def restore_node(world: World) -> None:
    from fgo_localcluster import nodes

    churn = world.churn
    assert churn is not None and world.api is not None
    node = world.kwok_dp[1]
    if node not in churn.excluded:
        return  # not deleted (or already back)
    for pod in await churn.list_pods():
        if pod["spec"]["nodeSelector"]["kubernetes.io/hostname"] == node:
            with contextlib.suppress(ApiException):
                await world.core.delete_namespaced_pod(
                    pod["metadata"]["name"], world.work_ns, grace_period_seconds=0
                )
    await nodes.create_nodes(
        world.api,
        [nodes.kwok_node(node, f"faults-{world.run}", labels={world.pool_key: world.pool})],
    )
    churn.excluded.discard(node)
    took, violations = await world.wait_green(RECOVERY_TIMEOUT_S)
    assert took is not None, f"re-created node never green: {violations[:5]}"


# ------------------------------------------------------------------------------------------------
# the tests
# ------------------------------------------------------------------------------------------------

# Each fault test repeats for its share of the soak time (once in the quick run).
pytestmark = pytest.mark.timeout(1800 + 2 * soak_seconds() / N_FAULTS)


def test_baseline_is_green(world: World, report: FaultReport) -> None:
    """Without any fault the checker is green under churn (else every result below is moot)."""
    run_fault(world, report, "none (baseline)", no_fault)


def test_kube_apiserver_killed(world: World, report: FaultReport) -> None:
    run_fault(world, report, "kube-apiserver kill -9", kill_component("kube-apiserver"))


def test_etcd_killed(world: World, report: FaultReport) -> None:
    run_fault(world, report, "etcd kill -9", kill_component("etcd"))


def test_watches_expire(world: World, report: FaultReport) -> None:
    run_fault(world, report, "watches expire (410)", expire_watches)


def test_connections_dropped(world: World, report: FaultReport) -> None:
    run_fault(world, report, "connections dropped + partition", partition)


def test_competing_writer(world: World, report: FaultReport) -> None:
    run_fault(world, report, "competing writer (409)", competing_writer)


@pytest.mark.parametrize("service", [STATUS_UPDATER, KWOK_CAPACITY, KWOK_DRA, KWOK_EXPORTER])
def test_service_killed_mid_burst(world: World, report: FaultReport, service: str) -> None:
    run_fault(world, report, f"{service} kill -9 mid-burst", kill_service(service))


def test_status_updater_leader_killed_mid_burst(world: World, report: FaultReport) -> None:
    run_fault(world, report, "status-updater leader kill -9 mid-burst", kill_leader(STATUS_UPDATER))


@pytest.mark.parametrize("agent", [DEVICE_PLUGIN, DRA_PLUGIN])
def test_node_agent_killed_mid_burst(world: World, report: FaultReport, agent: str) -> None:
    run_fault(world, report, f"{agent} (node) kill -9 mid-burst", kill_agent(agent))


def test_kubelet_restart_device_plugin(world: World, report: FaultReport) -> None:
    run_fault(world, report, "kubelet restart (device plugin)", kubelet_restart_device_plugin)


def test_kubelet_restart_dra(world: World, report: FaultReport) -> None:
    run_fault(world, report, "kubelet restart (DRA plugin)", kubelet_restart_dra)


def test_dra_plugin_killed_between_prepare_and_start(world: World, report: FaultReport) -> None:
    run_fault(
        world,
        report,
        "dra-plugin killed between prepare and start",
        dra_killed_between_prepare_and_start,
    )


def test_prometheus_outage(world: World, report: FaultReport) -> None:
    run_fault(world, report, "Prometheus outage", prometheus_outage)


def test_record_corrupted(world: World, report: FaultReport) -> None:
    try:
        run_fault(world, report, "record corrupted by a foreign writer", corrupt_record)
    finally:
        world.call(lambda: repair_record(world))


async def repair_record(world: World) -> None:
    """If the record is still damaged, delete it so the rest of the suite runs on a sane world
    (the status-updater rebuilds it from the pods)."""
    from fgo_common.topology import TopologyFormatError

    node = world.kwok_dp[0]
    try:
        await world.record(node)
    except (TopologyFormatError, AttributeError, TypeError, ValueError, OverflowError):
        await world.core.delete_namespaced_config_map(f"topology-{node}", world.op_ns)
        took, violations = await world.wait_green(RECOVERY_TIMEOUT_S)
        assert took is not None, (
            f"world not green after deleting the damaged record: {violations[:5]}"
        )


def test_node_deleted_while_pods_run(world: World, report: FaultReport) -> None:
    try:
        run_fault(world, report, "node deleted while its pods run", node_deleted)
    finally:
        world.call(lambda: restore_node(world))


def test_no_forbidden_calls(world: World) -> None:
    """Every service ran under the chart's ServiceAccounts: none was refused an API call
    (except in the first minute after the control plane came back from a fault, when the
    apiserver answers 403 until its RBAC caches are warm — reported separately as crashes)."""
    from fgo_localcluster.operator import forbidden_lines

    assert world.operator is not None
    logs = {name: world.operator.log(name) for name in world.workloads}
    logs |= {name: agent.log for name, agent in world.agents.items()}
    refused = {}
    for name, path in logs.items():
        lines = [line for line in forbidden_lines(path) if not _after_restart(world, line)]
        if lines:
            refused[name] = [line[:400] for line in lines[:3]]
    assert not refused, json.dumps(refused, indent=1)


def _after_restart(world: World, line: str) -> bool:
    import datetime as dt

    try:
        stamp = json.loads(line)["timestamp"]
        at = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (ValueError, KeyError, TypeError):
        return False
    return any(0 <= at - t <= 60 or 0 <= t - at <= 60 for t in world.control_plane_restarts)


# ------------------------------------------------------------------------------------------------
# security and lifecycle checks (docs/security.md), on the same world after the faults
# ------------------------------------------------------------------------------------------------


def _log_files(world: World) -> list[Path]:
    assert world.operator is not None
    return [
        *sorted((world.operator.dir / "logs").glob("*.log")),
        *(agent.log for agent in world.agents.values()),
    ]


def test_no_secrets_in_logs(world: World) -> None:
    """No ServiceAccount token, client key or kubeconfig content in any service's log (after a
    whole fault run: errors, retries, crashes and all)."""
    assert world.operator is not None
    secrets: dict[str, str] = {}
    for path in [
        *world.operator.dir.glob("*.kubeconfig"),
        *(world.workdir / "agents").glob("*.kubeconfig"),
    ]:
        config = yaml.safe_load(path.read_text())
        for user in config["users"]:
            for key, value in user["user"].items():
                secrets[f"{path.name}:{key}"] = str(value)
    admin = yaml.safe_load(world.cluster.kubeconfig.read_text())
    secrets["admin:client-key-data"] = admin["users"][0]["user"]["client-key-data"]
    assert len(secrets) >= len(world.workloads) + len(world.agents)
    leaks = []
    for log_file in _log_files(world):
        text = log_file.read_text(errors="replace")
        for what, value in secrets.items():
            # JWTs are long; a 40-character piece of one in a log is a leak too.
            if value[:40] in text or value[-40:] in text:
                leaks.append(f"{log_file.name}: {what}")
        for marker in ("PRIVATE KEY", "client-key-data", "Authorization: Bearer", "Bearer ey"):
            if marker in text:
                leaks.append(f"{log_file.name}: {marker!r}")
    assert not leaks, leaks


def test_plugin_sockets_are_not_world_writable(world: World) -> None:
    """Connecting to a unix socket needs write permission on it: a world-writable plugin socket
    would let any local user call Allocate/NodePrepareResources."""
    import stat

    modes = {}
    for root in (world.short / "kdp", world.short / "kdra"):
        for path in root.rglob("*.sock"):
            if path.name == "kubelet.sock":
                continue  # the test kubelet's own sockets
            mode = stat.S_IMODE(path.stat().st_mode)
            modes[str(path.relative_to(world.short))] = oct(mode)
            assert not mode & 0o002, f"{path} is world-writable ({oct(mode)})"
    assert len(modes) >= 3, modes  # the device plugin's socket, the DRA and registration sockets


def test_plugin_sockets_ignore_a_permissive_umask(world: World) -> None:
    """The socket mode must not depend on the container's umask: restart both node agents under
    umask 000 and check again (a plugin should chmod its sockets itself)."""
    import os
    import stat

    async def restart_permissive() -> dict[str, str]:
        from fgo_localcluster import process

        modes = {}
        for name in (DEVICE_PLUGIN, DRA_PLUGIN):
            world.held.add(name)
            try:
                rec = world.agents[name].record()
                assert rec is not None
                await process.terminate(rec)
                old = os.umask(0)
                try:
                    await world.start_agent(name, wait=False)
                finally:
                    os.umask(old)
                await world.wait_agent_ready(name)
            finally:
                world.held.discard(name)
        for root in (world.short / "kdp", world.short / "kdra"):
            for path in root.rglob("*.sock"):
                if path.name != "kubelet.sock":
                    modes[path.name] = oct(stat.S_IMODE(path.stat().st_mode))
        return modes

    modes = world.call(restart_permissive)
    loose = {k: v for k, v in modes.items() if int(v, 8) & 0o002}
    assert not loose, f"world-writable plugin sockets under umask 000: {loose}"


GRACE_PERIOD_S = 30.0  # the chart sets no terminationGracePeriodSeconds: Kubernetes' default


@pytest.mark.parametrize(
    "name",
    [STATUS_UPDATER, KWOK_CAPACITY, KWOK_DRA, KWOK_EXPORTER, DEVICE_PLUGIN, DRA_PLUGIN],
)
def test_sigterm_exits_cleanly_within_the_grace_period(
    world: World, report: FaultReport, name: str
) -> None:
    async def check() -> float:
        from fgo_localcluster import process

        agent = name in world.agents
        world.held.add(name)
        try:
            rec = world.agents[name].record() if agent else world.service_record(name)
            assert rec is not None and process.is_running(rec)
            start = time.monotonic()
            process.send_signal(rec, signal.SIGTERM)
            assert await process.wait_exit(rec, GRACE_PERIOD_S), (
                f"{name} still running after SIGTERM"
            )
            took = time.monotonic() - start
            log = world.agents[name].log if agent else world.operator.log(name)  # type: ignore[union-attr]
            tail = log.read_text(errors="replace").splitlines()[-30:]
            stopped = [json.loads(line) for line in tail if '"service.stopped"' in line]
            assert stopped and stopped[-1]["exit_code"] == 0, "\n".join(tail)
            if name == DEVICE_PLUGIN:
                assert not list((world.short / "kdp" / "dp").glob("fake-*.sock")), "sockets left"
            if name == DRA_PLUGIN:
                assert not list((world.short / "kdra").rglob("gpu.nvidia.com*.sock")), (
                    "sockets left"
                )
                assert not (
                    world.short / "kdra" / "plugins" / "gpu.nvidia.com" / "dra.sock"
                ).exists()
            if agent:
                await world.start_agent(name)
            else:
                await world.restart_service(name)
            return took
        finally:
            world.held.discard(name)

    took = world.call(check)
    report.shutdown_s[name] = took
    assert took < GRACE_PERIOD_S


@pytest.mark.parametrize(
    "name", [STATUS_UPDATER, KWOK_CAPACITY, KWOK_DRA, KWOK_EXPORTER, DEVICE_PLUGIN, DRA_PLUGIN]
)
def test_not_ready_before_synced(world: World, name: str) -> None:
    """Started while the apiserver is unreachable: alive (/healthz 200) but not ready (/readyz
    503) until it could list what it needs; ready once the API is back."""

    async def check() -> None:
        from fgo_localcluster import process

        assert world.proxy is not None and world.operator is not None
        agent = name in world.agents
        world.held.add(name)
        try:
            rec = world.agents[name].record() if agent else world.service_record(name)
            assert rec is not None
            process.send_signal(rec, signal.SIGTERM)
            await process.wait_exit(rec, GRACE_PERIOD_S)
            if agent:
                await world.start_agent(name, wait=False)
                port = world.agents[name].health_port
            else:
                await world.operator.start([world.workloads[name]])
                port = world.service_port(name, "health")
            # Cut off until it has answered for a while: interpreter start-up on a loaded
            # machine takes seconds, so the partition is lifted by us, not by a timer.
            world.proxy.partition(STARTUP_PARTITION_S)
            seen: set[tuple[int, int]] = set()
            answered_at: float | None = None
            deadline = time.monotonic() + STARTUP_PARTITION_S - 5
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                while time.monotonic() < deadline:
                    try:
                        async with (
                            http.get(f"http://127.0.0.1:{port}/healthz") as h,
                            http.get(f"http://127.0.0.1:{port}/readyz") as r,
                        ):
                            seen.add((h.status, r.status))
                            answered_at = answered_at or time.monotonic()
                    except (aiohttp.ClientError, TimeoutError):
                        pass  # not listening yet (interpreter start-up)
                    if answered_at is not None and time.monotonic() - answered_at > 4.0:
                        break
                    await asyncio.sleep(0.3)
            world.proxy.heal()
            assert seen, f"{name} never answered on its health port"
            assert all(ready == 503 for _, ready in seen), f"{name} ready without the API: {seen}"
            assert (200, 503) in seen, seen
            if agent:
                await world.wait_agent_ready(name, timeout_s=120)
            else:
                await world.operator.wait_ready([name], timeout_s=120)
        finally:
            world.proxy.heal()  # never leak a partition into the next test
            world.held.discard(name)

    world.call(check)
