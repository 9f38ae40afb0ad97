"""GFD labels: the label sets real GFD writes for the same hardware (peers-and-standards §3.1)."""

from __future__ import annotations

import re

from exporter_builders import enable_mig, node
from fgo_status_exporter.gfd import GfdLabeler, label_value

# What GFD (plus the GPU Operator's gpu.present) writes on an 8 x H100 80GB HBM3 node with the
# captured driver 580.159.04 / CUDA 13.0 and MIG strategy none.
H100_NODE = {
    "nvidia.com/gpu.present": "true",
    "run.ai/fake.gpu": "true",
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/gpu.count": "8",
    "nvidia.com/gpu.memory": "81559",
    "nvidia.com/gpu.replicas": "1",
    "nvidia.com/gpu.sharing-strategy": "none",
    "nvidia.com/gpu.family": "hopper",
    "nvidia.com/gpu.compute.major": "9",
    "nvidia.com/gpu.compute.minor": "0",
    "nvidia.com/gpu.mode": "compute",
    "nvidia.com/cuda.driver-version.major": "580",
    "nvidia.com/cuda.driver-version.minor": "159",
    "nvidia.com/cuda.driver-version.revision": "04",
    "nvidia.com/cuda.driver-version.full": "580.159.04",
    "nvidia.com/cuda.runtime-version.major": "13",
    "nvidia.com/cuda.runtime-version.minor": "0",
    "nvidia.com/cuda.runtime-version.full": "13.0",
    "nvidia.com/cuda.driver.major": "580",
    "nvidia.com/cuda.driver.minor": "159",
    "nvidia.com/cuda.driver.rev": "04",
    "nvidia.com/cuda.runtime.major": "13",
    "nvidia.com/cuda.runtime.minor": "0",
    "nvidia.com/mig.capable": "true",
    "nvidia.com/mig.strategy": "none",
    "nvidia.com/mps.capable": "false",
    "nvidia.com/vgpu.present": "false",
}

LABELER = GfdLabeler()


def test_h100_node() -> None:
    assert LABELER.labels(node("h", "H100", 8)) == H100_NODE


def test_k80_node() -> None:
    labels = LABELER.labels(node("k", "K80", 2))
    assert labels["nvidia.com/gpu.product"] == "Tesla-K80"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/gpu.memory"] == "11441"
    assert labels["nvidia.com/gpu.family"] == "kepler"
    assert (labels["nvidia.com/gpu.compute.major"], labels["nvidia.com/gpu.compute.minor"]) == (
        "3",
        "7",
    )
    assert labels["nvidia.com/cuda.driver-version.full"] == "470.256.02"
    assert labels["nvidia.com/cuda.driver-version.revision"] == "02"  # leading zero kept
    assert labels["nvidia.com/cuda.runtime-version.full"] == "11.4"
    assert labels["nvidia.com/mig.capable"] == "false"
    # Same key set as the H100 node: only values differ between products.
    assert labels.keys() == H100_NODE.keys()


def test_other_products_sanitised_and_family() -> None:
    cases = {
        "T4": ("Tesla-T4", "turing"),
        "A100-40GB": ("NVIDIA-A100-SXM4-40GB", "ampere"),
        "L40S": ("NVIDIA-L40S", "ada-lovelace"),
        "B200": ("NVIDIA-B200", "blackwell"),
    }
    for gpu_type, (product, family) in cases.items():
        labels = LABELER.labels(node("n", gpu_type, 1))
        assert labels["nvidia.com/gpu.product"] == product, gpu_type
        assert labels["nvidia.com/gpu.family"] == family, gpu_type


def test_no_gpus_no_labels() -> None:
    topology = node("n", "H100", 1)
    topology.gpus = []
    assert LABELER.labels(topology) == {}


def _all_mig(strategy: str, layout: list[tuple[str, int]], gpus: int = 2):  # type: ignore[no-untyped-def]
    topology = node("m", "H100", gpus, mig_strategy=strategy)
    for index in range(gpus):
        enable_mig(topology, index, layout)
    return topology


SEVEN_1G = [("1g.10gb", start) for start in range(7)]


def test_mig_single_rewrites_product_count_memory() -> None:
    labels = LABELER.labels(_all_mig("single", SEVEN_1G))
    expected = {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb",
        "nvidia.com/gpu.count": "14",
        "nvidia.com/gpu.replicas": "1",
        "nvidia.com/gpu.sharing-strategy": "none",
        # From the captured `mig -lgip` row of 1g.10gb: 9984 MiB, 16 SMs, 1 CE, 1 DEC, 1 JPG.
        "nvidia.com/gpu.memory": "9984",
        "nvidia.com/gpu.multiprocessors": "16",
        "nvidia.com/gpu.slices.gi": "1",
        "nvidia.com/gpu.slices.ci": "1",
        "nvidia.com/gpu.engines.copy": "1",
        "nvidia.com/gpu.engines.decoder": "1",
        "nvidia.com/gpu.engines.encoder": "0",
        "nvidia.com/gpu.engines.jpeg": "1",
        "nvidia.com/gpu.engines.ofa": "0",
        "nvidia.com/mig.strategy": "single",
    }
    assert {k: labels.get(k) for k in expected} == expected
    assert labels["nvidia.com/gpu.family"] == "hopper"  # architecture labels stay
    assert not any(k.startswith("nvidia.com/mig-") for k in labels)


def test_mig_single_invalid_layouts() -> None:
    two_kinds = _all_mig("single", [("3g.40gb", 0), ("4g.40gb", 4)][::-1])
    one_off = _all_mig("single", SEVEN_1G)
    one_off.gpus[1].mig_enabled = False
    one_off.gpus[1].mig_devices = []
    empty = _all_mig("single", SEVEN_1G)
    empty.gpus[0].mig_devices = []
    for topology in (two_kinds, one_off, empty):
        labels = LABELER.labels(topology)
        assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-MIG-INVALID"
        assert labels["nvidia.com/gpu.count"] == "0"
        assert labels["nvidia.com/gpu.replicas"] == "0"
        assert labels["nvidia.com/gpu.memory"] == "0"


def test_mig_single_without_mig_gpus_is_strategy_none() -> None:
    labels = LABELER.labels(node("m", "H100", 8, mig_strategy="single"))
    assert labels == {**H100_NODE, "nvidia.com/mig.strategy": "single"}


def test_mig_mixed_families() -> None:
    layout = [("3g.40gb", 4), ("2g.20gb", 0), ("1g.10gb", 2), ("1g.10gb", 3)]
    topology = _all_mig("mixed", layout)
    labels = LABELER.labels(topology)
    assert labels["nvidia.com/mig-1g.10gb.count"] == "4"
    assert labels["nvidia.com/mig-2g.20gb.count"] == "2"
    assert labels["nvidia.com/mig-3g.40gb.count"] == "2"
    assert labels["nvidia.com/mig-3g.40gb.product"] == "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb"
    assert labels["nvidia.com/mig-3g.40gb.memory"] == "40448"
    assert labels["nvidia.com/mig-3g.40gb.multiprocessors"] == "60"
    assert labels["nvidia.com/mig-3g.40gb.slices.gi"] == "3"
    assert labels["nvidia.com/mig-2g.20gb.engines.copy"] == "2"
    assert labels["nvidia.com/mig-1g.10gb.replicas"] == "1"
    assert labels["nvidia.com/mig-1g.10gb.sharing-strategy"] == "none"
    # The MIG-enabled parents keep full-GPU labels, without sharing (replicas 0).
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/gpu.replicas"] == "0"
    assert labels["nvidia.com/mig.strategy"] == "mixed"
    assert "nvidia.com/gpu.multiprocessors" not in labels
    families = {m[1] for k in labels if (m := re.match(r"nvidia\.com/mig-(\d+g\.\d+gb)\.[a-z]", k))}
    assert families == {"1g.10gb", "2g.20gb", "3g.40gb"}


def test_mig_mixed_media_extension_profile_key() -> None:
    topology = _all_mig("mixed", [("1g.10gb+me", 0)], gpus=1)
    labels = LABELER.labels(topology)
    # `+` is not allowed in label keys: the device plugin's resource name uses `.` instead.
    assert labels["nvidia.com/mig-1g.10gb.me.count"] == "1"
    assert labels["nvidia.com/mig-1g.10gb.me.product"] == "NVIDIA-H100-80GB-HBM3-MIG-1g.10gbme"
    assert labels["nvidia.com/mig-1g.10gb.me.engines.ofa"] == "1"


def test_mixed_with_a_full_gpu_keeps_replicas() -> None:
    topology = node("m", "H100", 2, mig_strategy="mixed")
    enable_mig(topology, 0, SEVEN_1G)
    labels = LABELER.labels(topology)
    assert labels["nvidia.com/gpu.replicas"] == "1"
    assert labels["nvidia.com/mig-1g.10gb.count"] == "7"


def test_label_values_fit_kubernetes() -> None:
    assert label_value("x" * 70) == "x" * 63
    assert label_value("a" * 62 + "--b") == "a" * 62
    topology = node("n", "H100", 1)
    topology.gpus[0].product = "NVIDIA Super Long Product Name " * 4
    labels = LABELER.labels(topology)
    assert len(labels["nvidia.com/gpu.product"]) <= 63


def test_unparseable_versions_are_left_out() -> None:
    topology = node("n", "H100", 1)
    topology.driver_version = "latest"
    topology.cuda_version = "x"
    labels = LABELER.labels(topology)
    assert not any(k.startswith("nvidia.com/cuda.") for k in labels)


def test_nvlink_clique_label() -> None:
    from fgo_common.config import load_cluster_config
    from fgo_common.nodebuild import build_node_topology

    cluster = "5c1ea0b1-0000-4000-8000-00000000c0de"
    config = load_cluster_config(
        "nodePools: {nvl72: {gpus: [{type: gb200, count: 4}], "
        f"nvlinkDomain: {{cliqueSize: 18, clusterUUID: {cluster}}}}}}}"
    )
    record = build_node_topology("gb200-node-20", config.pools["nvl72"], config, kwok=True)
    labels = LABELER.labels(record)
    assert labels["nvidia.com/gpu.clique"] == f"{cluster}.1"
    assert "nvidia.com/gpu.clique" not in LABELER.labels(node("h", "H100", 8))
