"""Run:ai's per-pod GPU files (RUNAI_PROC_DIR): which pods get them, that the values are the
telemetry model's (the pod's share of the exporter's GPU utilisation, nvidia-smi's process
memory), and that the directory tree follows the record (stale pods removed, events kept)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from exporter_builders import T0, hold, node
from fgo_common.runtime.settings import SettingsError, load_settings
from fgo_common.telemetry import (
    BUCKET_SECONDS,
    pod_utilization,
    process_memory_mib,
    profile_for,
    sample_gpu,
)
from fgo_common.topology import HOLDER_RESERVATION, Holder, NodeTopology, PodUsage, UtilizationRange
from fgo_status_exporter.runai_proc import MIB, proc_files, sync_tree
from fgo_status_exporter.settings import Settings

RES_NS = "runai-reservation"


def shared(topology: NodeTopology, index: int, fractions: dict[str, tuple[int, int, int]]) -> None:
    """GPU ``index`` reserved by a Run:ai reservation pod, shared by pods uid -> (min, max, MiB),
    as the status-updater records it (the reservation pod holds, the fractions use)."""
    gpu = topology.gpus[index]
    gpu.status.holders.append(
        Holder(RES_NS, f"runai-reservation-gpu-{index}", "", f"res-{index}", HOLDER_RESERVATION)
    )
    for uid, (low, high, mib) in fractions.items():
        gpu.status.usage[uid] = PodUsage(
            UtilizationRange(low, high), mib, namespace="team", pod=f"pod-{uid}", since=T0 - 60
        )


def test_only_pods_sharing_a_reserved_gpu_get_files() -> None:
    topo = node(count=3)
    hold(topo, 0)  # a whole-GPU pod: Run:ai's toolkit writes nothing for it
    shared(topo, 2, {"uid-a": (40, 60, 40960), "uid-b": (10, 10, 20480)})
    files = proc_files(topo, T0, seed=0)
    assert sorted(files) == [
        "pod/uid-a/metrics/gpu/2/memory.allocated",
        "pod/uid-a/metrics/gpu/2/utilization.sm",
        "pod/uid-b/metrics/gpu/2/memory.allocated",
        "pod/uid-b/metrics/gpu/2/utilization.sm",
    ]
    gpu = topo.gpus[2]
    bucket = math.floor(T0 / BUCKET_SECONDS)
    memory = process_memory_mib(gpu, profile_for(gpu))
    for uid in ("uid-a", "uid-b"):
        base = f"pod/{uid}/metrics/gpu/2"
        util = pod_utilization(gpu.status.usage[uid], gpu.id, uid, bucket, 0)
        assert files[f"{base}/utilization.sm"] == str(util)
        assert files[f"{base}/memory.allocated"] == str(memory[uid] * MIB)
    assert files["pod/uid-b/metrics/gpu/2/utilization.sm"] == "10"
    assert files["pod/uid-b/metrics/gpu/2/memory.allocated"] == str(20480 * MIB)
    # The shares add up to what the exporter reports as the GPU's utilisation and FB used.
    sample = sample_gpu(gpu, profile_for(gpu), T0, seed=0)
    total = sum(int(files[f"pod/{u}/metrics/gpu/2/utilization.sm"]) for u in ("uid-a", "uid-b"))
    assert sample.gpu_util == total
    assert sample.fb_used_mib == sum(memory.values())
    assert proc_files(node(), T0, seed=0) == {}


def test_values_move_with_the_bucket_and_the_seed() -> None:
    topo = node(count=1)
    shared(topo, 0, {"uid-a": (0, 100, 1024)})
    key = "pod/uid-a/metrics/gpu/0/utilization.sm"
    over_time = {proc_files(topo, T0 + i * BUCKET_SECONDS, seed=0)[key] for i in range(20)}
    assert len(over_time) > 1  # not frozen
    assert proc_files(topo, T0 + 1, seed=0)[key] == proc_files(topo, T0 + 2, seed=0)[key]


def test_unsafe_uids_never_become_paths() -> None:
    topo = node(count=1)
    shared(topo, 0, {"../../etc": (1, 1, 1), "ok-uid": (1, 1, 1)})
    assert all("ok-uid" in path for path in proc_files(topo, T0, seed=0))


def test_sync_tree_follows_the_record(tmp_path: Path) -> None:
    root = tmp_path / "runai" / "proc"
    topo = node(count=2)
    shared(topo, 1, {"uid-a": (50, 50, 1000), "uid-b": (20, 20, 2000)})
    files = proc_files(topo, T0, seed=0)
    assert sync_tree(root, files) == (5, 0)  # 4 files + events
    assert (root / "events").read_text() == ""
    assert (root / "pod/uid-a/metrics/gpu/1/utilization.sm").read_text() == "50"
    assert sync_tree(root, files) == (0, 0)  # nothing rewritten when unchanged
    # uid-a ends: its files and directories go; uid-b and events stay.
    del topo.gpus[1].status.usage["uid-a"]
    written, removed = sync_tree(root, proc_files(topo, T0, seed=0))
    assert written == 0 and removed == 2 + 4  # 2 files, then gpu/1, gpu, metrics, uid-a
    assert not (root / "pod" / "uid-a").exists()
    assert (root / "pod/uid-b/metrics/gpu/1/memory.allocated").read_text() == str(2000 * MIB)
    assert (root / "events").exists()
    assert not list(root.rglob(".*tmp*"))
    # Nothing shared any more: the pod tree is emptied.
    sync_tree(root, {})
    assert list((root / "pod").iterdir()) == []


def test_setting_is_node_mode_only() -> None:
    base = {"NODE_NAME": "n1", "RUNAI_PROC_DIR": "/runai/proc"}
    assert load_settings(Settings, base).runai_proc_dir == "/runai/proc"
    assert load_settings(Settings, {"NODE_NAME": "n1"}).runai_proc_dir == ""
    with pytest.raises(SettingsError, match="RUNAI_PROC_DIR"):
        load_settings(Settings, {**base, "EXPORTER_MODE": "kwok"})
    with pytest.raises(SettingsError, match="absolute"):
        load_settings(Settings, {**base, "RUNAI_PROC_DIR": "runai/proc"})
