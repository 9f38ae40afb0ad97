"""Builders for the API objects the reconciler reads, shaped like the apiserver's JSON."""

from __future__ import annotations

import itertools
from typing import Any

from fgo_common.config import ClusterConfig, load_cluster_config

_counter = itertools.count(1)

CONFIG_TEXT = """
nodePoolLabelKey: run.ai/simulated-gpu-node-pool
nodePools:
  default:
    gpus: [{type: H100, count: 8}]
    otherDevices: [{name: example.com/fpga, count: 4}]
  small:
    gpus: [{type: Tesla K80, count: 2}]
"""
POOL_LABEL = "run.ai/simulated-gpu-node-pool"


def config(text: str = CONFIG_TEXT) -> ClusterConfig:
    return load_cluster_config(text)


def node(
    name: str = "node-a", pool: str | None = "default", *, kwok: bool = True
) -> dict[str, Any]:
    labels = {POOL_LABEL: pool} if pool is not None else {}
    notes = {"kwok.x-k8s.io/node": "fake"} if kwok else {}
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "labels": labels, "annotations": notes},
    }


def container(
    name: str = "main", gpus: int = 0, extra: dict[str, int] | None = None, **fields: Any
) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    limits.update({k: str(v) for k, v in (extra or {}).items()})
    return {
        "name": name,
        "image": "x",
        "resources": {"limits": limits} if limits else {},
        **fields,
    }


def pod(
    name: str,
    *,
    namespace: str = "default",
    node_name: str = "node-a",
    gpus: int = 0,
    containers: list[dict[str, Any]] | None = None,
    init: list[dict[str, Any]] | None = None,
    phase: str = "Running",
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    claims: list[tuple[str, str]] | None = None,
    start: str = "2026-11-28T10:00:00Z",
    created: str | None = None,
    uid: str | None = None,
) -> dict[str, Any]:
    n = next(_counter)
    spec: dict[str, Any] = {
        "containers": containers if containers is not None else [container("main", gpus)],
    }
    if node_name:
        spec["nodeName"] = node_name
    if init:
        spec["initContainers"] = init
    status: dict[str, Any] = {"phase": phase}
    if phase == "Running" and start:
        status["startTime"] = start
    if claims:
        spec["resourceClaims"] = [{"name": pc, "resourceClaimName": cn} for pc, cn in claims]
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or f"uid-{namespace}-{name}",
            "creationTimestamp": created or f"2026-11-28T09:{n // 60 % 60:02d}:{n % 60:02d}Z",
            "annotations": annotations or {},
            "labels": labels or {},
        },
        "spec": spec,
        "status": status,
    }


def claim(
    name: str,
    devices: list[str],
    *,
    namespace: str = "default",
    driver: str = "gpu.nvidia.com",
    pool: str = "node-a",
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-claim-{name}"},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": "gpu", "driver": driver, "pool": pool, "device": d}
                        for d in devices
                    ]
                }
            }
        },
    }
