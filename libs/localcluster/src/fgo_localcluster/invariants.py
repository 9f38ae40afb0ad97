"""Invariant checker: the simulated state against the truth in the API.

A simulator that drifts after a hiccup produces false results downstream, so after every fault
the fault suite (tests/faults) asks one question: does what our services published agree with
what Kubernetes says is true? The truth is the API: bound pods, their requests, their allocated
ResourceClaims, the Nodes. What we check against it:

* **holdings** — every active GPU pod (bound, not Succeeded/Failed) holds exactly the GPUs it
  should: its effective ``nvidia.com/gpu`` request (init containers and sidecars included), the
  devices of its allocated claims, and on nodes with a kubelet the devices the kubelet gave it
  (``fake-gpu-operator/allocated-devices``); no record holds a pod that is gone or finished;
* **exclusivity** — no GPU (or MIG device) is held by two pods, except by pods sharing one
  ResourceClaim;
* **capacity = topology** — ``status.capacity``/``allocatable`` of ``nvidia.com/gpu`` (and the
  MIG resources) equal the record's devices / healthy devices, per the record's MIG strategy;
* **slices = topology** — the ``gpu.nvidia.com`` ResourceSlices of a node's pool carry exactly
  the record's devices (names ``gpu-<minor>``, ``uuid`` attributes), one complete generation;
* **metrics = allocations** — the dcgm-exporter scrape has one series per (GPU, holder) of the
  record and nothing else (no series of a pod or node that is gone).

The checker is written from the Kubernetes and NVIDIA rules, not from our services' code, so it
is an independent oracle: only the record format (``fgo_common.topology``) is shared. The pure
part (:func:`check`) works on a :class:`Snapshot` and has unit tests; :func:`collect` reads one
from a live cluster.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fgo_common.annotations import ALLOCATED_DEVICES, parse_allocated_devices
from fgo_common.topology import (
    HEALTHY,
    HOLDER_DEVICE_PLUGIN,
    HOLDER_DRA,
    TOPOLOGY_DATA_KEY,
    GpuRecord,
    Holder,
    NodeTopology,
    TopologyFormatError,
)

Obj = dict[str, Any]

GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
DRA_DRIVER = "gpu.nvidia.com"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
# The dcgm-exporter family used for the per-holder comparison: present on every product and on
# MIG instances (GPU_UTIL is not reported on instances).
METRIC_FAMILY = "DCGM_FI_DEV_FB_USED"


@dataclass(frozen=True, slots=True)
class Violation:
    """One disagreement between the published state and the API's truth."""

    kind: str  # holdings, exclusivity, stale-holder, capacity, slices, metrics, record
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.node}: {self.message}"


@dataclass(frozen=True, slots=True)
class ExporterTarget:
    """A dcgm-exporter endpoint and which nodes it serves.

    ``nodes=None`` means "every KWOK node with a record" (the exporter's kwok mode).
    """

    url: str
    nodes: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


@dataclass
class Scope:
    """What to check: the records of one topology namespace, on the nodes under test."""

    topology_namespace: str
    topology_prefix: str = "topology"
    # Names of the nodes under test, including ones the test deleted (so what is left of them
    # is found). None: every node that has a record.
    nodes: frozenset[str] | None = None
    # Nodes whose capacity must equal the record (None: every record node). A node without a
    # device plugin (DRA only) publishes no nvidia.com/gpu capacity and is left out.
    capacity_nodes: frozenset[str] | None = None
    # Nodes whose gpu.nvidia.com slices must equal the record (None: every record node; an
    # empty set turns the slice check off).
    slice_nodes: frozenset[str] | None = None
    # What the publishers do with unhealthy devices ("taint"/"publish" keep them, "omit" drops).
    unhealthy_devices: str = "taint"
    # KWOK nodes whose GPUs are published both as extended resources and as DRA devices: there
    # a GPU (or MIG device) taken through a DRA claim must not also be allocatable, or the
    # scheduler could hand it out twice (docs/chart.md, "Both GPU paths on one KWOK node").
    dra_shared_nodes: frozenset[str] = frozenset()
    exporters: tuple[ExporterTarget, ...] = ()
    driver: str = DRA_DRIVER


@dataclass
class Snapshot:
    """Everything the checks need, read from the API (and the exporters) at one moment."""

    records: dict[str, NodeTopology] = field(default_factory=dict)
    record_errors: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, Obj] = field(default_factory=dict)  # existing Nodes in scope
    pods: list[Obj] = field(default_factory=list)  # pods bound to nodes in scope
    claims: dict[str, Obj] = field(default_factory=dict)  # "<ns>/<name>" -> ResourceClaim
    slices: list[Obj] = field(default_factory=list)  # slices of the driver, nodes in scope
    scrapes: dict[str, list[Sample] | str] = field(default_factory=dict)  # url -> samples/error


# ------------------------------------------------------------------------------------------------
# Kubernetes rules (independent of the services' implementation)
# ------------------------------------------------------------------------------------------------


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def pod_key(pod: Mapping[str, Any]) -> str:
    return f"{_meta(pod).get('namespace', '')}/{_meta(pod).get('name', '')}"


def is_active(pod: Mapping[str, Any]) -> bool:
    """Bound and not finished: such a pod holds what it was given."""
    phase = (pod.get("status") or {}).get("phase") or "Pending"
    return bool((pod.get("spec") or {}).get("nodeName")) and phase not in TERMINAL_PHASES


def _count(container: Mapping[str, Any], resource: str) -> int:
    res = container.get("resources") or {}
    value = (res.get("limits") or {}).get(resource, (res.get("requests") or {}).get(resource, 0))
    try:
        return max(0, int(str(value)))
    except ValueError:
        return 0


def effective_request(pod: Mapping[str, Any], resource: str) -> int:
    """The pod's effective request (KEP-753): ``max(sum(app) + sum(sidecars),
    max_i(init_i + sidecars started before i))``; sidecars are init containers with
    ``restartPolicy: Always``."""
    spec = pod.get("spec") or {}
    app = sum(_count(c, resource) for c in spec.get("containers") or [])
    sidecars = 0
    init_peak = 0
    for c in spec.get("initContainers") or []:
        n = _count(c, resource)
        if c.get("restartPolicy") == "Always":
            sidecars += n
            init_peak = max(init_peak, sidecars)
        else:
            init_peak = max(init_peak, n + sidecars)
    return max(app + sidecars, init_peak)


def pod_claim_names(pod: Mapping[str, Any]) -> list[str]:
    """``<ns>/<claim>`` of every ResourceClaim the pod uses (templates resolved by status)."""
    ns = _meta(pod).get("namespace", "")
    generated = {
        s.get("name"): s.get("resourceClaimName")
        for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []
    }
    out = []
    for ref in (pod.get("spec") or {}).get("resourceClaims") or []:
        name = ref.get("resourceClaimName") or generated.get(ref.get("name"))
        if name:
            out.append(f"{ns}/{name}")
    return out


def claim_results(claim: Mapping[str, Any], driver: str) -> list[Mapping[str, Any]]:
    allocation = (claim.get("status") or {}).get("allocation") or {}
    results = (allocation.get("devices") or {}).get("results") or []
    return [r for r in results if r.get("driver") == driver]


# ------------------------------------------------------------------------------------------------
# The record's view
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Device:
    """A holdable unit of a record: a full GPU or a MIG device."""

    uuid: str
    gpu: GpuRecord
    mig_index: int  # -1 for the full GPU
    healthy: bool
    holders: tuple[Holder, ...]

    @property
    def label(self) -> str:
        where = f"GPU {self.gpu.index}" + (f" MIG {self.mig_index}" if self.mig_index >= 0 else "")
        return f"{where} ({self.uuid})"


def _devices(record: NodeTopology) -> list[_Device]:
    out = []
    for gpu in record.gpus:
        out.append(_Device(gpu.id, gpu, -1, gpu.healthy, tuple(gpu.status.holders)))
        for i, mig in enumerate(gpu.mig_devices if gpu.mig_enabled else []):
            healthy = gpu.healthy and mig.health == HEALTHY
            out.append(_Device(mig.uuid, gpu, i, healthy, tuple(mig.holders)))
    return out


def _holder_matches(holder: Holder, pod: Mapping[str, Any]) -> bool:
    m = _meta(pod)
    if holder.pod_uid:
        return holder.pod_uid == m.get("uid")
    return (holder.namespace, holder.pod) == (m.get("namespace"), m.get("name"))


def expected_capacity(
    record: NodeTopology, *, dra_shared: bool = False
) -> dict[str, tuple[int, int]]:
    """Resource -> (capacity, allocatable) a kubelet would publish for the record's GPUs,
    following NVIDIA's device plugin MIG strategies (none / single / mixed). With
    ``dra_shared`` a device a DRA claim holds (wholly or in part) is not allocatable."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def add(resource: str, healthy: bool) -> None:
        out[resource][0] += 1
        out[resource][1] += int(healthy)

    def via_dra(holders: Iterable[Holder]) -> bool:
        return dra_shared and any(h.kind == HOLDER_DRA for h in holders)

    for gpu in record.gpus:
        migs = gpu.mig_devices if gpu.mig_enabled else []
        whole_dra = via_dra(gpu.status.holders)
        if record.mig_strategy == "none" or not migs:
            part_dra = any(via_dra(m.holders) for m in gpu.mig_devices)
            add(GPU_RESOURCE, gpu.healthy and not whole_dra and not part_dra)
            continue
        for mig in migs:
            healthy = (
                gpu.healthy and mig.health == HEALTHY and not whole_dra and not via_dra(mig.holders)
            )
            if record.mig_strategy == "single":
                add(GPU_RESOURCE, healthy)
            else:
                add(MIG_RESOURCE_PREFIX + mig.profile.replace("+", "."), healthy)
    result = {k: (v[0], v[1]) for k, v in out.items()}
    # Device-plugin time-slicing / MPS: each device of a replicated resource counts `replicas`
    # times, under its advertised name (nvidia.com/gpu.shared when renamed).
    for entry in record.sharing.resources if record.sharing is not None else ():
        if entry.name in result and entry.replicas > 1:
            cap, alloc = result.pop(entry.name)
            result[entry.advertised or entry.name] = (cap * entry.replicas, alloc * entry.replicas)
    return result


# ------------------------------------------------------------------------------------------------
# The checks
# ------------------------------------------------------------------------------------------------


def check(snapshot: Snapshot, scope: Scope) -> list[Violation]:
    """Every violation of the invariants in ``snapshot`` (empty: all green)."""
    out: list[Violation] = []
    for node, error in sorted(snapshot.record_errors.items()):
        out.append(Violation("record", node, f"record cannot be read: {error}"))
    for node in sorted(snapshot.records):
        if node not in snapshot.nodes:
            out.append(Violation("record", node, "record of a node that does not exist"))
    out += _check_holdings(snapshot, scope)
    out += _check_capacity(snapshot, scope)
    out += _check_slices(snapshot, scope)
    out += _check_metrics(snapshot, scope)
    return out


def _check_holdings(snapshot: Snapshot, scope: Scope) -> list[Violation]:
    out: list[Violation] = []
    pods_by_node: dict[str, list[Obj]] = defaultdict(list)
    for pod in snapshot.pods:
        pods_by_node[(pod.get("spec") or {}).get("nodeName", "")].append(pod)
    slice_uuid = _slice_uuids(snapshot.slices)

    for node, record in sorted(snapshot.records.items()):
        devices = _devices(record)
        by_uuid = {d.uuid.lower(): d for d in devices}
        node_pods = pods_by_node.get(node, [])
        live = {str(_meta(p).get("uid")): p for p in node_pods}

        # Exclusivity, and holders of pods that are gone / finished / elsewhere.
        for device in devices:
            pods_here: dict[str, Holder] = {}
            for holder in device.holders:
                ident = holder.pod_uid or f"{holder.namespace}/{holder.pod}"
                pods_here.setdefault(ident, holder)
                owner: Obj | None = next(
                    (p for p in live.values() if _holder_matches(holder, p)), None
                )
                who = f"{holder.namespace}/{holder.pod}"
                if owner is None:
                    out.append(
                        Violation(
                            "stale-holder",
                            node,
                            f"{device.label} held by {who}, which is not a pod bound to this node",
                        )
                    )
                elif not is_active(owner) and not _meta(owner).get("deletionTimestamp"):
                    phase = (owner.get("status") or {}).get("phase")
                    out.append(
                        Violation(
                            "stale-holder", node, f"{device.label} held by {who}, which is {phase}"
                        )
                    )
            if len(pods_here) > 1:
                claims = {h.claim for h in pods_here.values()}
                shared_claim = (
                    all(h.kind == HOLDER_DRA for h in pods_here.values())
                    and len(claims) == 1
                    and "" not in claims
                )
                # Device-plugin time-slicing / MPS: replica holders share the GPU by design.
                replicas = record.sharing is not None and all(
                    h.kind == HOLDER_DEVICE_PLUGIN and h.sharing for h in pods_here.values()
                )
                if not shared_claim and not replicas:
                    who = ", ".join(sorted(f"{h.namespace}/{h.pod}" for h in pods_here.values()))
                    out.append(
                        Violation(
                            "exclusivity", node, f"{device.label} held by several pods: {who}"
                        )
                    )

        # Every active pod holds exactly what it should.
        for pod in sorted(node_pods, key=pod_key):
            if not is_active(pod) or _meta(pod).get("deletionTimestamp"):
                continue
            held = {
                d.uuid.lower() for d in devices if any(_holder_matches(h, pod) for h in d.holders)
            }
            held_dra = {
                d.uuid.lower()
                for d in devices
                if any(_holder_matches(h, pod) and h.kind == HOLDER_DRA for h in d.holders)
            }
            want_dra: set[str] = set()
            claim_problem = ""
            for key in pod_claim_names(pod):
                claim = snapshot.claims.get(key)
                if claim is None:
                    claim_problem = f"claim {key} not found"
                    continue
                for result in claim_results(claim, scope.driver):
                    if result.get("pool") != node:
                        continue
                    uuid = slice_uuid.get((node, str(result.get("device"))))
                    if uuid is None:
                        claim_problem = (
                            f"claim {key} holds {result.get('device')}, no such device in the "
                            "node's slices"
                        )
                        continue
                    want_dra.add(uuid.lower())
            want_dp = (
                effective_request(pod, GPU_RESOURCE)
                + sum(
                    effective_request(pod, r)
                    for r in _extended_resources(pod)
                    if r == GPU_RESOURCE + ".shared"
                )
                + sum(
                    effective_request(pod, r)
                    for r in _extended_resources(pod)
                    if r.startswith(MIG_RESOURCE_PREFIX)
                )
            )
            held_dp = held - held_dra
            # One holder entry per replica held (a pod may hold two replicas of one GPU).
            units_dp = sum(
                1
                for d in devices
                for h in d.holders
                if h.kind != HOLDER_DRA and _holder_matches(h, pod)
            )
            who = pod_key(pod)
            if claim_problem:
                out.append(Violation("holdings", node, f"pod {who}: {claim_problem}"))
            if held_dra != want_dra:
                out.append(
                    Violation(
                        "holdings",
                        node,
                        f"pod {who}: claims allocated "
                        f"{_names(want_dra, by_uuid)}, record holds {_names(held_dra, by_uuid)}",
                    )
                )
            if units_dp != want_dp:
                out.append(
                    Violation(
                        "holdings",
                        node,
                        f"pod {who} requests {want_dp} device(s), the "
                        f"record gives it {units_dp}: {_names(held_dp, by_uuid)}",
                    )
                )
            reported = (_meta(pod).get("annotations") or {}).get(ALLOCATED_DEVICES)
            is_kwok = record.kwok or (
                (_meta(snapshot.nodes.get(node, {})).get("annotations") or {}).get(KWOK_ANNOTATION)
                == "fake"
            )
            if want_dp and not is_kwok:
                out += _check_kubelet_choice(node, who, reported, held_dp, by_uuid)
    # Holding an unhealthy GPU is allowed (it can go bad under a running pod), and pods bound to
    # nodes without a record cannot hold anything: neither is a violation.
    return out


def _check_kubelet_choice(
    node: str, who: str, reported: str | None, held_dp: set[str], by_uuid: Mapping[str, _Device]
) -> list[Violation]:
    """On a node with a kubelet, the record must hold exactly what the kubelet allocated."""
    if not reported:
        return [
            Violation(
                "holdings",
                node,
                f"pod {who}: no {ALLOCATED_DEVICES} annotation (the "
                "device plugin did not report the kubelet's choice)",
            )
        ]
    try:
        ids = {i.lower() for ids in parse_allocated_devices(reported).values() for i in ids}
    except ValueError as exc:
        return [Violation("holdings", node, f"pod {who}: bad {ALLOCATED_DEVICES}: {exc}")]
    if ids != held_dp:
        return [
            Violation(
                "holdings",
                node,
                f"pod {who}: the kubelet allocated {sorted(ids)}, the "
                f"record holds {_names(held_dp, by_uuid)}",
            )
        ]
    return []


def _extended_resources(pod: Mapping[str, Any]) -> set[str]:
    spec = pod.get("spec") or {}
    names: set[str] = set()
    for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        res = c.get("resources") or {}
        names |= set(res.get("limits") or {}) | set(res.get("requests") or {})
    return names


def _names(uuids: Iterable[str], by_uuid: Mapping[str, _Device]) -> str:
    labels = sorted(by_uuid[u].label if u in by_uuid else u for u in uuids)
    return "[" + ", ".join(labels) + "]" if labels else "nothing"


def _check_capacity(snapshot: Snapshot, scope: Scope) -> list[Violation]:
    out = []
    for node, record in sorted(snapshot.records.items()):
        obj = snapshot.nodes.get(node)
        if obj is None or (scope.capacity_nodes is not None and node not in scope.capacity_nodes):
            continue
        status = obj.get("status") or {}
        capacity = status.get("capacity") or {}
        allocatable = status.get("allocatable") or {}
        want = expected_capacity(record, dra_shared=node in scope.dra_shared_nodes)
        ours = {r for r in capacity if r == GPU_RESOURCE or r.startswith(MIG_RESOURCE_PREFIX)}
        for resource in sorted(set(want) | ours):
            cap, alloc = want.get(resource, (0, 0))
            got = (_int(capacity.get(resource)), _int(allocatable.get(resource)))
            if got != (cap, alloc):
                out.append(
                    Violation(
                        "capacity",
                        node,
                        f"{resource} capacity/allocatable {got[0]}/"
                        f"{got[1]}, the record says {cap}/{alloc}",
                    )
                )
    return out


def _int(value: object) -> int:
    try:
        return int(str(value)) if value is not None else 0
    except ValueError:
        return -1


def _slice_pools(slices: Iterable[Obj]) -> dict[str, list[Obj]]:
    """Slices of the newest generation of each pool (keyed by pool name)."""
    pools: dict[str, list[Obj]] = defaultdict(list)
    for s in slices:
        pools[str((s.get("spec") or {}).get("pool", {}).get("name", ""))].append(s)
    newest: dict[str, list[Obj]] = {}
    for name, members in pools.items():
        top = max(int(s["spec"]["pool"].get("generation", 0)) for s in members)
        newest[name] = [s for s in members if int(s["spec"]["pool"].get("generation", 0)) == top]
    return newest


def _slice_uuids(slices: Iterable[Obj]) -> dict[tuple[str, str], str]:
    """(pool, device name) -> uuid attribute, over the newest generation of each pool."""
    out = {}
    for pool, members in _slice_pools(slices).items():
        for s in members:
            for device in (s.get("spec") or {}).get("devices") or []:
                uuid = ((device.get("attributes") or {}).get("uuid") or {}).get("string")
                if uuid:
                    out[(pool, str(device.get("name")))] = str(uuid)
    return out


def _check_slices(snapshot: Snapshot, scope: Scope) -> list[Violation]:
    out: list[Violation] = []
    pools = _slice_pools(snapshot.slices)
    wanted_nodes = set(snapshot.records) if scope.slice_nodes is None else set(scope.slice_nodes)
    for node in sorted(wanted_nodes | set(pools)):
        record = snapshot.records.get(node)
        members = pools.get(node, [])
        if record is None or node not in wanted_nodes:
            if members and record is None and (scope.nodes is None or node in scope.nodes):
                out.append(
                    Violation(
                        "slices",
                        node,
                        f"{len(members)} slice(s) published for a node without a record",
                    )
                )
            continue
        want: dict[str, str] = {}  # uuid -> device name ("" = any name, MIG)
        for gpu in record.gpus:
            if not gpu.healthy and scope.unhealthy_devices == "omit":
                continue
            if gpu.mig_enabled and gpu.mig_devices:
                for mig in gpu.mig_devices:
                    if mig.health != HEALTHY and scope.unhealthy_devices == "omit":
                        continue
                    want[mig.uuid.lower()] = ""
            else:
                want[gpu.id.lower()] = f"gpu-{gpu.minor}"
        got: dict[str, str] = {}
        names: list[str] = []
        for s in members:
            for device in (s.get("spec") or {}).get("devices") or []:
                uuid = ((device.get("attributes") or {}).get("uuid") or {}).get("string", "")
                got[str(uuid).lower()] = str(device.get("name"))
                names.append(str(device.get("name")))
        if not members:
            out.append(Violation("slices", node, "no ResourceSlice published"))
            continue
        expected_count = {int(s["spec"]["pool"].get("resourceSliceCount", 1)) for s in members}
        if expected_count != {len(members)}:
            out.append(
                Violation(
                    "slices",
                    node,
                    f"pool incomplete: {len(members)} slice(s) of the "
                    f"newest generation, resourceSliceCount {sorted(expected_count)}",
                )
            )
        if len(names) != len(set(names)):
            out.append(Violation("slices", node, "a device name is published twice"))
        if set(got) != set(want):
            missing = sorted(set(want) - set(got))
            extra = sorted(set(got) - set(want))
            out.append(
                Violation(
                    "slices",
                    node,
                    f"devices differ from the record: missing {missing}, extra {extra}",
                )
            )
        for uuid, name in want.items():
            if name and uuid in got and got[uuid] != name:
                out.append(
                    Violation("slices", node, f"{uuid} published as {got[uuid]}, expected {name}")
                )
    return out


def _check_metrics(snapshot: Snapshot, scope: Scope) -> list[Violation]:
    out: list[Violation] = []
    for target in scope.exporters:
        scraped = snapshot.scrapes.get(target.url)
        if scraped is None or isinstance(scraped, str):
            out.append(Violation("metrics", "-", f"scrape of {target.url} failed: {scraped}"))
            continue
        served = (
            {n for n, r in snapshot.records.items() if r.kwok}
            if target.nodes is None
            else set(target.nodes)
        )
        got: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        for sample in scraped:
            if sample.name != METRIC_FAMILY:
                continue
            host = sample.labels.get("Hostname", sample.labels.get("hostname", ""))
            got[host].add(
                (
                    sample.labels.get("UUID", "").lower(),
                    sample.labels.get("GPU_I_ID", ""),
                    sample.labels.get("namespace", ""),
                    sample.labels.get("pod", ""),
                    sample.labels.get("container", ""),
                )
            )
        for node in sorted(served | (set(got) & (scope.nodes or set(got)))):
            record = snapshot.records.get(node)
            series = got.get(node, set())
            if record is None or node not in served:
                if series:
                    out.append(
                        Violation(
                            "metrics",
                            node,
                            f"{len(series)} series for a node that has no "
                            "record (or is not served by this exporter)",
                        )
                    )
                continue
            want = _expected_series(record)
            if series != want:
                missing = sorted(want - series)[:5]
                extra = sorted(series - want)[:5]
                out.append(
                    Violation(
                        "metrics",
                        node,
                        f"{METRIC_FAMILY} series differ from the record's "
                        f"holders: missing {missing}, extra {extra}",
                    )
                )
    return out


def _expected_series(record: NodeTopology) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()

    def add(uuid: str, instance: str, holders: Iterable[Holder]) -> None:
        keys = {(h.namespace, h.pod, h.container) for h in holders}
        if not keys:
            out.add((uuid.lower(), instance, "", "", ""))
        for ns, pod, container in keys:
            out.add((uuid.lower(), instance, ns, pod, container))

    for gpu in record.gpus:
        if gpu.mig_enabled and gpu.mig_devices:
            for mig in gpu.mig_devices:
                add(gpu.id, str(mig.gi_id), mig.holders)
        else:
            add(gpu.id, "", gpu.status.holders)
    return out


# ------------------------------------------------------------------------------------------------
# Prometheus text
# ------------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'\s*(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"\s*,?')


def parse_exposition(text: str) -> list[Sample]:
    """Samples of a Prometheus text exposition (comments skipped, label escapes undone)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels: dict[str, str] = {}
        for lm in _LABEL.finditer(match["labels"] or ""):
            value = lm["value"].replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
            labels[lm["key"]] = value
        try:
            value_f = float(match["value"])
        except ValueError:
            continue
        out.append(Sample(match["name"], labels, value_f))
    return out


# ------------------------------------------------------------------------------------------------
# Reading a snapshot from a live cluster
# ------------------------------------------------------------------------------------------------


async def _get_json(api: Any, path: str, query: Mapping[str, str] | None = None) -> Obj:
    """GET ``path`` through a kubernetes-asyncio ApiClient, returning the JSON as a dict."""
    resp = await api.call_api(
        path,
        "GET",
        query_params=list((query or {}).items()),
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    try:
        body: Obj = json.loads(await resp.read())
    finally:
        resp.release()
    return body


async def _list(api: Any, path: str, query: Mapping[str, str] | None = None) -> list[Obj]:
    items: list[Obj] = []
    params = dict(query or {})
    params.setdefault("limit", "500")
    while True:
        body = await _get_json(api, path, params)
        items += body.get("items") or []
        token = (body.get("metadata") or {}).get("continue")
        if not token:
            return items
        params["continue"] = token


async def scrape(url: str, timeout_s: float = 30.0) -> list[Sample] | str:
    """Samples of one exporter, or the error text."""
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            http.get(url) as resp,
        ):
            if resp.status != 200:
                return f"HTTP {resp.status}"
            return parse_exposition(await resp.text())
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


async def collect(api: Any, scope: Scope) -> Snapshot:
    """Read a :class:`Snapshot` for ``scope`` from the API server (admin credentials)."""
    snap = Snapshot()
    cms = await _list(
        api,
        f"/api/v1/namespaces/{scope.topology_namespace}/configmaps",
        {"labelSelector": "node-topology=true"},
    )
    prefix = scope.topology_prefix + "-"
    for cm in cms:
        name = str(_meta(cm).get("name", ""))
        if not name.startswith(prefix):
            continue
        node = ((_meta(cm).get("labels") or {}).get("node-name")) or name[len(prefix) :]
        if scope.nodes is not None and node not in scope.nodes:
            continue
        try:
            snap.records[node] = NodeTopology.from_yaml(
                (cm.get("data") or {}).get(TOPOLOGY_DATA_KEY, ""), node
            )
        except TopologyFormatError as exc:
            snap.record_errors[node] = str(exc)
        except Exception as exc:  # a damaged record the parser does not even classify
            snap.record_errors[node] = f"{type(exc).__name__}: {exc}"
    wanted = set(scope.nodes) if scope.nodes is not None else set(snap.records)
    for node in await _list(api, "/api/v1/nodes"):
        name = str(_meta(node).get("name"))
        if name in wanted:
            snap.nodes[name] = node

    async def pods_of(node: str) -> list[Obj]:
        return await _list(api, "/api/v1/pods", {"fieldSelector": f"spec.nodeName={node}"})

    for found in await asyncio.gather(*(pods_of(n) for n in sorted(wanted))):
        snap.pods += found
    namespaces = {str(_meta(p).get("namespace")) for p in snap.pods if pod_claim_names(p)}
    for ns in sorted(namespaces):
        for claim in await _list(api, f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims"):
            snap.claims[f"{ns}/{_meta(claim).get('name')}"] = claim
    if scope.slice_nodes is None or scope.slice_nodes:
        for s in await _list(
            api,
            "/apis/resource.k8s.io/v1/resourceslices",
            {"fieldSelector": f"spec.driver={scope.driver}"},
        ):
            pool = str((s.get("spec") or {}).get("pool", {}).get("name", ""))
            if pool in wanted:
                snap.slices.append(s)
    results = await asyncio.gather(*(scrape(t.url) for t in scope.exporters))
    snap.scrapes = {t.url: r for t, r in zip(scope.exporters, results, strict=True)}
    return snap


async def check_cluster(api: Any, scope: Scope) -> list[Violation]:
    """Collect and check in one call."""
    return check(await collect(api, scope), scope)
