"""How a node's DRA devices become ResourceSlices: names, splitting, content hash, generation.

Pool = node name, one generation per content change, devices split over several slices of the
pool when the API's per-slice limits require it, owner reference = the Node. resource.k8s.io/v1
in 1.36 (checked against kube-apiserver): ``sharedCounters`` and ``devices`` may not share a
slice, at most 8 counter sets per slice, and 64 devices per slice when any device has taints or
consumes counters; :func:`build_slices` splits the pool accordingly. The devices themselves are
``fgo_common.dradevices``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fgo_common.dradevices import RESOURCE_API_VERSION, Obj
from fgo_common.names import DRA_NAMES

# Labels and annotations on the slices we publish (our own vocabulary, not NVIDIA's).
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "fake-gpu-operator"
PUBLISHER_LABEL = "fake-gpu-operator/publisher"  # "dra-plugin" or "kwok-dra-plugin"
# sha256 of what we wrote. The API server rewrites some fields on the way in (taint timestamps,
# quantity spellings, fields of disabled features); comparing our own hash instead of the stored
# object keeps an unchanged record from causing a write, which would wake every pending pod.
CONTENT_HASH_ANNOTATION = "fake-gpu-operator/content-hash"
TOPOLOGY_GENERATION_ANNOTATION = "fake-gpu-operator/topology-generation"

# k8s.io/api v0.36 resource/v1 limits (types.go).
MAX_DEVICES_PER_SLICE = 128
MAX_DEVICES_PER_SLICE_WITH_TAINTS = 64  # also with consumesCounters or list attributes
MAX_OBJECT_NAME_LENGTH = 253
MAX_COUNTER_SETS_PER_SLICE = 8  # and a slice holds either sharedCounters or devices


def split_devices(devices: Sequence[Obj]) -> list[list[Obj]]:
    """Devices in as few slices as the API allows; always at least one (possibly empty) slice,
    so a node whose GPUs are all gone still tells the scheduler its pool is empty."""
    limit = (
        MAX_DEVICES_PER_SLICE_WITH_TAINTS
        if any(d.get("taints") or d.get("consumesCounters") for d in devices)
        else MAX_DEVICES_PER_SLICE
    )
    chunks = [list(devices[i : i + limit]) for i in range(0, len(devices), limit)]
    return chunks or [[]]


def split_counter_sets(counter_sets: Sequence[Obj]) -> list[list[Obj]]:
    """Counter sets in slices of their own (the API refuses them next to devices), at most
    :data:`MAX_COUNTER_SETS_PER_SLICE` each; none when there are none."""
    step = MAX_COUNTER_SETS_PER_SLICE
    return [list(counter_sets[i : i + step]) for i in range(0, len(counter_sets), step)]


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def slice_name(base: str, index: int) -> str:
    """``<base>`` for the first slice of a pool, ``<base>-<index>`` for the others; shortened
    with a hash when a long node name would exceed the object-name limit."""
    name = base if index == 0 else f"{base}-{index}"
    if len(name) <= MAX_OBJECT_NAME_LENGTH:
        return name
    digest = _short_hash(name)
    return f"{name[: MAX_OBJECT_NAME_LENGTH - len(digest) - 1].rstrip('-.')}-{digest}"


def kwok_slice_base(node_name: str) -> str:
    """``kwok-<node>-gpu``: the reference's name for a KWOK node's slice."""
    return f"kwok-{node_name}-gpu"


def node_slice_base(node_name: str, driver: str = DRA_NAMES.driver) -> str:
    """``<node>-gpu.nvidia.com``: the real driver's prefix, without its random suffix (a
    deterministic name lets a restarted plugin find and update its own slices)."""
    return f"{node_name}-{driver}"


@dataclass(frozen=True, slots=True)
class PoolTarget:
    """Where a node's devices go: the node (owner), slice names and who publishes them."""

    node_name: str
    node_uid: str
    base_name: str
    publisher: str
    driver: str = DRA_NAMES.driver
    topology_generation: int = 0


def content_hash(spec_without_generation: Obj, metadata_extra: Obj) -> str:
    canonical = json.dumps(
        {"spec": spec_without_generation, "meta": metadata_extra},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_slices(
    target: PoolTarget,
    devices: Sequence[Obj],
    generation: int,
    counter_sets: Sequence[Obj] = (),
) -> list[Obj]:
    """The complete ResourceSlice objects of one node's pool at ``generation``: the slices of
    shared counter sets (if any) first, then those of devices.

    Each carries :data:`CONTENT_HASH_ANNOTATION` over everything except the generation, so a
    publisher can tell whether the pool changed without comparing server-rewritten fields.
    """
    counter_chunks = split_counter_sets(counter_sets)
    device_chunks = split_devices(devices) if devices or not counter_chunks else []
    contents: list[tuple[str, list[Obj]]] = [("sharedCounters", c) for c in counter_chunks]
    contents += [("devices", c) for c in device_chunks]
    out: list[Obj] = []
    for index, (field, chunk) in enumerate(contents):
        spec: Obj = {
            "driver": target.driver,
            "nodeName": target.node_name,
            "pool": {"name": target.node_name, "resourceSliceCount": len(contents)},
            field: [dict(d) for d in chunk],
        }
        owner = {
            "apiVersion": "v1",
            "kind": "Node",
            "name": target.node_name,
            "uid": target.node_uid,
            "controller": True,
        }
        labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, PUBLISHER_LABEL: target.publisher}
        digest = content_hash(spec, {"owner": owner, "labels": labels})
        spec["pool"]["generation"] = generation
        annotations = {CONTENT_HASH_ANNOTATION: digest}
        if target.topology_generation:
            annotations[TOPOLOGY_GENERATION_ANNOTATION] = str(target.topology_generation)
        out.append(
            {
                "apiVersion": RESOURCE_API_VERSION,
                "kind": "ResourceSlice",
                "metadata": {
                    "name": slice_name(target.base_name, index),
                    "labels": labels,
                    "annotations": annotations,
                    "ownerReferences": [owner],
                },
                "spec": spec,
            }
        )
    return out


def slice_hash(obj: Obj) -> str:
    return str(
        ((obj.get("metadata") or {}).get("annotations") or {}).get(CONTENT_HASH_ANNOTATION, "")
    )


def slice_index_view(obj: Obj) -> Obj:
    """What a publisher keeps of a stored slice: enough for :func:`plan_pool` (name, content
    hash, pool, node) without the devices and counters, which are most of a slice's size and
    are never read back (an 8-GPU dynamic-MIG node publishes 208 devices)."""
    spec = obj.get("spec") or {}
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": metadata,
        "spec": {k: v for k, v in spec.items() if k not in ("devices", "sharedCounters")},
    }


def slice_generation(obj: Obj) -> int:
    try:
        return int(((obj.get("spec") or {}).get("pool") or {}).get("generation") or 0)
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """What to do to bring a pool's stored slices to the desired ones."""

    apply: list[Obj]  # complete objects to server-side apply (create or replace)
    delete: list[str]  # names of slices to delete
    generation: int

    @property
    def unchanged(self) -> bool:
        return not self.apply and not self.delete


def plan_pool(
    target: PoolTarget,
    devices: Sequence[Obj],
    existing: Iterable[Obj],
    counter_sets: Sequence[Obj] = (),
) -> PoolPlan:
    """Compare the desired pool with ``existing`` (the stored slices of this pool).

    Nothing is written when every stored slice carries the hash of its desired content at one
    common generation. Otherwise the whole pool moves to a new generation (one above anything
    stored): the scheduler then never mixes devices from two versions of the pool.
    """
    current = {o["metadata"]["name"]: o for o in existing}
    stored_generation = max((slice_generation(o) for o in current.values()), default=0)
    desired = build_slices(target, devices, stored_generation or 1, counter_sets)
    same = (
        current
        and set(current) == {d["metadata"]["name"] for d in desired}
        and len({slice_generation(o) for o in current.values()}) == 1
        and all(slice_hash(current[d["metadata"]["name"]]) == slice_hash(d) for d in desired)
    )
    if same:
        return PoolPlan([], [], stored_generation)
    generation = stored_generation + 1
    desired = build_slices(target, devices, generation, counter_sets)
    wanted = {d["metadata"]["name"] for d in desired}
    return PoolPlan(desired, sorted(n for n in current if n not in wanted), generation)
