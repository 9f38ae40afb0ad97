"""A real node (kubelet + containerd + runc + CNI) joins a local control plane of its own.

The module starts a dedicated cluster (the session's KWOK cluster is shared with other tests,
and the last test here takes this one down), adds one real node, and checks what a user of
the node relies on: a real, Ready Node whose kubelet serves a certificate from the cluster CA;
pods that run in containers; ``kubectl logs`` / ``exec``; and that ``fgo cluster down`` leaves
the host as it was, even after a kill -9 of containerd and the kubelet. Needs root and the
images of hack/images.sh (the sandbox image and the test image, from the image index).

The tests run in file order and share the node; each states what it needs from the previous.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fgo_localcluster import nodehost, realnode
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.nodeconfig import SANDBOX_IMAGE
from fgo_localcluster.nodes import POOL_LABEL
from fgo_localcluster.rest import Rest
from fgo_localcluster.testing import HostSnapshot, NodeTraces, leftovers

TEST_IMAGE = "localhost/fgo/gpu-test:bookworm"
NODE = "real-node-1"

# Setting up the node (a control plane, image imports) plus a pod start fit easily; the
# limit is only there so that a hang fails instead of blocking the run.
pytestmark = pytest.mark.timeout(600)


@dataclass
class RealNodeEnv:
    cluster: LocalCluster
    node: realnode.RealNode
    images: dict[str, Path]
    host_before: HostSnapshot
    add_seconds: float

    def kubectl(self, *args: str) -> str:
        return subprocess.run(
            [
                str(self.cluster.bin_dir / "kubectl"),
                f"--kubeconfig={self.cluster.kubeconfig}",
                *args,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout


def _progress(message: str) -> None:
    print(f"fgo: {message}", flush=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNodeEnv]:
    assert os.geteuid() == 0, "the real node needs root (namespaces, mounts, veth, cgroups)"
    index = realnode.image_index_path()
    images = dict(realnode.images_from_index())
    assert SANDBOX_IMAGE in images, (
        f"the sandbox image {SANDBOX_IMAGE} is not in the image index {index}; "
        "build the images first (hack/images.sh)"
    )
    host_before = HostSnapshot.take()
    cluster = LocalCluster(tmp_path_factory.mktemp("real-node") / "cluster", progress=_progress)
    cluster.start_sync(wait=True)
    node = realnode.RealNode(cluster.state_dir, NODE, _progress)
    try:
        bin_dir = asyncio.run(realnode.resolve_node_bin_dir(_progress))
        wanted = [(n, images[n]) for n in (SANDBOX_IMAGE, TEST_IMAGE) if n in images]
        started = time.monotonic()
        asyncio.run(node.add("default", bin_dir, images=wanted))
        yield RealNodeEnv(cluster, node, images, host_before, time.monotonic() - started)
    finally:
        cluster.stop_sync()


async def _get(cluster: LocalCluster, path: str) -> dict[str, object]:
    async with Rest(cluster.server, cluster.layout.pki) as api:
        return await api.get(path)


def test_node_joins_as_a_real_ready_node(env: RealNodeEnv) -> None:
    node = asyncio.run(_get(env.cluster, f"/api/v1/nodes/{NODE}"))
    record = env.node.record
    assert record is not None
    meta, status = node["metadata"], node["status"]
    assert isinstance(meta, dict) and isinstance(status, dict)
    assert "kwok.x-k8s.io/node" not in (meta.get("annotations") or {})
    assert meta["labels"][POOL_LABEL] == "default"
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", ready
    assert {"type": "InternalIP", "address": record.node_ip} in status["addresses"]
    info = status["nodeInfo"]
    assert info["kubeletVersion"] == "v1.36.3"
    assert info["containerRuntimeVersion"].startswith("containerd://2.")
    print(f"add-real-node -> Ready: {env.add_seconds:.1f}s")


def test_kubelet_serves_a_certificate_from_the_cluster_ca(env: RealNodeEnv) -> None:
    record = env.node.record
    assert record is not None
    ctx = ssl.create_default_context(cafile=str(env.cluster.layout.pki.ca_cert))
    ctx.check_hostname = False  # verified below against the node IP SAN explicitly
    with (
        socket.create_connection((record.node_ip, 10250), timeout=10) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        cert = tls.getpeercert()
    assert cert is not None
    subject = dict(item[0] for item in cert["subject"])
    assert subject["commonName"] == f"system:node:{NODE}"
    assert ("IP Address", record.node_ip) in cert["subjectAltName"]


def _pod(name: str, image: str, command: list[str] | None) -> str:
    container = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
    }
    if command:
        container["command"] = command
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": NODE},
                "terminationGracePeriodSeconds": 1,
                # What the chart's pods ask for: runc must be built with seccomp.
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [container],
            },
        }
    )


def _apply(env: RealNodeEnv, manifest: str) -> None:
    subprocess.run(
        [
            str(env.cluster.bin_dir / "kubectl"),
            f"--kubeconfig={env.cluster.kubeconfig}",
            "apply",
            "-f",
            "-",
        ],
        input=manifest,
        check=True,
        capture_output=True,
        text=True,
    )


def test_sandbox_only_pod_runs_in_a_container(env: RealNodeEnv) -> None:
    """The pause image as the pod's only container: sandbox + container start under runc."""
    _apply(env, _pod("pause", SANDBOX_IMAGE, None))
    env.kubectl("wait", "--for=condition=Ready", "pod/pause", "--timeout=90s")
    pod_ip = env.kubectl("get", "pod", "pause", "-o", "jsonpath={.status.podIP}")
    record = env.node.record
    assert record is not None
    assert pod_ip.startswith(record.pod_cidr.rsplit(".", 1)[0] + ".")


def test_test_image_pod_logs_and_exec(env: RealNodeEnv) -> None:
    assert TEST_IMAGE in env.images, (
        f"test image {TEST_IMAGE} is not in the image index {realnode.image_index_path()}; "
        "build it (hack/images.sh)"
    )
    _apply(
        env,
        _pod(
            "shell",
            TEST_IMAGE,
            ["/bin/bash", "-c", "echo hello from the real node; exec sleep 3600"],
        ),
    )
    env.kubectl("wait", "--for=condition=Ready", "pod/shell", "--timeout=90s")
    assert "hello from the real node" in env.kubectl("logs", "shell")
    out = env.kubectl(
        "exec",
        "shell",
        "--",
        "/bin/bash",
        "-c",
        # The apiserver at the in-cluster address (through apiforward), and the memory limit
        # enforced by the cgroup v1 controller.
        "echo exec-ok; echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; "
        "exec 3<>/dev/tcp/$KUBERNETES_SERVICE_HOST/$KUBERNETES_SERVICE_PORT && echo api-tcp-ok; "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    )
    assert out.split() == ["exec-ok", "10.96.0.1:443", "api-tcp-ok", str(64 * 2**20)]


def test_node_exec_runs_crictl_inside_the_node(env: RealNodeEnv) -> None:
    """`fgo cluster node-exec -- crictl pods`: the debugging path the docs give."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fgo_localcluster.cli",
            "cluster",
            "node-exec",
            f"--state-dir={env.cluster.state_dir}",
            "--",
            "crictl",
            "pods",
            "--name=shell",
            "--state=ready",
            "-q",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert len(out.split()) == 1, out


def test_add_again_after_kill_9_restarts_only_what_died(env: RealNodeEnv) -> None:
    """containerd and apiforward killed: `add-real-node` resumes them; the pod keeps running."""
    uid_before = env.kubectl("get", "pod", "shell", "-o", "jsonpath={.metadata.uid}")
    for component in ("containerd", "apiforward"):
        rec = env.node.pid_record(component)
        assert rec is not None
        os.kill(rec.pid, signal.SIGKILL)
    bin_dir = Path(env.node.record.bin_dir) if env.node.record else None
    assert bin_dir is not None
    asyncio.run(env.node.add("default", bin_dir, images=[]))
    assert all(env.node.running(c) for c in realnode.NODE_COMPONENTS)
    assert env.kubectl("get", "pod", "shell", "-o", "jsonpath={.metadata.uid}") == uid_before
    out = env.kubectl("exec", "shell", "--", "/bin/bash", "-c", "echo still-running")
    assert out.strip() == "still-running"


def test_down_after_kill_9_leaves_nothing_behind(env: RealNodeEnv) -> None:
    node = env.node
    traces = NodeTraces.of(node)
    try:
        assert traces.processes(), "node namespaces hold no process?"
        assert nodehost.cgroup_pids(traces.cgroup_root), "no pod processes to clean up?"
        # The worst case: containerd and the kubelet die, shims and containers keep running.
        for component in ("containerd", "kubelet"):
            rec = node.pid_record(component)
            assert rec is not None
            os.kill(rec.pid, signal.SIGKILL)

        env.cluster.stop_sync()

        # Mounts, cgroups, processes in the node's namespaces, links, ip_forward, iptables
        # rules, and the host paths a non-isolated kubelet/containerd would write.
        assert leftovers(traces, env.host_before) == []
    finally:
        traces.close()
