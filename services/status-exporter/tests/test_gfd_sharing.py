"""GFD labels of device-plugin sharing (k8s-device-plugin internal/lm): replicas, strategy,
the -SHARED product suffix (not when renamed), mps.capable."""

from __future__ import annotations

import dataclasses

import pytest
from exporter_builders import node
from fgo_common import dpsharing
from fgo_status_exporter.gfd import GfdLabeler

LABELER = GfdLabeler()


def shared_labels(text: str) -> dict[str, str]:
    record = dataclasses.replace(node("h", "H100", 2), sharing=dpsharing.parse_config(text))
    return LABELER.labels(record)


@pytest.mark.parametrize(
    ("text", "replicas", "strategy", "product", "mps"),
    [
        (
            "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}",
            "4",
            "time-slicing",
            "NVIDIA-H100-80GB-HBM3-SHARED",
            "false",
        ),
        (
            "sharing: {timeSlicing: {renameByDefault: true,"
            " resources: [{name: nvidia.com/gpu, replicas: 2}]}}",
            "2",
            "time-slicing",
            "NVIDIA-H100-80GB-HBM3",
            "false",
        ),
        (
            "sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 3}]}}",
            "3",
            "mps",
            "NVIDIA-H100-80GB-HBM3-SHARED",
            "true",
        ),
    ],
)
def test_sharing_labels(text: str, replicas: str, strategy: str, product: str, mps: str) -> None:
    labels = shared_labels(text)
    assert labels["nvidia.com/gpu.replicas"] == replicas
    assert labels["nvidia.com/gpu.sharing-strategy"] == strategy
    assert labels["nvidia.com/gpu.product"] == product
    assert labels["nvidia.com/gpu.count"] == "2"  # GPUs, not replicas
    assert labels["nvidia.com/mps.capable"] == mps


def test_unshared_node_labels_unchanged() -> None:
    labels = LABELER.labels(node("h", "H100", 2))
    assert labels["nvidia.com/gpu.replicas"] == "1"
    assert labels["nvidia.com/gpu.sharing-strategy"] == "none"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/mps.capable"] == "false"
