"""Pod and node annotations/labels this project reads or writes (our own and the reference's).

NVIDIA-facing names (GFD labels, resource names, DRA attributes, metric names) live in
``fgo_common.names`` instead; this module holds the simulator's own vocabulary.
"""

from __future__ import annotations

# Written by the device plugin on real nodes: the GPU UUIDs the kubelet assigned to the pod,
# learnt from the kubelet's podresources API. Format: "<resource>=<uuid>,<uuid>;<resource>=..."
# e.g. "nvidia.com/gpu=GPU-aaa,GPU-bbb". The status-updater records exactly these GPUs for the pod.
ALLOCATED_DEVICES = "fake-gpu-operator/allocated-devices"

# Reference-compatible pod vocabulary (upstream-reference.md §2).
SIMULATED_UTILIZATION = "run.ai/simulated-gpu-utilization"
GPU_FRACTION = "gpu-fraction"
GPU_MEMORY = "gpu-memory"
RUNAI_GPU = "runai-gpu"
RUNAI_GPU_GROUP = "runai-gpu-group"
RESERVE_FOR_GPU_INDEX = "run.ai/reserve_for_gpu_index"
POD_GROUP_NAME = "pod-group-name"
WORKLOAD_KIND_LABEL = "workloadKind"
IDLE_POD_PREFIX = "runai-idle-gpu-"

KWOK_NODE = "kwok.x-k8s.io/node"
KWOK_NODE_VALUE = "fake"


def format_allocated_devices(by_resource: dict[str, list[str]]) -> str:
    return ";".join(f"{res}={','.join(ids)}" for res, ids in sorted(by_resource.items()) if ids)


def parse_allocated_devices(value: str) -> dict[str, list[str]]:
    """Inverse of :func:`format_allocated_devices`; raises ValueError on malformed input."""
    out: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in value.split(";"))):
        resource, sep, ids = part.partition("=")
        if not sep or not resource:
            raise ValueError(f"malformed {ALLOCATED_DEVICES} entry {part!r}")
        out[resource.strip()] = [i.strip() for i in ids.split(",") if i.strip()]
    return out
