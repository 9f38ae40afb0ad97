"""``fgo demo``: the main job on its embedded default.

A local control plane, the chart installed with its defaults (the seed's two Tesla K80 per node
in pool ``default``), our services running as local processes under the chart's identities, two
KWOK nodes labelled into the pool, and the seed README's GPU pod Running on one of them. Prints
what a user wants to see, and leaves the cluster running.

``--real-node`` (root, ``make node-tools images``) also adds one real node (kubelet +
containerd) to pool ``default`` and runs the operator as it runs anywhere: every pod of the
chart, from its image, on that node (the KWOK nodes are tainted, so the Deployments land there
too), nothing as a local process; plus a GPU pod of the test image on the real node, in which
``nvidia-smi`` answers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shlex
import textwrap
import time
from pathlib import Path
from typing import Any

from fgo_localcluster import nodes, realnode
from fgo_localcluster.cluster import LocalCluster, default_progress
from fgo_localcluster.nodeconfig import SANDBOX_IMAGE
from fgo_localcluster.operator import LocalOperator, WorkloadStatus, workload_statuses
from fgo_localcluster.rest import Rest, RestError
from fgo_localcluster.tools import env_settings, find_repo_root

GPU_RESOURCE = "nvidia.com/gpu"
DEMO_POD = "gpu-pod"
REAL_NODE = realnode.DEFAULT_NODE_NAME
REAL_POD = "gpu-pod-real"
TEST_IMAGE = "localhost/fgo/gpu-test:bookworm"


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


def real_node_pod(namespace: str = "default") -> dict[str, Any]:
    """A GPU pod on the real node: the test image (a shell), one GPU, waiting to be exec'ed."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": REAL_POD, "namespace": namespace},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": REAL_NODE},
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": TEST_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/bash", "-c", "nvidia-smi -L; exec sleep infinity"],
                    "resources": {"limits": {GPU_RESOURCE: "1", "cpu": "100m", "memory": "64Mi"}},
                }
            ],
        },
    }


def state_dir_flag(state_dir: Path) -> str:
    """`` --state-dir DIR`` for the commands the demo prints, empty for the default one: a
    printed command must act on this cluster whatever shell it is pasted into."""
    repo = find_repo_root()
    default = (repo / ".fgo" / "cluster").resolve() if repo is not None else None
    if env_settings().state_dir is None and state_dir.resolve() == default:
        return ""
    return f" --state-dir {shlex.quote(str(state_dir))}"


async def explain_pending_pods(
    cluster: LocalCluster, namespace: str, workloads: list[WorkloadStatus]
) -> list[str]:
    """An Event on each Pending pod of the chart whose program runs as a local process, saying
    so (``kubectl describe pod`` is where a newcomer looks); returns the pods' names."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    explained = []
    async with Rest(cluster.server, cluster.layout.pki) as api:
        pods = (await api.get(f"/api/v1/namespaces/{namespace}/pods"))["items"]
        for pod in pods:
            meta = pod["metadata"]
            owner = next((w for w in workloads if meta["name"].startswith(f"{w.name}-")), None)
            if owner is None or (pod.get("status") or {}).get("phase") != "Pending":
                continue
            explained.append(meta["name"])
            sa = (pod.get("spec") or {}).get("serviceAccountName", "default")
            event = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{meta['name']}.fgo-{owner.pid}", "namespace": namespace},
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "namespace": namespace,
                    "uid": meta.get("uid", ""),
                },
                "reason": "RunsAsLocalProcess",
                "message": (
                    f"fgo demo runs this pod's program as local process {owner.pid} with the "
                    f"pod's env and ServiceAccount {sa}'s token (log {owner.log}); KWOK nodes "
                    "run no containers, so this pod stays Pending. `uv run fgo cluster status"
                    f"{state_dir_flag(cluster.state_dir)}` lists the processes."
                ),
                "type": "Normal",
                "source": {"component": "fgo-demo"},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
            try:
                await api.request("POST", f"/api/v1/namespaces/{namespace}/events", body=event)
            except RestError as exc:
                if exc.status != 409:  # already said, by an earlier run of this process
                    raise
    return explained


async def _wait(what: str, check: Any, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(0.5)


async def _add_real_node(cluster: LocalCluster) -> None:
    say = default_progress
    index = dict(realnode.images_from_index())
    services = [n for n in index if n.startswith("ghcr.io/fake-gpu-operator/")]
    missing = [n for n in (SANDBOX_IMAGE, TEST_IMAGE) if n not in index]
    if missing or not services:
        raise realnode.RealNodeError(
            f"the images are not in {realnode.image_index_path()}; run `make images` first"
        )
    bin_dir = await realnode.resolve_node_bin_dir(say)
    node = realnode.RealNode(cluster.state_dir, REAL_NODE, say)
    await node.add("default", bin_dir, images=[(n, index[n]) for n in index])


async def _wait_operator_pods(api: Any, namespace: str, timeout_s: float = 300.0) -> list[Any]:
    """Every DaemonSet of the release with its pod on the real node and every Deployment Ready,
    and the real node's GPUs registered by the device plugin; returns the release's pods."""
    from kubernetes_asyncio import client

    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)

    async def ready() -> list[Any]:
        for ds in (await apps.list_namespaced_daemon_set(namespace)).items:
            st = ds.status
            if not st.desired_number_scheduled or st.number_ready != st.desired_number_scheduled:
                return []
        for deploy in (await apps.list_namespaced_deployment(namespace)).items:
            if (deploy.status.ready_replicas or 0) < (deploy.spec.replicas or 0):
                return []
        node = await core.read_node(REAL_NODE)
        if int((node.status.allocatable or {}).get(GPU_RESOURCE, "0")) < 1:
            return []
        pods = (await core.list_namespaced_pod(namespace)).items
        return [p for p in pods if p.metadata.deletion_timestamp is None]

    return list(await _wait("the operator's pods Ready on the real node", ready, timeout_s))


async def run_demo(
    cluster: LocalCluster | None = None, node_count: int = 2, *, real_node: bool = False
) -> int:
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
    if real_node:
        await _add_real_node(cluster)
        # The operator's own pods on the real node replace any local processes of an earlier
        # `fgo demo` in this cluster.
        await operator.stop()
        # Forgotten too, or `fgo cluster status` would list them as down (and fail).
        for pid_file in operator.dir.glob("*.pid"):
            pid_file.unlink()
        await operator.install(set_values=["image.pullPolicy=Never"])
    else:
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
        if not real_node:
            # Ready before the summary lists them (a second demo finds the pod Running at once).
            await operator.wait_ready([w.name for w in workloads])
        operator_pods: list[Any] = []
        real_pod: Any = None
        if real_node:
            # A GPU pod of an earlier run may have been admitted by the node before its device
            # plugin registered again (`down` keeps the kubelet's checkpoints): start afresh.
            try:
                await core.delete_namespaced_pod(REAL_POD, "default", grace_period_seconds=0)
            except ApiException as exc:
                if exc.status != 404:
                    raise

            async def gone() -> bool:
                try:
                    await core.read_namespaced_pod(REAL_POD, "default")
                except ApiException as exc:
                    if exc.status == 404:
                        return True
                    raise
                return False

            await _wait("the previous GPU pod on the real node to go", gone)
            operator_pods = await _wait_operator_pods(api, operator.namespace)
            await core.create_namespaced_pod("default", real_node_pod())  # type: ignore[arg-type]

            async def real_pod_running() -> Any:
                found = await core.read_namespaced_pod(REAL_POD, "default")
                return found if found.status.phase == "Running" else None

            real_pod = await _wait("the GPU pod on the real node to run", real_pod_running)
            real = await core.read_node(REAL_NODE)
            ready.append(real)

    flag = state_dir_flag(cluster.state_dir)
    print()
    print(f"Simulated GPU cluster ready in {time.monotonic() - t0:.0f}s.")
    print()
    print("Nodes and their GPUs:")
    for node in sorted(ready, key=lambda n: n.metadata.name):
        labels = node.metadata.labels or {}
        kind = "KWOK" if labels.get("type") == "kwok" else "real kubelet + containerd"
        print(
            f"  {node.metadata.name:<20} {GPU_RESOURCE}="
            f"{(node.status.allocatable or {}).get(GPU_RESOURCE)}  "
            f"product={labels.get('nvidia.com/gpu.product', '?')}  ({kind})"
        )
    print()
    print(f"GPU pod: default/{DEMO_POD} is {pod.status.phase} on {pod.spec.node_name}.")
    print("  KWOK nodes run no containers (no `kubectl exec`); nvidia-smi as the pod sees it:")
    print(f"  uv run fgo nvidia-smi{flag} default/{DEMO_POD}        # -- -L, -- -q, ...")
    print(f"  uv run fgo nvidia-smi{flag} --node {pod.spec.node_name}")
    if real_node:
        print(f"GPU pod: default/{REAL_POD} is {real_pod.status.phase} on {REAL_NODE}:")
        print(f"  kubectl exec {REAL_POD} -- nvidia-smi")
        print()
        print(f"The operator's pods (namespace {operator.namespace}), real containers:")
        for p in sorted(operator_pods, key=lambda p: p.metadata.name):
            print(
                f"  {p.metadata.name:<46} {p.status.phase:<8} {p.spec.node_name:<12} "
                f"{p.status.pod_ip}"
            )
        exporter = [
            p for p in operator_pods if p.metadata.name.startswith("nvidia-dcgm-exporter-kwok-")
        ]
        if exporter:
            print(
                f"Metrics: curl -s http://{exporter[0].status.pod_ip}:9400/metrics "
                "| grep DCGM_FI_DEV_GPU_UTIL"
            )
        print(f"Debug the node: uv run fgo cluster node-exec{flag} -- crictl ps")
    else:
        processes = [
            w
            for w in await workload_statuses(cluster.state_dir)
            if w.namespace == operator.namespace and w.pid
        ]
        explained = await explain_pending_pods(cluster, operator.namespace, processes)
        print()
        print(
            textwrap.fill(
                "The operator runs as local processes, not in its pods. KWOK nodes run no "
                f"containers, so the chart's own pods in namespace {operator.namespace} "
                f"({', '.join(sorted(explained)) or 'none yet'}) stay Pending "
                "(FailedScheduling): expected here. Each of their programs runs on this "
                "machine instead, with the pod's environment and its ServiceAccount's token "
                "(an Event on each pod says so):",
                width=100,
                break_on_hyphens=False,
            )
        )
        for w in processes:
            ports = " ".join(f"{k}={v}" for k, v in sorted(w.ports.items()))
            print(f"  {w.name:<28} pid {w.pid:<8} {w.health:<6} {ports}")
        exporter_port = operator.ports("nvidia-dcgm-exporter-kwok").get("metrics")
        if exporter_port:
            print(
                f"Metrics: curl -s http://127.0.0.1:{exporter_port}/metrics "
                "| grep DCGM_FI_DEV_GPU_UTIL   (port kept across restarts)"
            )
    print()
    print(f"status:  uv run fgo cluster status{flag}   (processes, health, URLs, logs)")
    print(f'kubectl: eval "$(uv run fgo cluster env{flag})"; kubectl get nodes,pods -A')
    if real_node:
        node_logs = cluster.state_dir / "nodes" / REAL_NODE / "logs"
        print(f"logs:    kubectl logs -n {operator.namespace} <pod>; node: {node_logs}")
    else:
        print(f"logs:    {cluster.state_dir / 'logs'} and {operator.dir / 'logs'}")
    print(f"stop:    uv run fgo cluster down{flag}")
    return 0
