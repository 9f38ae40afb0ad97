"""What the real-node e2e modules share: a control plane of their own with one real node
(kubelet + containerd, pool ``default``, 2 GPUs), the chart installed from the images
``make images`` built, kubectl against it, and polling.

Needs root, ``make node-tools`` and ``make images``. Only one real node runs on a machine at a
time (its pod network route is fixed), so the modules run one after the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from fgo_common.topology import NodeTopology, node_topology_configmap_name
from fgo_localcluster import realnode
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.nodeconfig import SANDBOX_IMAGE
from fgo_localcluster.operator import LocalOperator
from fgo_localcluster.testing import HostSnapshot

T = TypeVar("T")

HERE = Path(__file__).parent
CHART = HERE.parents[1] / "charts" / "fake-gpu-operator"
VALUES = HERE / "real-node-values.yaml"
NAMESPACE = "gpu-operator"
RELEASE = "gpu-operator"
NODE = "real-node-1"
WORK = "default"  # the GPU pods' namespace
TEST_IMAGE = "localhost/fgo/gpu-test:bookworm"


def service_images(*services: str) -> tuple[str, ...]:
    return tuple(f"ghcr.io/fake-gpu-operator/{s}:0.1.0" for s in services)


def progress(message: str) -> None:
    print(f"fgo: {message}", flush=True)


def wait_for(probe: Callable[[], T | None], *, timeout_s: float, what: str) -> T:
    """Poll ``probe`` until it returns something other than None/False; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            result = probe()
            if result is not None and result is not False:
                return result
        except (AssertionError, OSError, ValueError, KeyError, grpc.RpcError) as exc:
            last = exc
        if time.monotonic() > deadline:
            suffix = f" (last error: {last})" if last else ""
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{suffix}")
        time.sleep(0.25)  # noqa: TID251 - synchronous tests: there is no event loop to block


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return pod.get("status", {}).get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


@dataclass
class RealNodeCluster:
    """The control plane, its real node and the chart's release on it."""

    cluster: LocalCluster
    node: realnode.RealNode
    host_before: HostSnapshot
    operator: LocalOperator

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

    def get(self, kind: str, name: str = "", namespace: str | None = None) -> dict[str, Any]:
        args = ["get", kind] + ([name] if name else []) + ["-o", "json"]
        if namespace:
            args += ["-n", namespace]
        return dict(json.loads(self.kubectl(*args)))

    def apply(self, *docs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))

    def pods(self, namespace: str = NAMESPACE, selector: str = "") -> list[dict[str, Any]]:
        args = ["pods", "-n", namespace, "-o", "json"] + (["-l", selector] if selector else [])
        return list(json.loads(self.kubectl("get", *args))["items"])

    def host_path(self, node_path: str) -> Path:
        return self.node.layout.host_path(node_path)

    def record(self) -> NodeTopology:
        """The real node's topology record, as the status-updater wrote it."""
        cm = self.get("configmap", node_topology_configmap_name("topology", NODE), NAMESPACE)
        return NodeTopology.from_yaml(cm["data"]["topology.yml"], NODE)


@contextmanager
def real_node_cluster(
    state_dir: Path,
    service_images: Sequence[str],
    timings: dict[str, float] | None = None,
    sets: Sequence[str] = (),
) -> Iterator[RealNodeCluster]:
    """Control plane up, the real node added with the sandbox, test and service images, the
    chart installed with VALUES and ``sets`` (helm only: nothing runs as a local process).
    Taken down on exit (a test that checks the teardown itself may have done so already)."""
    assert os.geteuid() == 0, "the real node needs root (namespaces, mounts, veth, cgroups)"
    index = dict(realnode.images_from_index())
    wanted = [SANDBOX_IMAGE, TEST_IMAGE, *service_images]
    missing = [name for name in wanted if name not in index]
    assert not missing, (
        f"images {missing} are not in the image index {realnode.image_index_path()}; "
        "run `make images`"
    )
    times = timings if timings is not None else {}
    host_before = HostSnapshot.take()
    t0 = time.monotonic()
    cluster = LocalCluster(state_dir, progress=progress)
    try:
        cluster.start_sync(wait=True)
        times["control plane up"] = time.monotonic() - t0
        node = realnode.RealNode(cluster.state_dir, NODE, progress)
        bin_dir = asyncio.run(realnode.resolve_node_bin_dir(progress, build=False))
        t1 = time.monotonic()
        asyncio.run(node.add("default", bin_dir, images=[(n, index[n]) for n in wanted]))
        times["add-real-node (image imports)"] = time.monotonic() - t1
        operator = LocalOperator.for_cluster(
            cluster, CHART, namespace=NAMESPACE, release=RELEASE, progress=progress
        )
        t2 = time.monotonic()
        asyncio.run(operator.install([VALUES], list(sets)))
        times["helm install"] = time.monotonic() - t2
        yield RealNodeCluster(cluster, node, host_before, operator)
    finally:
        cluster.stop_sync()
