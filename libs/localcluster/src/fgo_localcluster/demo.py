"""``fgo demo``: the main job on its embedded default.

A local control plane, the chart installed with its defaults (the seed's two Tesla K80 per node
in pool ``default``), our services running as local processes under the chart's identities, two
KWOK nodes labelled into the pool, and the seed README's GPU pod Running on one of them. Prints
what a user wants to see, and leaves the cluster running.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fgo_localcluster import nodes
from fgo_localcluster.cluster import LocalCluster, default_progress
from fgo_localcluster.operator import LocalOperator
from fgo_localcluster.tools import find_repo_root

GPU_RESOURCE = "nvidia.com/gpu"
DEMO_POD = "gpu-pod"


def demo_pod(namespace: str = "default") -> dict[str, Any]:
    """The seed README's test pod, with the toleration/selector KWOK nodes need."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": DEMO_POD,
            "namespace": namespace,
            "annotations": {"run.ai/simulated-gpu-utilization": "10-30"},
        },
        "spec": {
            "nodeSelector": {"type": "kwok"},
            "tolerations": [
                {
                    "key": "kwok.x-k8s.io/node",
                    "operator": "Equal",
                    "value": "fake",
                    "effect": "NoSchedule",
                }
            ],
            "containers": [
                {
                    "name": "gpu-container",
                    "image": "nvidia/cuda-vector-add:v0.1",
                    "resources": {"limits": {GPU_RESOURCE: "1"}},
                    "env": [
                        {
                            "name": "NODE_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                        }
                    ],
                }
            ],
        },
    }


async def _wait(what: str, check: Any, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(0.5)


async def run_demo(cluster: LocalCluster | None = None, node_count: int = 2) -> int:
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    say = default_progress
    t0 = time.monotonic()
    cluster = cluster or LocalCluster()
    await cluster.start(wait=True)
    repo = find_repo_root()
    if repo is None:
        raise RuntimeError("fgo demo runs from a checkout of the repository (needs the chart)")
    operator = LocalOperator(
        kubeconfig=cluster.kubeconfig,
        bin_dir=cluster.bin_dir,
        chart=repo / "charts" / "fake-gpu-operator",
        state_dir=cluster.state_dir,
        progress=say,
    )
    workloads = await operator.install()
    await operator.start(workloads)

    async with nodes.api_client(cluster.kubeconfig) as api:
        core = client.CoreV1Api(api)
        existing = [n.metadata.name for n in await nodes.list_kwok_nodes(api, "default")]
        wanted = max(0, node_count - len(existing))
        names = nodes.next_names(nodes.DEFAULT_PREFIX, wanted, existing)
        await nodes.create_nodes(api, [nodes.kwok_node(n) for n in names])
        say(f"KWOK nodes in pool default: {', '.join(sorted(existing + names))}")

        async def gpu_nodes() -> list[Any]:
            found = await nodes.list_kwok_nodes(api, "default")
            ready = [
                n for n in found if int((n.status.allocatable or {}).get(GPU_RESOURCE, "0")) > 0
            ]
            return ready if len(ready) >= node_count else []

        ready = await _wait("GPU capacity on the KWOK nodes", gpu_nodes)
        try:
            await core.create_namespaced_pod("default", demo_pod())  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:
                raise

        async def pod_running() -> Any:
            pod = await core.read_namespaced_pod(DEMO_POD, "default")
            return pod if pod.status.phase == "Running" else None

        pod = await _wait("the GPU pod to run", pod_running)

    exporter_port = operator.ports("nvidia-dcgm-exporter-kwok").get("metrics")
    print()
    print(f"Simulated GPU cluster ready in {time.monotonic() - t0:.0f}s.")
    print()
    print("Nodes and their GPUs:")
    for node in sorted(ready, key=lambda n: n.metadata.name):
        labels = node.metadata.labels or {}
        print(
            f"  {node.metadata.name:<20} {GPU_RESOURCE}="
            f"{node.status.allocatable.get(GPU_RESOURCE)}  "
            f"product={labels.get('nvidia.com/gpu.product', '?')}"
        )
    print()
    print(f"GPU pod: default/{DEMO_POD} is {pod.status.phase} on {pod.spec.node_name}")
    if exporter_port:
        print(
            f"Metrics: curl -s http://127.0.0.1:{exporter_port}/metrics | grep DCGM_FI_DEV_GPU_UTIL"
        )
    print()
    print(f"kubeconfig: export KUBECONFIG={cluster.kubeconfig}")
    print(f"kubectl:    {cluster.bin_dir / 'kubectl'} get nodes,pods -A")
    print(f"logs:       {cluster.state_dir / 'logs'} and {operator.dir / 'logs'}")
    print("stop:       make cluster-down")
    return 0
