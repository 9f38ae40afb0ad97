"""The heart of the status-updater: one node's desired record as a pure function.

``reconcile_node(inputs)`` takes what the caches say (the Node, the cluster config, the stored
record, the pods bound to the node, the ResourceClaims, PodGroup priority classes, Knative
rates) and returns the record that should be stored, plus findings (future Events) and the
annotations reservation pods should get. No I/O and no clock: the controller passes ``now``.

Level-based and restart-safe: the stored record is an input, and every assignment in it is kept
for as long as its pod still needs it, so recomputing after a restart (or after a lost write)
gives the record a never-restarted controller would hold. Order of authority for which GPU a pod
holds:

1. DRA: the GPUs named in the pod's ResourceClaims (the scheduler allocated them);
2. device plugin on real nodes: the kubelet's choice, reported by the node agent in pod
   annotation ``fake-gpu-operator/allocated-devices`` (when present and valid);
3. what the stored record already says for that pod;
4. a new pick: GPUs on one NUMA node if possible, then lowest index (deterministic).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fgo_common import annotations as ann
from fgo_common import dpsharing, dradevices, sharing
from fgo_common.config import ClusterConfig, NumaConfig
from fgo_common.nodebuild import build_node_topology
from fgo_common.nrt import PodDemand, pod_demand, split_largest_remainder, zone_capacity
from fgo_common.profiles import BUILTIN_CATALOG, DEFAULT_PROFILE_KEY, GpuProfile
from fgo_common.telemetry import sample_gpu
from fgo_common.topology import (
    HEALTHY,
    HOLDER_DEVICE_PLUGIN,
    HOLDER_DRA,
    HOLDER_RESERVATION,
    KWOK_NODE_ANNOTATION,
    UNHEALTHY,
    GpuRecord,
    GpuStatus,
    Holder,
    NodeSharing,
    NodeTopology,
    OtherDevice,
    PodUsage,
    SharedResource,
)
from fgo_common.units import format_bytes, format_millis

from fgo_status_updater import mig
from fgo_status_updater.findings import Finding, node_ref, pod_ref
from fgo_status_updater.podinfo import (
    GPU_RESOURCE,
    Obj,
    annotations_of,
    claim_container,
    claim_devices,
    claim_refs,
    effective_request,
    is_active,
    is_reservation_pod,
    is_shared_pod,
    labels_of,
    meta,
    pod_uid,
    sort_key,
    start_time,
)
from fgo_status_updater.usage import UsagePolicy, pod_usage

DRA_DRIVER = "gpu.nvidia.com"
RETIRED_FAULT = "retired"  # GpuRecord.faults kind of a GPU kept only because it is still held

Action = Literal["write", "delete", "keep"]


@dataclass(frozen=True, slots=True)
class ReconcileOptions:
    reservation_namespace: str = "runai-reservation"
    usage: UsagePolicy = field(default_factory=UsagePolicy)
    dra_driver: str = DRA_DRIVER
    mig_reconfigure_seconds: float = 5.0  # pending -> success of nvidia.com/mig.config


@dataclass(slots=True)
class NodeInputs:
    node_name: str
    node: Obj | None
    config: ClusterConfig | None
    previous: NodeTopology | None
    pods: Sequence[Obj] = ()  # pods bound to this node, any phase
    claims: Mapping[str, Obj] = field(default_factory=dict)  # "<ns>/<name>" -> ResourceClaim
    pod_groups: Mapping[str, str] = field(default_factory=dict)  # "<ns>/<name>" -> class
    knative: Mapping[str, int] = field(default_factory=dict)  # pod uid -> percent
    now: float = 0.0


@dataclass(slots=True)
class NodeOutcome:
    """``write``: store ``record``; ``delete``: no record should exist; ``keep``: leave the
    stored record alone (no usable config yet)."""

    action: Action
    record: NodeTopology | None = None
    findings: list[Finding] = field(default_factory=list)
    # (namespace, pod, GPU UUID) for reservation pods still lacking run.ai/reserve_for_gpu_index
    reservation_patches: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None  # reconcile again after this many seconds (MIG delay)


@dataclass(slots=True)
class _Work:
    """State shared by the steps of one node's reconcile."""

    inputs: NodeInputs
    opts: ReconcileOptions
    active: list[Obj]
    all_gpus: list[GpuRecord]
    holders: dict[str, list[Holder]] = field(default_factory=dict)
    per_pod: dict[str, _PodGpus] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    record_sharing: NodeSharing | None = None


@dataclass(slots=True)
class _PodGpus:
    pod: Obj
    kind: str
    gpu_ids: list[str] = field(default_factory=list)


def reconcile_node(inputs: NodeInputs, options: ReconcileOptions | None = None) -> NodeOutcome:
    opts = options or ReconcileOptions()
    node, config, prev = inputs.node, inputs.config, inputs.previous
    if node is None:
        return NodeOutcome("delete")
    if config is None:
        return NodeOutcome("keep")
    findings: list[Finding] = []
    node_uid = str(meta(node).get("uid", ""))
    pool_name = labels_of(node).get(config.node_pool_label_key)
    if pool_name is None:
        return NodeOutcome("delete")
    kwok = annotations_of(node).get(KWOK_NODE_ANNOTATION) == "fake"
    pool = config.pools.get(pool_name)
    if pool is None:
        known = ", ".join(sorted(config.pools)) or "none"
        if prev is None:
            findings.append(
                Finding(
                    node_ref(inputs.node_name, node_uid),
                    "UnknownNodePool",
                    f"label {config.node_pool_label_key}={pool_name!r} names no pool of the "
                    f"topology config (known: {known}); the node gets no GPUs",
                )
            )
            return NodeOutcome("delete", findings=findings)
        findings.append(
            Finding(
                node_ref(inputs.node_name, node_uid),
                "UnknownNodePool",
                f"label {config.node_pool_label_key}={pool_name!r} names no pool of the topology "
                f"config (known: {known}); the node keeps its recorded GPUs (pool "
                f"{prev.pool!r}) until the label names a known pool or is removed",
            )
        )
        template = _template_from(prev, kwok)
    else:
        template = build_node_topology(inputs.node_name, pool, config, kwok=kwok)

    gpus, retiring = _merge_gpu_set(template, prev)
    all_gpus = gpus + retiring
    record = template
    record.gpus = gpus
    selection = dpsharing.select(config.device_plugin, labels_of(node))
    record.sharing = selection.sharing
    if selection.problem is not None:
        findings.append(Finding(node_ref(inputs.node_name, node_uid), *selection.problem))

    active = sorted((p for p in inputs.pods if is_active(p)), key=sort_key)
    work = _Work(
        inputs,
        opts,
        active,
        all_gpus,
        {g.id: [] for g in all_gpus},
        {},
        findings,
        record.sharing,
    )
    holders, per_pod = work.holders, work.per_pod
    _assign_dra(work)
    findings.extend(
        mig.apply_dynamic_mig(
            record, active=active, claims=inputs.claims, dra_driver=opts.dra_driver
        )
    )
    if not mig.gpu_requests_use_mig(record):  # single strategy: nvidia.com/gpu are MIG devices
        # On KWOK nodes we are the kubelet: a numa pool's single-numa-node policy is enforced
        # here, as a real kubelet's Topology Manager would (docs/numa.md).
        numa = pool.numa if pool is not None and kwok else None
        _assign_device_plugin(work, gpus, numa)
    mig_held = mig.assign_mig(record, prev, active, inputs.claims, opts.dra_driver)
    findings.extend(mig_held.findings)

    # GPUs beyond the pool's size stay only while someone still holds them.
    kept_retiring = [g for g in retiring if holders[g.id]]
    if kept_retiring:
        listing = ", ".join(f"{g.index} ({g.id})" for g in kept_retiring)
        findings.append(
            Finding(
                node_ref(inputs.node_name, node_uid),
                "PoolShrinkBelowAllocation",
                f"pool {record.pool!r} now has {len(gpus)} GPUs but GPU(s) {listing} are still "
                "held by pods; they stay in the topology, marked Unhealthy, until released",
            )
        )
        for gpu in kept_retiring:
            gpu.health = UNHEALTHY
            if not any(f.get("kind") == RETIRED_FAULT for f in gpu.faults):
                gpu.faults.append(
                    {"kind": RETIRED_FAULT, "message": "removed from the pool; kept until released"}
                )
    record.gpus = gpus + kept_retiring

    _fill_usage(work, record)
    _fill_mig_usage(work, record)
    mig_step = mig.reconcile_mig_config(
        node,
        pool=pool,
        config=config,
        record=record,
        prev=prev,
        now=inputs.now,
        delay=opts.mig_reconfigure_seconds,
    )
    findings.extend(mig_step.findings)
    _bank_energy(record, prev, inputs.now)
    record.other_devices = _other_devices(record.other_devices, active)
    record.generation = _generation(record, prev)

    patches = []
    for entry in per_pod.values():
        if (
            entry.kind == HOLDER_RESERVATION
            and entry.gpu_ids
            and ann.RESERVE_FOR_GPU_INDEX not in annotations_of(entry.pod)
        ):
            m = meta(entry.pod)
            patches.append((str(m.get("namespace")), str(m.get("name")), entry.gpu_ids[0]))
    return NodeOutcome("write", record, findings, patches, mig_step.requeue_after)


# --- the GPU set ---------------------------------------------------------------------------------


def _template_from(prev: NodeTopology, kwok: bool) -> NodeTopology:
    """The stored record's GPU set without its allocations: used while the node's pool label
    names no known pool, so nothing recorded is lost."""
    out = NodeTopology.from_dict(copy.deepcopy(prev.to_dict()), prev.node_name)
    out.kwok = kwok
    out.gpus = [g for g in out.gpus if not any(f.get("kind") == RETIRED_FAULT for f in g.faults)]
    for gpu in out.gpus:
        gpu.status = GpuStatus()
    return out


def _merge_gpu_set(
    template: NodeTopology, prev: NodeTopology | None
) -> tuple[list[GpuRecord], list[GpuRecord]]:
    """The pool's GPUs carrying over what the stored record knows about each (health, faults,
    MIG layout, banked energy), and the stored GPUs the pool no longer has (``retiring``)."""
    prev_by_id = {g.id: g for g in prev.gpus} if prev else {}
    gpus = []
    for gpu in template.gpus:
        old = prev_by_id.get(gpu.id)
        if old is not None:
            faults = [f for f in old.faults if f.get("kind") != RETIRED_FAULT]
            was_retired = len(faults) != len(old.faults)
            gpu.health = HEALTHY if was_retired and not faults else old.health
            gpu.faults = copy.deepcopy(faults)
            gpu.mig_enabled = old.mig_enabled
            gpu.mig_devices = copy.deepcopy(old.mig_devices)
            gpu.status = GpuStatus(energy_banked_j=old.status.energy_banked_j)
        gpus.append(gpu)
    ids = {g.id for g in gpus}
    retiring = []
    for old in prev.gpus if prev else []:
        if old.id not in ids:
            gpu = copy.deepcopy(old)
            gpu.status = GpuStatus(energy_banked_j=old.status.energy_banked_j)
            retiring.append(gpu)
    return gpus, retiring


# --- assignment ----------------------------------------------------------------------------------


def _pod_entry(per_pod: dict[str, _PodGpus], pod: Obj, kind: str) -> _PodGpus:
    uid = pod_uid(pod)
    entry = per_pod.get(uid)
    if entry is None:
        entry = per_pod[uid] = _PodGpus(pod, kind)
    return entry


def _assign_dra(work: _Work) -> None:
    """Every active pod using an allocated claim holds the claim's GPUs; a claim shared by
    several pods makes each of them a holder, so the GPU stays held while any runs."""
    inputs, opts, holders, per_pod, findings = (
        work.inputs,
        work.opts,
        work.holders,
        work.per_pod,
        work.findings,
    )
    for pod in work.active:
        ns = str(meta(pod).get("namespace", ""))
        for pod_claim, claim_name in claim_refs(pod):
            claim = inputs.claims.get(f"{ns}/{claim_name}")
            if claim is None:
                continue  # not allocated yet, or not in the cache yet: a later event brings it
            strategies = _claim_sharing(claim, claim_name, pod, work)
            for device in claim_devices(claim):
                if device.driver != opts.dra_driver or device.pool != inputs.node_name:
                    continue  # another driver's device, or (impossibly) another node's
                # Either naming (gpu-<minor> or the reference's gpu-<uuid>): a claim allocated
                # before the publishers' naming was switched still holds its GPU.
                is_gpu, gpu = dradevices.find_full_gpu(device.device, work.all_gpus)
                if gpu is None:
                    if is_gpu:
                        findings.append(
                            Finding(
                                pod_ref(pod),
                                "UnknownDraDevice",
                                f"claim {claim_name} was allocated device {device.device} of "
                                f"node {inputs.node_name}, which has no such GPU in its topology",
                            )
                        )
                    continue
                holder = Holder(
                    namespace=ns,
                    pod=str(meta(pod).get("name", "")),
                    container=claim_container(pod, pod_claim),
                    pod_uid=pod_uid(pod),
                    kind=HOLDER_DRA,
                    claim=f"{ns}/{claim_name}",
                    sharing=strategies.get(device.device, ""),
                )
                if holder not in holders[gpu.id]:
                    holders[gpu.id].append(holder)
                entry = _pod_entry(per_pod, pod, HOLDER_DRA)
                if gpu.id not in entry.gpu_ids:
                    entry.gpu_ids.append(gpu.id)


def _claim_sharing(claim: Obj, claim_name: str, pod: Obj, work: _Work) -> dict[str, str]:
    """Device -> the sharing strategy the claim's opaque config gives it (docs/sharing.md).
    A config the kubelet plugin would refuse is a warning on the pod (on a KWOK node nothing
    else would tell), and its devices are recorded unshared."""
    driver = work.opts.dra_driver
    allocation = (claim.get("status") or {}).get("allocation") or {}
    results = []
    for device in claim_devices(claim):
        if device.driver != driver or device.pool != work.inputs.node_name:
            continue
        is_gpu, _ = dradevices.find_full_gpu(device.device, work.all_gpus)
        kind: sharing.DeviceType = "gpu" if is_gpu else "mig"
        results.append(sharing.AllocationResult(device.request, device.device, kind, ""))
    if not results:
        return {}
    try:
        groups = sharing.group_results(allocation, driver, results)
    except sharing.SharingConfigError as exc:
        work.findings.append(
            Finding(
                pod_ref(pod),
                "InvalidDeviceConfig",
                f"claim {claim_name}: {exc} (the GPU kubelet plugin refuses to prepare it)",
            )
        )
        return {}
    return {r.device: g.config.strategy or "" for g in groups for r in g.results}


def _previous_holdings(prev: NodeTopology | None) -> dict[str, list[str]]:
    """Device-plugin / reservation assignments in the stored record, keyed by pod UID (and by
    ``ns/name`` for holders written without a UID, as the reference did)."""
    out: dict[str, list[str]] = {}
    for gpu in prev.gpus if prev else []:
        for holder in gpu.status.holders:
            if holder.kind not in (HOLDER_DEVICE_PLUGIN, HOLDER_RESERVATION):
                continue
            key = holder.pod_uid or f"{holder.namespace}/{holder.pod}"
            out.setdefault(key, []).append(gpu.id)
    return out


def _explicit_devices(
    pod: Obj,
    total: int,
    by_id: Mapping[str, GpuRecord],
    used: Counter[str],
    findings: list[Finding],
    *,
    replicas: int = 1,
) -> list[str] | None:
    """The kubelet's choice as the node agent reported it, if present and consistent. Replica
    IDs (``<uuid>::<n>``, shared GPUs) count as one slot of their GPU."""
    raw = annotations_of(pod).get(ann.ALLOCATED_DEVICES)
    if raw is None:
        return None
    problem = ""
    ids: list[str] = []
    try:
        parsed = ann.parse_allocated_devices(raw)
        listed = [d for name in _gpu_resource_names() for d in parsed.get(name, [])]
    except ValueError as exc:
        problem = str(exc)
        listed = []
    if not problem:
        for device in listed:
            gpu = by_id.get(dpsharing.base_id(device).lower())
            if gpu is None:
                problem = f"{device} is not a GPU of this node"
                break
            if used[gpu.id] + ids.count(gpu.id) >= replicas:
                problem = f"{device} is already held by another pod"
                break
            ids.append(gpu.id)
    if not problem and len(ids) != total:
        problem = f"lists {len(ids)} {GPU_RESOURCE} device(s), the pod requests {total}"
    if problem:
        findings.append(
            Finding(
                pod_ref(pod),
                "InvalidAllocatedDevices",
                f"annotation {ann.ALLOCATED_DEVICES}={raw!r} ignored: {problem}; "
                "recording the status-updater's own pick",
            )
        )
        return None
    return ids


def _gpu_resource_names() -> tuple[str, ...]:
    """Names a whole-GPU device-plugin request can use: ``nvidia.com/gpu`` and its renamed
    shared form (a pod bound before a live config switch keeps what it was given)."""
    return (GPU_RESOURCE, GPU_RESOURCE + dpsharing.SHARED_SUFFIX)


def _gpu_request(pod: Obj) -> tuple[int, tuple[tuple[str, int], ...], str]:
    """(total, per-container slots, resource name) of a pod's whole-GPU request."""
    total, name = 0, GPU_RESOURCE
    slots: tuple[tuple[str, int], ...] = ()
    for resource in _gpu_resource_names():
        request = effective_request(pod, resource)
        if request.total:
            total += request.total
            slots = slots + tuple(request.slots)
            name = resource
    return total, slots, name


def _preferred(pod: Obj, gpus: list[GpuRecord]) -> list[GpuRecord]:
    """A reservation pod whose scheduler already named a GPU (UUID, or index before Run:ai
    2.17) gets that GPU when it is free."""
    value = annotations_of(pod).get(ann.RESERVE_FOR_GPU_INDEX, "").strip()
    if not value:
        return []
    return [g for g in gpus if g.id.lower() == value.lower() or str(g.index) == value]


def pick_gpus(free: Sequence[GpuRecord], count: int) -> list[GpuRecord]:
    """``count`` GPUs out of ``free``: all on one NUMA node when one has room (the lowest such
    node), else the lowest indexes. Deterministic, like the kubelet's topology-aligned choice."""
    if count <= 0:
        return []
    ordered = sorted(free, key=lambda g: g.index)
    if count >= len(ordered):
        return ordered
    zones: dict[int, list[GpuRecord]] = {}
    for gpu in ordered:
        zones.setdefault(gpu.numa_node, []).append(gpu)
    for zone in sorted(zones):
        if len(zones[zone]) >= count:
            return zones[zone][:count]
    return ordered[:count]


def _single_numa_refusal(
    numa: NumaConfig | None, free: Sequence[GpuRecord], need: int, slots: int
) -> str | None:
    """Why a kubelet with Topology Manager policy ``single-numa-node`` would refuse a fresh
    pick of ``need`` GPUs out of ``free`` (None: it would admit it). Scope ``container`` aligns
    each container alone, so only pods with one GPU container are judged then."""
    if numa is None or numa.topology_manager_policy != "single-numa-node" or need <= 0:
        return None
    if numa.topology_manager_scope != "pod" and slots > 1:
        return None
    per_zone: dict[int, int] = {}
    for gpu in free:
        per_zone[gpu.numa_node] = per_zone.get(gpu.numa_node, 0) + 1
    if len(free) < need or any(n >= need for n in per_zone.values()):
        return None  # fits on one NUMA node, or does not fit at all (InsufficientGpus)
    listing = ", ".join(f"node-{z}: {per_zone.get(z, 0)}" for z in range(numa.zones))
    return (
        f"{need} {GPU_RESOURCE} do not fit on one NUMA node (topologyManagerPolicy "
        f"single-numa-node, scope {numa.topology_manager_scope}; free per zone: {listing}); "
        "a kubelet would refuse the pod, so it holds no GPU until one zone has room"
    )


class _ZoneBudget:
    """CPU and memory still free per NUMA zone of a KWOK node, counted as its NodeResourceTopology
    counts them (``fgo_common.nrt``): the zone's capacity minus the requests of the pods holding
    GPUs there, each pod's requests split over its zones in proportion to its GPUs. A
    single-numa-node pick must fit the pod's GPUs, CPU and memory on one zone."""

    def __init__(self, numa: NumaConfig, allocatable: Mapping[str, object]) -> None:
        self.zones = numa.zones
        self.cpu, self.mem = zone_capacity(numa, allocatable)
        self.cpu_used = [0] * numa.zones
        self.mem_used = [0] * numa.zones

    def zone(self, gpu: GpuRecord) -> int:
        return min(max(gpu.numa_node, 0), self.zones - 1)

    def charge(self, demand: PodDemand, gpus: Sequence[GpuRecord]) -> None:
        weights = [0] * self.zones
        for gpu in gpus:
            weights[self.zone(gpu)] += 1
        for z, n in enumerate(split_largest_remainder(demand.cpu_millis, weights)):
            self.cpu_used[z] += n
        for z, n in enumerate(split_largest_remainder(demand.memory_bytes, weights)):
            self.mem_used[z] += n

    def fits(self, z: int, demand: PodDemand) -> bool:
        return (self.cpu is None or self.cpu - self.cpu_used[z] >= demand.cpu_millis) and (
            self.mem is None or self.mem - self.mem_used[z] >= demand.memory_bytes
        )

    def free(self, z: int) -> str:
        parts = []
        if self.cpu is not None:
            parts.append(f"{format_millis(max(0, self.cpu - self.cpu_used[z]))} CPU")
        if self.mem is not None:
            parts.append(f"{format_bytes(max(0, self.mem - self.mem_used[z]))} memory")
        return ", ".join(parts)


def _judged(numa: NumaConfig | None, slots: int) -> bool:
    """Whether a single-numa-node kubelet aligns this pod's GPUs on one zone (scope
    ``container`` aligns each container alone: only pods with one GPU container are judged)."""
    return (
        numa is not None
        and numa.topology_manager_policy == "single-numa-node"
        and (numa.topology_manager_scope == "pod" or slots <= 1)
    )


def _single_zone_pick(
    numa: NumaConfig,
    budget: _ZoneBudget,
    free: Sequence[GpuRecord],
    need: int,
    demand: PodDemand,
) -> tuple[int | None, str | None]:
    """The zone a single-numa-node kubelet would place a fresh pick of ``need`` GPUs plus the
    pod's CPU and memory on (the lowest that has room for all three), or why it would refuse
    the pod (GPUs fitting a zone, but not together with the CPU and memory)."""
    per_zone = [0] * budget.zones
    for gpu in free:
        per_zone[budget.zone(gpu)] += 1
    gpu_fit = [z for z in range(budget.zones) if per_zone[z] >= need]
    for z in gpu_fit:
        if budget.fits(z, demand):
            return z, None
    if not gpu_fit:
        return None, None  # judged by the GPU rule (or InsufficientGpus)
    wants = " and ".join(
        part
        for part, known in (
            (f"{format_millis(demand.cpu_millis)} CPU", budget.cpu is not None),
            (f"{format_bytes(demand.memory_bytes)} memory", budget.mem is not None),
        )
        if known
    )
    listing = "; ".join(
        f"node-{z}: {per_zone[z]} GPU, {budget.free(z)}" for z in range(budget.zones)
    )
    return None, (
        f"{need} {GPU_RESOURCE} with {wants} do not fit on one NUMA node "
        f"(topologyManagerPolicy single-numa-node, scope {numa.topology_manager_scope}; free "
        f"per zone: {listing}); a kubelet would refuse the pod, so it holds no GPU until one "
        "zone has room"
    )


def _assign_device_plugin(
    work: _Work, gpus: list[GpuRecord], numa: NumaConfig | None = None
) -> None:
    """Device-plugin and reservation pods: the kubelet's reported choice, else what the stored
    record says, else a new pick (``gpus``: the pool's current GPUs, the only ones pickable;
    ``numa``: the pool's NUMA block on a KWOK node, whose single-numa-node policy refuses a
    fresh pick that spans zones)."""
    inputs, opts, active, all_gpus = work.inputs, work.opts, work.active, work.all_gpus
    holders, per_pod, findings = work.holders, work.per_pod, work.findings
    prev = inputs.previous
    by_id = {g.id.lower(): g for g in all_gpus}
    # Shared GPUs (device-plugin time-slicing / MPS): each GPU has `replicas` slots, and a
    # holder takes one per replica it was given. A GPU held otherwise (DRA) is full.
    shared = sharing_of(work.record_sharing)
    replicas = shared.replicas if shared is not None else 1
    used: Counter[str] = Counter({gid: replicas for gid, hs in holders.items() if hs})
    # A pod keeps the replica it holds when a live config switch lowers the replicas (as pods
    # keep running when NVIDIA's plugin restarts with a new config); new pods wait for room.
    previous = _previous_holdings(prev)
    held_before = Counter(gid for gids in previous.values() for gid in gids)
    dra_full = set(used)
    wanted: list[tuple[Obj, int, tuple[tuple[str, int], ...], str, str]] = []
    for pod in active:
        total, slots, resource = _gpu_request(pod)
        if total:
            kind = (
                HOLDER_RESERVATION
                if is_reservation_pod(pod, opts.reservation_namespace)
                else HOLDER_DEVICE_PLUGIN
            )
            wanted.append((pod, total, slots, kind, resource))

    chosen: dict[str, list[str]] = {}
    # 1. the kubelet's reported choice
    for pod, total, *_ in wanted:
        explicit = _explicit_devices(pod, total, by_id, used, findings, replicas=replicas)
        if explicit is not None:
            chosen[pod_uid(pod)] = explicit
            used.update(explicit)
    # 2. what the stored record says
    for pod, total, *_ in wanted:
        uid = pod_uid(pod)
        if uid in chosen:
            continue
        m = meta(pod)
        before = previous.get(uid) or previous.get(f"{m.get('namespace')}/{m.get('name')}") or []
        kept: list[str] = []
        for gid in before:
            limit = replicas if gid in dra_full else max(replicas, held_before[gid])
            if len(kept) < total and used[gid] < limit:
                kept.append(gid)
                used[gid] += 1
        chosen[uid] = kept
    # CPU and memory per zone, charged to the zones of what pods already hold (as the NRT).
    budget = None
    if numa is not None and numa.topology_manager_policy == "single-numa-node":
        status = (inputs.node or {}).get("status") or {}
        budget = _ZoneBudget(numa, status.get("allocatable") or {})
        held_by: dict[str, list[GpuRecord]] = {}
        for gid, hs in holders.items():
            for uid in {h.pod_uid for h in hs}:
                held_by.setdefault(uid, []).append(by_id[gid.lower()])
        for uid, ids in chosen.items():
            held_by.setdefault(uid, []).extend(by_id[gid.lower()] for gid in ids)
        for pod in active:
            mine = held_by.get(pod_uid(pod))
            if mine:
                budget.charge(pod_demand(pod), mine)
    # 3. new picks for what is still missing
    for pod, total, slots, *_ in wanted:
        uid = pod_uid(pod)
        have = chosen[uid]
        need = total - len(have)
        if need <= 0:
            continue
        free = [g for g in gpus if used[g.id] < replicas and g.healthy and not g.mig_enabled]
        if replicas > 1:
            # NVIDIA's distributed policy for replicas: each unit from the least shared GPU.
            for _ in range(need):
                open_gpus = [g for g in free if used[g.id] < replicas]
                if not open_gpus:
                    break
                gpu = min(open_gpus, key=lambda g: (used[g.id], g.index))
                have.append(gpu.id)
                used[gpu.id] += 1
            if len(have) < total:
                findings.append(_insufficient(pod, total, len(have), inputs.node_name))
            continue
        refusal = None if have else _single_numa_refusal(numa, free, need, len(slots))
        zone = None
        if refusal is None and not have and budget is not None and _judged(numa, len(slots)):
            assert numa is not None
            zone, refusal = _single_zone_pick(numa, budget, free, need, pod_demand(pod))
        if refusal is not None:
            findings.append(Finding(pod_ref(pod), "TopologyAffinityError", refusal))
            continue
        preferred = _preferred(pod, free)[:need]
        rest = [g for g in free if g not in preferred]
        if zone is not None and budget is not None:
            rest = [g for g in rest if budget.zone(g) == zone]
        picked = preferred + pick_gpus(rest, need - len(preferred))
        if budget is not None and picked and not have:  # a pod keeping GPUs was charged above
            budget.charge(pod_demand(pod), picked)
        have.extend(g.id for g in picked)
        used.update(g.id for g in picked)
        if len(have) < total:
            findings.append(_insufficient(pod, total, len(have), inputs.node_name))
    # Holders, with the container each unit is for (one entry per replica held).
    index_of = {g.id: g.index for g in all_gpus}
    holder_sharing = dpsharing.HOLDER_SHARING.get(shared_strategy(work.record_sharing), "")
    for pod, _, slots, kind, resource in wanted:
        ids = chosen[pod_uid(pod)]
        containers = [name for name, n in slots for _ in range(n)]
        m = meta(pod)
        for position, gid in enumerate(sorted(ids, key=lambda i: index_of[i])):
            holders[gid].append(
                Holder(
                    namespace=str(m.get("namespace", "")),
                    pod=str(m.get("name", "")),
                    container=containers[position] if position < len(containers) else "",
                    pod_uid=pod_uid(pod),
                    kind=kind,
                    resource=resource,
                    sharing=holder_sharing if shared is not None else "",
                )
            )
        entry = _pod_entry(per_pod, pod, kind)
        entry.gpu_ids.extend(sorted(ids, key=lambda i: index_of[i]))


def _insufficient(pod: Obj, total: int, have: int, node_name: str) -> Finding:
    return Finding(
        pod_ref(pod),
        "InsufficientGpus",
        f"pod needs {total} {GPU_RESOURCE} on node {node_name} but only {have} are free in "
        "its topology; the rest are assigned when GPUs are released",
    )


def sharing_of(node_sharing: NodeSharing | None) -> SharedResource | None:
    """The whole-GPU resource's replication on a shared node (None: unshared)."""
    return node_sharing.resource(GPU_RESOURCE) if node_sharing is not None else None


def shared_strategy(node_sharing: NodeSharing | None) -> str:
    return node_sharing.strategy if node_sharing is not None else ""


# --- usage ---------------------------------------------------------------------------------------


def _fill_mig_usage(work: _Work, record: NodeTopology) -> None:
    """Usage entries of MIG device holders, sized by the MIG device's memory."""
    inputs, opts = work.inputs, work.opts
    prev_usage: dict[tuple[str, str], PodUsage] = {}
    for gpu in inputs.previous.gpus if inputs.previous else []:
        for device in gpu.mig_devices:
            for uid, usage in device.usage.items():
                prev_usage[(device.uuid, uid)] = usage
    pods_by_uid = {pod_uid(p): p for p in work.active}
    for gpu in record.gpus:
        for device in gpu.mig_devices:
            for holder in device.holders:
                pod = pods_by_uid.get(holder.pod_uid)
                if pod is None or holder.pod_uid in device.usage:
                    continue
                previous = prev_usage.get((device.uuid, holder.pod_uid))
                device.usage[holder.pod_uid] = pod_usage(
                    pod,
                    device.memory_mib,
                    policy=opts.usage,
                    pod_groups=inputs.pod_groups,
                    knative_percent=inputs.knative.get(holder.pod_uid),
                    previous=previous,
                    since=start_time(pod) or (previous.since if previous else 0.0),
                    findings=[],
                )


def _reservation_for(
    pod: Obj, reservations: list[_PodGpus], by_id: Mapping[str, GpuRecord]
) -> _PodGpus | None:
    """The reservation pod whose GPU a fractional pod shares: by the deprecated ``runai-gpu``
    annotation (index or UUID, as the reservation's ``reserve_for_gpu_index`` says), else by the
    ``runai-gpu-group`` label."""
    wanted = annotations_of(pod).get(ann.RUNAI_GPU)
    if wanted is not None:
        for entry in reservations:
            gpu = by_id.get(entry.gpu_ids[0])
            names = {annotations_of(entry.pod).get(ann.RESERVE_FOR_GPU_INDEX)}
            if gpu is not None:
                names |= {gpu.id, str(gpu.index)}
            if wanted in names:
                return entry
    group = labels_of(pod).get(ann.RUNAI_GPU_GROUP)
    if group is not None:
        for entry in reservations:
            if labels_of(entry.pod).get(ann.RUNAI_GPU_GROUP) == group:
                return entry
    return None


def _fill_usage(work: _Work, record: NodeTopology) -> None:
    """Usage entries: one per (holding pod, GPU) except reservation pods, plus one per
    fractional pod on its reservation pod's GPU."""
    inputs, opts, active = work.inputs, work.opts, work.active
    holders, per_pod, findings = work.holders, work.per_pod, work.findings
    prev_usage: dict[tuple[str, str], PodUsage] = {}
    for gpu in inputs.previous.gpus if inputs.previous else []:
        for uid, usage in gpu.status.usage.items():
            prev_usage[(gpu.id, uid)] = usage
    by_id = {g.id: g for g in record.gpus}
    pods_by_uid = {pod_uid(p): p for p in active}
    reported: set[str] = set()  # one finding per pod even when it holds several GPUs

    def usage_for(pod: Obj, gpu: GpuRecord) -> PodUsage:
        uid = pod_uid(pod)
        previous = prev_usage.get((gpu.id, uid))
        since = start_time(pod) or (previous.since if previous else 0.0)
        sink: list[Finding] = []
        usage = pod_usage(
            pod,
            gpu.memory_mib,
            policy=opts.usage,
            pod_groups=inputs.pod_groups,
            knative_percent=inputs.knative.get(uid),
            previous=previous,
            since=since,
            findings=sink,
        )
        if uid not in reported:
            reported.add(uid)
            findings.extend(sink)
        return usage

    for gpu in record.gpus:
        gpu.status.holders = holders[gpu.id]
        for holder in gpu.status.holders:
            if holder.kind == HOLDER_RESERVATION:
                continue  # a reservation pod only keeps the GPU for its fractional pods
            pod = pods_by_uid.get(holder.pod_uid)
            if pod is not None and holder.pod_uid not in gpu.status.usage:
                gpu.status.usage[holder.pod_uid] = usage_for(pod, gpu)

    reservations = [e for e in per_pod.values() if e.kind == HOLDER_RESERVATION and e.gpu_ids]
    for pod in active:
        if not is_shared_pod(pod, opts.reservation_namespace) or pod_uid(pod) in per_pod:
            continue
        entry = _reservation_for(pod, reservations, by_id)
        if entry is None:
            continue  # its reservation pod is not bound (or not known) yet
        shared_gpu = by_id.get(entry.gpu_ids[0])
        if shared_gpu is not None:
            shared_gpu.status.usage[pod_uid(pod)] = usage_for(pod, shared_gpu)


def _profile(gpu: GpuRecord) -> GpuProfile:
    for name in (gpu.profile, gpu.product):
        found = BUILTIN_CATALOG.find(name) if name else None
        if found is not None:
            return found
    base = BUILTIN_CATALOG.get(DEFAULT_PROFILE_KEY)
    return dataclasses.replace(base, name=gpu.product, memory_mib=gpu.memory_mib)


def _bank_energy(record: NodeTopology, prev: NodeTopology | None, now: float) -> None:
    """Keep every GPU's energy and SW power capping counters monotonic across record changes:
    whatever the departed (or slowed-down) holders had drawn, or spent capped, by ``now`` is
    banked into ``energy_banked_j`` / ``sw_cap_banked_ns``."""
    if prev is None or not now:
        return
    prev_by_id = {g.id: g for g in prev.gpus}
    for gpu in record.gpus:
        old = prev_by_id.get(gpu.id)
        if old is None:
            continue
        gpu.status.energy_banked_j = old.status.energy_banked_j
        gpu.status.sw_cap_banked_ns = old.status.sw_cap_banked_ns
        new_usage = gpu.status.usage
        if all(
            uid in new_usage and new_usage[uid].utilization == usage.utilization
            for uid, usage in old.status.usage.items()
        ):
            continue  # nobody left or slowed down: the counter can only have grown
        profile = _profile(gpu)
        before_sample = sample_gpu(old, profile, now)
        before = before_sample.energy_mj
        after_sample = sample_gpu(gpu, profile, now)
        after = after_sample.energy_mj
        if after < before:
            gpu.status.energy_banked_j += (before - after) / 1000.0
        if after_sample.sw_power_cap_ns < before_sample.sw_power_cap_ns:
            gpu.status.sw_cap_banked_ns += (
                before_sample.sw_power_cap_ns - after_sample.sw_power_cap_ns
            )


# --- the rest of the record ----------------------------------------------------------------------


def _other_devices(devices: list[OtherDevice], active: list[Obj]) -> list[OtherDevice]:
    out = []
    for device in devices:
        used = sum(effective_request(p, device.name).total for p in active)
        out.append(OtherDevice(device.name, device.count, used))
    return out


def _gpu_set_signature(record: NodeTopology) -> list[tuple[object, ...]]:
    return (
        [
            (
                g.id,
                g.index,
                g.minor,
                g.product,
                g.memory_mib,
                g.health,
                g.mig_enabled,
                g.numa_node,
                tuple((d.uuid, d.profile, d.placement_start, d.health) for d in g.mig_devices),
            )
            for g in record.gpus
        ]
        + [(d.name, d.count) for d in record.other_devices]
        + [("sharing", record.sharing)]
    )


def _generation(record: NodeTopology, prev: NodeTopology | None) -> int:
    """Bumped when what consumers publish as capacity changes (GPU set, health, other devices,
    device-plugin sharing), not when allocations change."""
    if prev is None:
        return 1
    if _gpu_set_signature(prev) == _gpu_set_signature(record):
        return prev.generation
    return prev.generation + 1


__all__ = [
    "NodeInputs",
    "NodeOutcome",
    "ReconcileOptions",
    "pick_gpus",
    "reconcile_node",
]
