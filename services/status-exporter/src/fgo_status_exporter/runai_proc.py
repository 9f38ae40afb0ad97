"""Run:ai container-toolkit emulation: per-pod GPU files under ``/runai/proc`` (node mode).

Run:ai's node components read, for pods that share a GPU (fractions: a reservation pod holds the
GPU, the fractional pods have usage entries on it), ``pod/<podUID>/metrics/gpu/<gpuIdx>/
utilization.sm`` (percent) and ``memory.allocated`` (bytes), and expect ``events`` to exist.
The values come from the node's record through the telemetry model: the pod's own utilisation in
the current 10 s bucket (the shares the exporter's DCGM_FI_DEV_GPU_UTIL sums) and its process
memory (what nvidia-smi lists for it). Rewritten every bucket and on every record change; a pod
that leaves the record loses its directory. docs/runai.md.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from fgo_common.profiles import BUILTIN_CATALOG, ProfileCatalog
from fgo_common.telemetry import (
    BUCKET_SECONDS,
    pod_utilization,
    process_memory_mib,
    profile_for,
)
from fgo_common.topology import HOLDER_RESERVATION, NodeTopology

MIB = 1024 * 1024
EVENTS = "events"
POD_DIR = "pod"
_SAFE_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")  # a pod UID: never a path


def proc_files(
    topology: NodeTopology, t: float, *, seed: int, catalog: ProfileCatalog = BUILTIN_CATALOG
) -> dict[str, str]:
    """Relative path -> content of every per-pod file the node should have at time ``t``."""
    bucket = math.floor(t / BUCKET_SECONDS)
    out: dict[str, str] = {}
    for gpu in topology.gpus:
        if gpu.mig_enabled and gpu.mig_devices:
            continue  # fractions share whole GPUs
        if not any(h.kind == HOLDER_RESERVATION for h in gpu.status.holders):
            continue
        memory = process_memory_mib(gpu, profile_for(gpu, catalog))
        for uid, usage in sorted(gpu.status.usage.items()):
            if not _SAFE_UID.match(uid):
                continue
            base = f"{POD_DIR}/{uid}/metrics/gpu/{gpu.index}"
            out[f"{base}/utilization.sm"] = str(pod_utilization(usage, gpu.id, uid, bucket, seed))
            out[f"{base}/memory.allocated"] = str(memory.get(uid, 0) * MIB)
    return out


def _write(path: Path, content: str) -> None:
    """Temp file and rename: a reader sees the old value or the new one. No fsync: the files
    are derived state, rewritten every bucket."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(content)
    tmp.chmod(0o644)
    tmp.replace(path)


def sync_tree(root: Path, files: dict[str, str]) -> tuple[int, int]:
    """Make ``root/pod`` hold exactly ``files`` (paths relative to ``root``) and ``root/events``
    exist. Returns (files written, paths removed)."""
    written = removed = 0
    events = root / EVENTS
    if not events.exists():
        _write(events, "")
        written += 1
    for rel, content in files.items():
        path = root / rel
        try:
            if path.read_text() == content:
                continue
        except OSError:
            pass
        _write(path, content)
        written += 1
    pods = root / POD_DIR
    if not pods.is_dir():
        return written, removed
    wanted = {root / rel for rel in files}
    # Bottom-up: files that are not wanted, then directories left empty.
    for dirpath, dirnames, filenames in os.walk(pods, topdown=False):
        here = Path(dirpath)
        for name in filenames:
            if here / name not in wanted:
                (here / name).unlink(missing_ok=True)
                removed += 1
        for name in dirnames:
            child = here / name
            if child.is_dir() and not any(child.iterdir()):
                child.rmdir()
                removed += 1
    return written, removed
