"""MIG in the status-updater: the mig-manager protocol and who holds which MIG device.

Two pure steps of one node's reconcile (``reconcile.py`` calls them):

* :func:`assign_mig` records the holders of MIG devices: device-plugin pods asking for
  ``nvidia.com/mig-<profile>`` (mixed strategy) or ``nvidia.com/gpu`` (single strategy, on a
  node whose GPUs are MIG-enabled), and DRA claims allocated MIG devices
  (``gpu-<minor>-mig-<profile>-<giProfileId>-<start>``). Order of authority as for whole GPUs:
  the kubelet's choice (``fake-gpu-operator/allocated-devices``), the stored record, a new pick
  (lowest GPU index, then lowest placement: deterministic).

* :func:`apply_dynamic_mig` (pools with ``mig: {dynamic: true}``) makes the record's MIG
  instances those that DRA claims of the node's active pods were allocated: a claim for
  ``gpu-<minor>-mig-<profile>-<giProfileId>-<start>`` creates that instance (MIG mode on), and
  when no active pod uses it any more the instance is destroyed; a GPU left without instances
  goes back to MIG mode off, so it shows (and is offered) as a whole GPU again.

* :func:`reconcile_mig_config` follows NVIDIA mig-manager: the node label
  ``nvidia.com/mig.config=<name>`` (or, for the reference's Run:ai dynamic-MIG handshake, the
  annotation ``run.ai/mig.config`` holding a mig-parted document with config ``selected``) asks
  for a layout; ``nvidia.com/mig.config.state`` goes ``pending`` and, ``delay`` seconds later,
  ``success`` with the new layout in the record, or ``failed`` (reason in an Event and in
  annotation ``fake-gpu-operator/mig.config.reason``). Like mig-manager, a reconfiguration is
  refused while any GPU of the node is in use, and a failed request is not retried until the
  label changes. Without label or annotation the pool's static ``mig.config`` is the layout.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import yaml
from fgo_common import annotations as ann
from fgo_common import migstate
from fgo_common.config import ClusterConfig, PoolConfig
from fgo_common.names import DRA_NAMES, GPU_OPERATOR_LABELS, RESOURCE_NAMES
from fgo_common.profiles import BUILTIN_CATALOG, DEFAULT_PROFILE_KEY, GpuProfile
from fgo_common.profiles.mig_layout import (
    MigInstance,
    MigLayout,
    MigLayoutError,
    possible_instances,
)
from fgo_common.topology import (
    HEALTHY,
    HOLDER_DEVICE_PLUGIN,
    HOLDER_DRA,
    GpuRecord,
    Holder,
    MigConfigStatus,
    MigDevice,
    NodeTopology,
)

from fgo_status_updater.findings import NORMAL, Finding, ObjectRef, node_ref, pod_ref
from fgo_status_updater.podinfo import (
    GPU_RESOURCE,
    Obj,
    annotations_of,
    claim_container,
    claim_devices,
    claim_refs,
    effective_request,
    labels_of,
    meta,
    pod_uid,
    requested_resources,
)

RUNAI_MIG_CONFIG = "run.ai/mig.config"  # reference (mig-faker) request annotation
RUNAI_MIG_MAPPING = "run.ai/mig-mapping"  # reference answer: base64 JSON per GPU index
RUNAI_SELECTED = "selected"  # the config name inside run.ai/mig.config
REASON_ANNOTATION = "fake-gpu-operator/mig.config.reason"
PENDING, SUCCESS, FAILED = "pending", "success", "failed"


# --- which MIG devices pods hold -----------------------------------------------------------------


def gpu_requests_use_mig(record: NodeTopology) -> bool:
    """Under the single strategy a MIG-enabled node's ``nvidia.com/gpu`` are MIG devices."""
    return record.mig_strategy == "single" and any(
        g.mig_enabled and g.mig_devices for g in record.gpus
    )


def _mig_requests(pod: Obj, single: bool) -> dict[str, int]:
    """resource name -> count of MIG devices the pod asks for through the device plugin."""
    out: dict[str, int] = {}
    names = requested_resources(pod)
    for name in sorted(names):
        if name.startswith(RESOURCE_NAMES.mig_prefix) or (single and name == GPU_RESOURCE):
            total = effective_request(pod, name).total
            if total:
                out[name] = total
    return out


def _resource_of(device: MigDevice, single: bool) -> str:
    return GPU_RESOURCE if single else RESOURCE_NAMES.mig(device.profile)


@dataclass(slots=True)
class MigAssignment:
    findings: list[Finding] = field(default_factory=list)
    pods: set[str] = field(default_factory=set)  # uids of pods holding MIG devices


def assign_mig(
    record: NodeTopology,
    prev: NodeTopology | None,
    active: Sequence[Obj],
    claims: Mapping[str, Obj],
    dra_driver: str,
) -> MigAssignment:
    """Fill ``holders`` of every MIG device of ``record`` (their previous holders are dropped
    first: holdings are recomputed from the pods each time)."""
    out = MigAssignment()
    single = gpu_requests_use_mig(record)
    devices: list[tuple[GpuRecord, MigDevice]] = [
        (g, d)
        for g in sorted(record.gpus, key=lambda g: g.index)
        if g.mig_enabled
        for d in sorted(g.mig_devices, key=lambda d: d.placement_start)
    ]
    for _, device in devices:
        device.holders = []
        device.usage = {}
    by_uuid = {d.uuid.lower(): d for _, d in devices}
    by_name = {
        DRA_NAMES.mig_device_name(g.minor, d.profile, d.gi_profile_id, d.placement_start): d
        for g, d in devices
    }
    _assign_dra(
        record, active=active, claims=claims, dra_driver=dra_driver, by_name=by_name, out=out
    )

    previous: dict[str, list[str]] = {}
    for gpu in prev.gpus if prev else []:
        for device in gpu.mig_devices:
            for holder in device.holders:
                if holder.kind == HOLDER_DEVICE_PLUGIN:
                    previous.setdefault(holder.pod_uid, []).append(device.uuid.lower())

    for pod in active:
        wanted = _mig_requests(pod, single)
        if not wanted:
            continue
        uid = pod_uid(pod)
        explicit = _explicit(pod, wanted, by_uuid, single, out.findings)
        m = meta(pod)
        for resource, count in wanted.items():
            have = [
                by_uuid[u]
                for u in (
                    explicit.get(resource, []) if explicit is not None else previous.get(uid, [])
                )
                if u in by_uuid and _resource_of(by_uuid[u], single) == resource
            ]
            have = [d for d in have if not d.holders][:count]
            if len(have) < count:
                free = [
                    d
                    for g, d in devices
                    if g.healthy
                    and d.health == HEALTHY
                    and not d.holders
                    and d not in have
                    and not g.status.holders
                    and _resource_of(d, single) == resource
                ]
                have += free[: count - len(have)]
            if len(have) < count:
                out.findings.append(
                    Finding(
                        pod_ref(pod),
                        "InsufficientMigDevices",
                        f"pod needs {count} {resource} on node {record.node_name} but only "
                        f"{len(have)} are free in its topology",
                    )
                )
            slots = [name for name, n in effective_request(pod, resource).slots for _ in range(n)]
            for position, device in enumerate(have):
                device.holders.append(
                    Holder(
                        namespace=str(m.get("namespace", "")),
                        pod=str(m.get("name", "")),
                        container=slots[position] if position < len(slots) else "",
                        pod_uid=uid,
                        kind=HOLDER_DEVICE_PLUGIN,
                        resource=resource,
                    )
                )
                out.pods.add(uid)
    return out


def _explicit(
    pod: Obj,
    wanted: Mapping[str, int],
    by_uuid: Mapping[str, MigDevice],
    single: bool,
    findings: list[Finding],
) -> dict[str, list[str]] | None:
    """The kubelet's choice of MIG devices, as the node agent reported it (None: absent)."""
    raw = annotations_of(pod).get(ann.ALLOCATED_DEVICES)
    if raw is None:
        return None
    try:
        listed = ann.parse_allocated_devices(raw)
    except ValueError as exc:
        findings.append(Finding(pod_ref(pod), "InvalidAllocatedDevices", str(exc)))
        return None
    out: dict[str, list[str]] = {}
    for resource in wanted:
        ids = [i.lower() for i in listed.get(resource, [])]
        unknown = [i for i in ids if i not in by_uuid]
        if unknown and not (single and resource == GPU_RESOURCE and len(unknown) == len(ids)):
            findings.append(
                Finding(
                    pod_ref(pod),
                    "InvalidAllocatedDevices",
                    f"annotation {ann.ALLOCATED_DEVICES} lists {', '.join(unknown)}, not MIG "
                    "devices of this node; recording the status-updater's own pick",
                )
            )
        out[resource] = [i for i in ids if i in by_uuid]
    return out


def _assign_dra(
    record: NodeTopology,
    *,
    active: Sequence[Obj],
    claims: Mapping[str, Obj],
    dra_driver: str,
    by_name: Mapping[str, MigDevice],
    out: MigAssignment,
) -> None:
    for pod in active:
        ns = str(meta(pod).get("namespace", ""))
        for pod_claim, claim_name in claim_refs(pod):
            claim = claims.get(f"{ns}/{claim_name}")
            if claim is None:
                continue
            for result in claim_devices(claim):
                if result.driver != dra_driver or result.pool != record.node_name:
                    continue
                device = by_name.get(result.device)
                if device is None:
                    continue  # a whole GPU (reconcile.py), or a layout that has changed
                holder = Holder(
                    namespace=ns,
                    pod=str(meta(pod).get("name", "")),
                    container=claim_container(pod, pod_claim),
                    pod_uid=pod_uid(pod),
                    kind=HOLDER_DRA,
                    claim=f"{ns}/{claim_name}",
                )
                if holder not in device.holders:
                    device.holders.append(holder)
                out.pods.add(pod_uid(pod))


# --- dynamic MIG ------------------------------------------------------------------------------


def apply_dynamic_mig(
    record: NodeTopology,
    *,
    active: Sequence[Obj],
    claims: Mapping[str, Obj],
    dra_driver: str,
) -> list[Finding]:
    """On a dynamic-MIG node, set every MIG-capable GPU's instances to those the claims of
    ``active`` pods were allocated (see the module doc). Runs before :func:`assign_mig`, which
    then records the claims' pods as holders of the instances created here.

    An instance keeps its record entry (health, usage) while it exists; ids and UUIDs come from
    the placement alone (``mig_layout.dynamic_gi_id``), as the DRA publishers announced them.
    """
    if not record.mig_dynamic:
        return []
    findings: list[Finding] = []
    offered: dict[str, tuple[GpuRecord, MigInstance]] = {}
    for gpu in record.gpus:
        for instance in possible_instances(profile_of(gpu)):
            name = DRA_NAMES.mig_device_name(
                gpu.minor, instance.name, instance.gi_profile_id, instance.placement.start
            )
            offered[name] = (gpu, instance)
    wanted: dict[str, dict[str, MigInstance]] = {g.id: {} for g in record.gpus}
    for pod in active:
        ns = str(meta(pod).get("namespace", ""))
        for _, claim_name in claim_refs(pod):
            claim = claims.get(f"{ns}/{claim_name}")
            if claim is None:
                continue
            for result in claim_devices(claim):
                if result.driver != dra_driver or result.pool != record.node_name:
                    continue
                found = offered.get(result.device)
                if found is not None:
                    wanted[found[0].id][result.device] = found[1]
    for gpu in record.gpus:
        chosen = _without_overlaps(gpu, wanted[gpu.id], findings, record)
        if not chosen and not gpu.mig_enabled:
            continue
        existing = {
            DRA_NAMES.mig_device_name(gpu.minor, d.profile, d.gi_profile_id, d.placement_start): d
            for d in gpu.mig_devices
        }
        devices = [
            existing.get(name) or migstate.mig_device_of(gpu, instance)
            for name, instance in chosen.items()
        ]
        gpu.mig_devices = sorted(devices, key=lambda d: d.gi_id)
        gpu.mig_enabled = bool(devices)
    return findings


def _without_overlaps(
    gpu: GpuRecord,
    wanted: Mapping[str, MigInstance],
    findings: list[Finding],
    record: NodeTopology,
) -> dict[str, MigInstance]:
    """The wanted instances minus any overlapping one already taken (the scheduler's counters
    rule that out; a hand-written allocation could still do it)."""
    chosen: dict[str, MigInstance] = {}
    taken: set[int] = set()
    for name, instance in sorted(wanted.items(), key=lambda kv: kv[1].placement.start):
        slices = set(instance.memory_slices)
        if slices & taken:
            findings.append(
                Finding(
                    node_ref(record.node_name, ""),
                    "OverlappingMigAllocation",
                    f"device {name} overlaps another MIG instance allocated on GPU {gpu.index}; "
                    "not created",
                )
            )
            continue
        taken |= slices
        chosen[name] = instance
    return chosen


# --- the mig-manager protocol -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    name: str  # what status.requested records
    config: str  # the config name inside ``custom``
    custom: migstate.CustomConfigs


def _request(node: Obj, config: ClusterConfig) -> Request | MigLayoutError | None:
    label = labels_of(node).get(GPU_OPERATOR_LABELS.mig_config)
    if label:
        return Request(label, label, config.mig_configs)
    raw = annotations_of(node).get(RUNAI_MIG_CONFIG)
    if not raw:
        return None
    digest = hashlib.sha256(raw.encode()).hexdigest()[:12]
    name = f"{RUNAI_MIG_CONFIG}@{digest}"
    try:
        custom = migstate.parse_mig_parted(yaml.safe_load(raw), RUNAI_MIG_CONFIG)
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        # ValueError covers MigLayoutError; ValueError/TypeError also come from values the
        # parser converts without checking (``position: x``). An annotation anyone can write
        # must end as a failed request, never as an exception that stalls the node's reconcile.
        return MigLayoutError("invalid-config", f"{name}: {exc}")
    if RUNAI_SELECTED not in custom:
        return MigLayoutError("invalid-config", f"{name}: no config {RUNAI_SELECTED!r} in it")
    return Request(name, RUNAI_SELECTED, custom)


def profile_of(gpu: GpuRecord) -> GpuProfile:
    for name in (gpu.profile, gpu.product):
        found = BUILTIN_CATALOG.find(name) if name else None
        if found is not None:
            return found
    return BUILTIN_CATALOG.get(DEFAULT_PROFILE_KEY)


def _layouts(
    gpus: Sequence[GpuRecord], config: str, custom: migstate.CustomConfigs
) -> list[MigLayout]:
    return migstate.layouts_for(config, [profile_of(g) for g in gpus], custom)


def _converge(gpus: Sequence[GpuRecord], layouts: Sequence[MigLayout]) -> list[GpuRecord]:
    """Give every free GPU its layout; returns the in-use GPUs left as they are."""
    blocked = []
    for gpu, layout in zip(gpus, layouts, strict=True):
        fresh = GpuRecord(gpu.id, gpu.index, gpu.product, gpu.memory_mib, gpu.profile, "")
        migstate.apply_layouts([fresh], [layout])
        if migstate.layout_signature([fresh]) == migstate.layout_signature([gpu]):
            continue
        if migstate.gpu_in_use(gpu):
            blocked.append(gpu)
            continue
        migstate.apply_layouts([gpu], [layout])
    return blocked


def _in_use(gpus: Sequence[GpuRecord]) -> list[GpuRecord]:
    return [g for g in gpus if migstate.gpu_in_use(g)]


@dataclass(slots=True)
class MigConfigOutcome:
    findings: list[Finding] = field(default_factory=list)
    requeue_after: float | None = None


def reconcile_mig_config(
    node: Obj,
    *,
    pool: PoolConfig | None,
    config: ClusterConfig,
    record: NodeTopology,
    prev: NodeTopology | None,
    now: float,
    delay: float,
) -> MigConfigOutcome:
    """Move ``record``'s MIG layout and ``record.mig_config`` one step (see the module doc).

    Runs after the holders are known, so "in use" means held by a pod right now.
    """
    out = MigConfigOutcome()
    ref = node_ref(record.node_name, str(meta(node).get("uid", "")))
    request = _request(node, config)
    status = prev.mig_config if prev is not None else None
    if record.mig_dynamic:
        return _refuse_on_dynamic(request, status, record=record, now=now, ref=ref, out=out)
    if request is None:
        record.mig_config = None
        if pool is None or (not pool.mig_config and not any(g.mig_enabled for g in record.gpus)):
            return out  # the common case: no MIG anywhere, nothing to plan
        try:
            static = pool.mig_config or migstate.DISABLED
            layouts = _layouts(record.gpus, static, config.mig_configs)
        except MigLayoutError as exc:
            out.findings.append(Finding(ref, "MigConfigInvalid", str(exc)))
            return out
        blocked = _converge(record.gpus, layouts)
        if blocked:
            out.findings.append(
                Finding(
                    ref,
                    "MigLayoutChangeDeferred",
                    f"the pool's MIG config {pool.mig_config or migstate.DISABLED!r} waits for "
                    f"GPU(s) {', '.join(str(g.index) for g in blocked)} to be released",
                )
            )
        return out

    current = dataclasses.replace(status) if status is not None else MigConfigStatus()
    record.mig_config = current
    if isinstance(request, MigLayoutError):
        name = str(request).split(":", 1)[0]
        if current.requested != name or current.state != FAILED:
            _fail(current, name=name, reason=str(request), now=now, ref=ref, out=out)
        return out

    if current.requested != request.name:
        # A new request (the label changed): validate now, apply after the delay.
        try:
            _layouts(record.gpus, request.config, request.custom)
        except MigLayoutError as exc:
            _fail(current, name=request.name, reason=str(exc), now=now, ref=ref, out=out)
            return out
        current.requested, current.state, current.since, current.reason = (
            request.name,
            PENDING,
            now,
            "",
        )
        out.findings.append(
            Finding(
                ref,
                "MigConfigPending",
                f"MIG config {request.name!r} requested; applying in {delay:g}s",
                NORMAL,
            )
        )
    if current.state == PENDING:
        due = current.since + delay
        if now < due:
            out.requeue_after = due - now
            return out
        busy = _in_use(record.gpus)
        if busy:
            holders = sorted(
                {
                    f"{h.namespace}/{h.pod}"
                    for g in busy
                    for h in [*g.status.holders, *(h for d in g.mig_devices for h in d.holders)]
                }
            )
            _fail(
                current,
                name=request.name,
                reason=f"GPU(s) {', '.join(str(g.index) for g in busy)} in use by "
                f"{', '.join(holders)}; mig-manager does not reconfigure GPUs with running "
                "clients (change the label again once they are gone)",
                now=now,
                ref=ref,
                out=out,
            )
            return out
        migstate.apply_layouts(record.gpus, _layouts(record.gpus, request.config, request.custom))
        current.applied, current.state, current.since, current.reason = (
            request.name,
            SUCCESS,
            now,
            "",
        )
        out.findings.append(
            Finding(ref, "MigConfigApplied", f"MIG config {request.name!r} applied", NORMAL)
        )
        return out
    if current.state == SUCCESS:
        # New GPUs (pool grown) or a rebuilt record: give free GPUs the applied layout.
        _converge(record.gpus, _layouts(record.gpus, request.config, request.custom))
    return out


def _refuse_on_dynamic(
    request: Request | MigLayoutError | None,
    status: MigConfigStatus | None,
    *,
    record: NodeTopology,
    now: float,
    ref: ObjectRef,
    out: MigConfigOutcome,
) -> MigConfigOutcome:
    """A dynamic-MIG node's layout belongs to its DRA claims: a mig-manager request fails."""
    if request is None:
        record.mig_config = None
        return out
    name = request.name if isinstance(request, Request) else str(request).split(":", 1)[0]
    current = dataclasses.replace(status) if status is not None else MigConfigStatus()
    record.mig_config = current
    if current.requested != name or current.state != FAILED:
        _fail(
            current,
            name=name,
            reason=f"pool {record.pool!r} uses dynamic MIG: DRA claims create and destroy MIG "
            "instances, mig-manager configs do not apply",
            now=now,
            ref=ref,
            out=out,
        )
    return out


def _fail(
    status: MigConfigStatus,
    *,
    name: str,
    reason: str,
    now: float,
    ref: ObjectRef,
    out: MigConfigOutcome,
) -> None:
    status.requested, status.state, status.since, status.reason = name, FAILED, now, reason
    out.findings.append(Finding(ref, "MigConfigFailed", f"MIG config {name!r} failed: {reason}"))


# --- what goes on the Node -------------------------------------------------------------------


def node_patch(node: Obj, record: NodeTopology) -> dict[str, dict[str, str | None]]:
    """Labels/annotations to change on the Node so it shows ``record.mig_config``: the
    mig-manager state label, the failure reason, and the reference's ``run.ai/mig-mapping``.

    The mapping describes the layout in place, so it is there exactly while that layout is the
    one a ``run.ai/mig.config`` request applied (also while a newer request is pending or has
    failed, since the layout has not changed then) and is removed once another layout replaces
    it (annotation removed, or a ``nvidia.com/mig.config`` label applied): a stale mapping
    would name MIG UUIDs that no longer exist."""
    labels, notes = labels_of(node), annotations_of(node)
    want_labels: dict[str, str | None] = {}
    want_notes: dict[str, str | None] = {}
    status = record.mig_config
    state_key = GPU_OPERATOR_LABELS.mig_config_state
    if status is None:
        if state_key in labels:
            want_labels[state_key] = None
        if REASON_ANNOTATION in notes:
            want_notes[REASON_ANNOTATION] = None
    else:
        if labels.get(state_key) != status.state:
            want_labels[state_key] = status.state
        reason = status.reason[:1000] if status.state == FAILED else None
        if notes.get(REASON_ANNOTATION) != reason:
            want_notes[REASON_ANNOTATION] = reason
    mapping = (
        runai_mapping(record)
        if status is not None and status.applied.startswith(RUNAI_MIG_CONFIG)
        else None
    )
    if notes.get(RUNAI_MIG_MAPPING) != mapping:
        want_notes[RUNAI_MIG_MAPPING] = mapping
    out: dict[str, dict[str, str | None]] = {}
    if want_labels:
        out["labels"] = want_labels
    if want_notes:
        out["annotations"] = want_notes
    return out


def runai_mapping(record: NodeTopology) -> str:
    """The reference's ``run.ai/mig-mapping``: base64 JSON ``{gpuIdx: [{position,
    device_uuid, gpu_instance_id}]}`` for the MIG-enabled GPUs."""
    mapping = {
        str(g.index): [
            {"position": d.placement_start, "device_uuid": d.uuid, "gpu_instance_id": d.gi_id}
            for d in sorted(g.mig_devices, key=lambda d: d.placement_start)
        ]
        for g in record.gpus
        if g.mig_enabled
    }
    return base64.b64encode(json.dumps(mapping, sort_keys=True).encode()).decode()
