"""customProfiles end to end: a custom GPU profile in the chart's values, a KWOK node in the
pool that uses it, and the custom product everywhere a user looks: the node's record, its GPU
feature discovery labels, the exporter's metrics.

The values are tests/e2e/values.yaml: pool ``custom`` has 2 GPUs of custom profile
``e2e-example`` (``Example Custom GPU``, 24576 MiB, driver 580.159.04 / CUDA 13.0). Only the
status-updater reads the profile (docs/profiles.md, "Custom profiles"); the exporter finds it in
the record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from e2elib import Target, node, record, samples, wait_gpu_capacity
from fgo_localcluster.testing import KwokNodeFactory, eventually
from kubernetes_asyncio import client

VALUES = yaml.safe_load((Path(__file__).parent / "values.yaml").read_text())
PROFILE = "e2e-example"
POOL = "custom"


def expected() -> tuple[str, int, str, str]:
    """Product, memory MiB, driver and CUDA version, from the values the chart was given."""
    body = VALUES["customProfiles"][PROFILE]
    return (
        body["device_defaults"]["name"],
        body["device_defaults"]["memory"]["total_bytes"] // (1024 * 1024),
        str(body["system"]["driver_version"]),
        str(body["system"]["cuda_version"]),
    )


async def test_custom_profile_reaches_record_labels_and_metrics(
    kube: client.ApiClient, target: Target, kwok_nodes: KwokNodeFactory
) -> None:
    product, memory_mib, driver, cuda = expected()
    count = VALUES["topology"]["nodePools"][POOL]["gpus"][0]["count"]
    (node_name,) = await kwok_nodes(1, pool=POOL)
    await wait_gpu_capacity(kube, node_name, count)

    topology = await record(kube, target.namespace, node_name)
    assert topology is not None
    assert [(g.product, g.memory_mib, g.profile) for g in topology.gpus] == [
        (product, memory_mib, PROFILE)
    ] * count
    assert (topology.driver_version, topology.cuda_version) == (driver, cuda)

    # GPU feature discovery labels (the exporter derives them from the record).
    async def labelled() -> dict[str, str] | None:
        labels: dict[str, str] = (await node(kube, node_name))["metadata"]["labels"]
        return labels if labels.get("nvidia.com/gpu.memory") == str(memory_mib) else None

    labels = await eventually(labelled, timeout_s=60, what=f"GFD labels of {node_name}")
    assert labels["nvidia.com/gpu.product"] == product.replace(" ", "-")
    assert labels["nvidia.com/gpu.count"] == str(count)

    # Metrics: the model name, and frame buffer free + used = the custom memory size.
    async def series() -> dict[str, list[Any]] | None:
        metrics = await target.kwok_metrics()
        mine = {
            name: [s for s in samples(metrics, name) if s.labels.get("Hostname") == node_name]
            for name in ("DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED")
        }
        return mine if all(len(v) == count for v in mine.values()) else None

    found = await eventually(series, timeout_s=60, what=f"frame-buffer series of {node_name}")
    used = {s.labels["UUID"]: s.value for s in found["DCGM_FI_DEV_FB_USED"]}
    for free in found["DCGM_FI_DEV_FB_FREE"]:
        assert free.labels["modelName"] == product
        assert free.value + used[free.labels["UUID"]] == memory_mib
