"""nvidia-smi in a Run:ai/KAI fractional pod on a real node (kubelet + containerd), issue 27.

A control plane of its own, one real node (pool ``default``, 2 GPUs) and the chart from the
images ``make images`` built (``real-node-values.yaml``: device-plugin path). A reservation pod
in ``runai-reservation`` takes a GPU through the device plugin; a fractional pod (annotation
``gpu-fraction: "0.5"``, the reservation pod's ``runai-gpu-group`` label, no GPU request, a pod
spec as Run:ai's users write it) is mutated by the chart's MutatingAdmissionPolicy at creation,
and containerd starts it with the nvidia-smi mounts: ``nvidia-smi`` in it (at its start and via
``kubectl exec``) shows exactly the reservation pod's GPU with half of its memory. ``fgo cluster
down`` leaves nothing behind.

Needs root, ``make node-tools`` and ``make images``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fgo_common.annotations import RESERVE_FOR_GPU_INDEX
from fgo_common.topology import NodeTopology, node_topology_configmap_name
from fgo_localcluster import realnode
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.nodeconfig import SANDBOX_IMAGE
from fgo_localcluster.operator import LocalOperator
from fgo_localcluster.testing import HostSnapshot, NodeTraces, leftovers

T = TypeVar("T")

HERE = Path(__file__).parent
CHART = HERE.parents[1] / "charts" / "fake-gpu-operator"
VALUES = HERE / "real-node-values.yaml"
NAMESPACE = "gpu-operator"
RELEASE = "gpu-operator"
NODE = "real-node-1"
WORK = "default"
RESERVATIONS = "runai-reservation"  # the chart's environment.resourceReservationNamespace
TEST_IMAGE = "localhost/fgo/gpu-test:bookworm"
SERVICE_IMAGES = tuple(
    f"ghcr.io/fake-gpu-operator/{s}:0.1.0"
    for s in ("device-plugin", "kwok-dra-plugin", "status-exporter", "status-updater")
)
DONE = "nvidia-smi-done"
GROUP = {"runai-gpu-group": "group-e2e"}
QUERY = ["nvidia-smi", "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"]

pytestmark = pytest.mark.timeout(600)


def _progress(message: str) -> None:
    print(f"fgo: {message}", flush=True)


def wait_for(probe: Callable[[], T | None], *, timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            result = probe()
            if result is not None and result is not False:
                return result
        except (AssertionError, OSError, ValueError, KeyError) as exc:
            last = exc
        if time.monotonic() > deadline:
            suffix = f" (last error: {last})" if last else ""
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{suffix}")
        time.sleep(0.25)  # noqa: TID251 - synchronous tests: there is no event loop to block


@dataclass
class Env:
    cluster: LocalCluster
    node: realnode.RealNode
    host_before: HostSnapshot

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        kubectl = str(self.cluster.bin_dir / "kubectl")
        result = subprocess.run(
            [kubectl, f"--kubeconfig={self.cluster.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", kind, name, "-n", namespace, "-o", "json")))

    def apply(self, doc: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def record(self) -> NodeTopology:
        cm = self.get("configmap", node_topology_configmap_name("topology", NODE), NAMESPACE)
        return NodeTopology.from_yaml(cm["data"]["topology.yml"], NODE)


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    assert os.geteuid() == 0, "the real node needs root (namespaces, mounts, veth, cgroups)"
    index = dict(realnode.images_from_index())
    wanted = [SANDBOX_IMAGE, TEST_IMAGE, *SERVICE_IMAGES]
    missing = [name for name in wanted if name not in index]
    assert not missing, f"images {missing} are not in the image index; run `make images`"
    host_before = HostSnapshot.take()
    cluster = LocalCluster(tmp_path_factory.mktemp("runai-rn") / "cluster", progress=_progress)
    try:
        cluster.start_sync(wait=True)
        node = realnode.RealNode(cluster.state_dir, NODE, _progress)
        bin_dir = asyncio.run(realnode.resolve_node_bin_dir(_progress, build=False))
        asyncio.run(node.add("default", bin_dir, images=[(n, index[n]) for n in wanted]))
        operator = LocalOperator.for_cluster(
            cluster, CHART, namespace=NAMESPACE, release=RELEASE, progress=_progress
        )
        asyncio.run(operator.install([VALUES]))
        env = Env(cluster, node, host_before)
        env.kubectl("create", "namespace", RESERVATIONS)

        def plugin_ready() -> bool:
            selector = "app.kubernetes.io/component=device-plugin"
            out = env.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json", "-l", selector)
            pods = json.loads(out)["items"]
            return len(pods) == 1 and _ready(pods[0])

        wait_for(plugin_ready, timeout_s=240, what="the device plugin Ready on the real node")
        yield env
    finally:
        cluster.stop_sync()


def _pod(name: str, namespace: str, command: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(GROUP)},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": NODE},
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": TEST_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/bash", "-c", command],
                    "resources": {"limits": {"cpu": "100m", "memory": "64Mi", **extra}},
                }
            ],
        },
    }


def test_fractional_pod_runs_nvidia_smi_on_its_reserved_gpu_with_its_share(env: Env) -> None:
    env.apply(
        _pod("runai-reservation-gpu-e2e", RESERVATIONS, "exec sleep infinity",
             **{"nvidia.com/gpu": "1"})
    )  # fmt: skip

    def reserved() -> str | None:
        pod = env.get("pod", "runai-reservation-gpu-e2e", RESERVATIONS)
        return (pod["metadata"].get("annotations") or {}).get(RESERVE_FOR_GPU_INDEX)

    uuid = wait_for(reserved, timeout_s=90, what="the status-updater annotating the reservation")
    # As Run:ai's users write it: an annotation and the group label, no GPU request, no mounts.
    fractional = _pod(
        "frac-e2e", WORK, f"{' '.join(QUERY)}; nvidia-smi -L; echo {DONE}; exec sleep infinity"
    )
    fractional["metadata"]["annotations"] = {"gpu-fraction": "0.5"}
    env.apply(fractional)
    spec = env.get("pod", "frac-e2e", WORK)["spec"]
    assert {v["name"] for v in spec["volumes"]} >= {
        "fgo-nvidia-smi", "fgo-nvidia-smi-launcher", "fgo-state"
    }  # fmt: skip

    def started() -> str | None:
        log = env.kubectl("logs", "-n", WORK, "frac-e2e", "-c", "main")
        return log if DONE in log else None

    log = wait_for(started, timeout_s=90, what="nvidia-smi at the start of the fractional pod")
    record = env.record()
    (gpu,) = [g for g in record.gpus if g.id == uuid]
    uid = env.get("pod", "frac-e2e", WORK)["metadata"]["uid"]
    share = gpu.status.usage[uid].fb_used_mib
    assert share == gpu.memory_mib // 2
    print(f"fractional pod's nvidia-smi at start:\n{log}")
    lines = log.splitlines()
    # One GPU, numbered 0 in the container, the reservation pod's, with half its memory.
    assert lines[0] == f"0, {uuid}, {share}", log
    assert lines[1].startswith("GPU 0: ") and lines[1].endswith(f"(UUID: {uuid})"), log
    out = env.kubectl("exec", "-n", WORK, "frac-e2e", "-c", "main", "--", *QUERY)
    assert out == f"0, {uuid}, {share}\n"
    # /bin/nvidia-smi too (the reference's path), and the pod's own UID from the downward API.
    out = env.kubectl("exec", "-n", WORK, "frac-e2e", "-c", "main", "--",
                      "/bin/bash", "-c", "echo $FGO_POD_UID; /bin/nvidia-smi -L")  # fmt: skip
    assert out.splitlines()[0] == uid
    assert out.splitlines()[1].endswith(f"(UUID: {uuid})")


def test_cluster_down_leaves_nothing_behind(env: Env) -> None:
    traces = NodeTraces.of(env.node)
    try:
        env.cluster.stop_sync()
        assert leftovers(traces, env.host_before) == []
    finally:
        traces.close()
