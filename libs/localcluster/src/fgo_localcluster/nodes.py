"""KWOK nodes shaped like the seed README's example, created and deleted in bulk."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # kubernetes-asyncio takes ~2s to import; commands that never talk to the API
    # (`fgo cluster env`, `down`, `logs`) should not pay for it.
    from kubernetes_asyncio import client

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_TAINT_KEY = "kwok.x-k8s.io/node"
POOL_LABEL = "run.ai/simulated-gpu-node-pool"
TYPE_LABEL = "type"
DEFAULT_PREFIX = "kwok-gpu-node-"

# Enough parallel requests to keep the apiserver busy on 2 cores without queueing in APF.
DEFAULT_CONCURRENCY = 32


@asynccontextmanager
async def api_client(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    """A kubernetes-asyncio client for ``kubeconfig``, closed on exit (the shared factory,
    whose connection pool is sized for many concurrent writes)."""
    from fgo_common.kube.client import api_client as shared_api_client

    async with shared_api_client(str(kubeconfig)) as api:
        yield api


def kwok_node(
    name: str,
    pool: str = "default",
    *,
    cpu: str = "32",
    memory: str = "128Gi",
    pods: str = "110",
    labels: dict[str, str] | None = None,
    extra_capacity: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Node KWOK adopts: annotation + taint + labels + capacity, as in the seed README."""
    resources = {"cpu": cpu, "memory": memory, "pods": pods, **(extra_capacity or {})}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake"},
            "labels": {
                TYPE_LABEL: "kwok",
                POOL_LABEL: pool,
                # Well-known labels a kubelet would set; schedulers and charts select on them.
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                **(labels or {}),
            },
        },
        "spec": {
            "taints": [{"key": KWOK_TAINT_KEY, "value": "fake", "effect": "NoSchedule"}],
        },
        "status": {"capacity": dict(resources), "allocatable": dict(resources)},
    }


def next_names(prefix: str, count: int, existing: Iterable[str]) -> list[str]:
    """``count`` names ``<prefix><n>`` continuing after the highest existing ``n`` (from 1)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)$")
    used = [int(m.group(1)) for n in existing if (m := pattern.match(n))]
    start = max(used, default=0) + 1
    return [f"{prefix}{i}" for i in range(start, start + count)]


async def _gather_limited(
    items: list[Any], worker: Callable[[Any], Any], concurrency: int
) -> list[Any]:
    sem = asyncio.Semaphore(concurrency)

    async def run(item: Any) -> Any:
        async with sem:
            return await worker(item)

    return list(await asyncio.gather(*(run(i) for i in items)))


async def list_kwok_nodes(api: client.ApiClient, pool: str | None = None) -> list[Any]:
    from kubernetes_asyncio import client

    selector = f"{TYPE_LABEL}=kwok" + (f",{POOL_LABEL}={pool}" if pool else "")
    nodes = await client.CoreV1Api(api).list_node(label_selector=selector)
    return [n for n in nodes.items if (n.metadata.annotations or {}).get(KWOK_ANNOTATION) == "fake"]


async def create_nodes(
    api: client.ApiClient, bodies: list[dict[str, Any]], concurrency: int = DEFAULT_CONCURRENCY
) -> list[str]:
    """Create the nodes; an already existing node of the same name counts as created."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    # Typed Any: the generated stubs want model objects, plain dicts serialise the same.
    core: Any = client.CoreV1Api(api)

    async def create(body: dict[str, Any]) -> str:
        name = str(body["metadata"]["name"])
        try:
            await core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        return name

    return await _gather_limited(bodies, create, concurrency)


async def delete_nodes(
    api: client.ApiClient, names: list[str], concurrency: int = DEFAULT_CONCURRENCY
) -> list[str]:
    """Delete the named nodes; already-gone ones are fine. Returns the names deleted."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    core = client.CoreV1Api(api)

    async def delete(name: str) -> str | None:
        try:
            await core.delete_node(name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return name

    return [n for n in await _gather_limited(names, delete, concurrency) if n]


def node_is_ready(node: Any) -> bool:
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


# KWOK's lease holder identity is "<hostname>_<random uuid>", new for every process.
_KWOK_HOLDER = re.compile(r"_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def stale_kwok_leases(leases: list[dict[str, Any]]) -> list[str]:
    """Names of node Leases (JSON) held by some KWOK process (kubelets hold theirs by name)."""
    return [
        lease["metadata"]["name"]
        for lease in leases
        if _KWOK_HOLDER.search(lease.get("spec", {}).get("holderIdentity") or "")
    ]


def is_kwok_node(node: dict[str, Any]) -> bool:
    """For a Node as JSON: does KWOK manage it?"""
    annotations: dict[str, str] = node["metadata"].get("annotations") or {}
    return annotations.get(KWOK_ANNOTATION) == "fake"


def is_ready(node: dict[str, Any]) -> bool:
    """For a Node as JSON: Ready condition True."""
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
