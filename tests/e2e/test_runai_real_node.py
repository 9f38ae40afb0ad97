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

from collections.abc import Iterator
from typing import Any

import pytest
from fgo_common.annotations import RESERVE_FOR_GPU_INDEX
from fgo_localcluster.testing import NodeTraces, leftovers
from realnodelib import (
    NAMESPACE,
    NODE,
    TEST_IMAGE,
    WORK,
    RealNodeCluster,
    ready,
    real_node_cluster,
    service_images,
    wait_for,
)

RESERVATIONS = "runai-reservation"  # the chart's environment.resourceReservationNamespace
SERVICE_IMAGES = service_images(
    "device-plugin", "kwok-dra-plugin", "status-exporter", "status-updater"
)
DONE = "nvidia-smi-done"
GROUP = {"runai-gpu-group": "group-e2e"}
QUERY = ["nvidia-smi", "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"]

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNodeCluster]:
    state_dir = tmp_path_factory.mktemp("runai-rn") / "cluster"
    with real_node_cluster(state_dir, SERVICE_IMAGES) as env:
        env.kubectl("create", "namespace", RESERVATIONS)

        def plugin_ready() -> bool:
            selector = "app.kubernetes.io/component=device-plugin"
            pods = env.pods(NAMESPACE, selector)
            return len(pods) == 1 and ready(pods[0])

        wait_for(plugin_ready, timeout_s=240, what="the device plugin Ready on the real node")
        yield env


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


def test_fractional_pod_runs_nvidia_smi_on_its_reserved_gpu_with_its_share(
    env: RealNodeCluster,
) -> None:
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


def test_cluster_down_leaves_nothing_behind(env: RealNodeCluster) -> None:
    traces = NodeTraces.of(env.node)
    try:
        env.cluster.stop_sync()
        assert leftovers(traces, env.host_before) == []
    finally:
        traces.close()
