"""ComputeDomain channels on a real node (kubelet + containerd), issue 23.

A control plane of its own, one real node (pool ``default``, 2 GPUs) and the chart from the
images ``make images`` built, with ``computeDomainDraPlugin.enabled=true``: the status-updater
labels the node ``nvidia.com/gpu.deploy.compute-domain-dra-plugin=true``, DaemonSet
``fgo-compute-domain-dra-plugin`` (the dra-plugin image, DRIVER_MODE=compute-domain) registers
with the real kubelet and publishes the node's ``channel-0``; a ComputeDomain's pod is scheduled
there by the real scheduler, the kubelet calls NodePrepareResources and containerd applies the
CDI edits: the channel device node and the env are in the container. The domain goes Ready
with the node; deleting the pod unprepares the claim (CDI spec and checkpoint entry gone).

Needs root, ``make node-tools`` and ``make images``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fgo_common import computedomain as cdn
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

SERVICE_IMAGES = service_images(
    "device-plugin",
    "kwok-dra-plugin",
    "status-exporter",
    "status-updater",
    "dra-plugin",
    "compute-domain-controller",
)
SETS = ["computeDomainDraPlugin.enabled=true"]
DONE = "channels-listed"
CDI_DIR = "/var/run/cdi"
CHECKPOINT = f"/var/lib/kubelet/plugins/{cdn.DRIVER}/checkpoint.json"

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNodeCluster]:
    state_dir = tmp_path_factory.mktemp("cd-rn") / "cluster"
    with real_node_cluster(state_dir, SERVICE_IMAGES, sets=SETS) as env:

        def plugin_ready() -> bool:
            pods = env.pods(NAMESPACE, "app.kubernetes.io/component=compute-domain-dra-plugin")
            return len(pods) == 1 and ready(pods[0])

        wait_for(plugin_ready, timeout_s=240, what="the compute-domain kubelet plugin Ready")
        yield env


def _channel_slices(env: RealNodeCluster) -> list[dict[str, Any]]:
    items = env.get("resourceslices")["items"]
    return [s for s in items if s["spec"]["driver"] == cdn.DRIVER]


def test_plugin_publishes_the_real_nodes_channel(env: RealNodeCluster) -> None:
    def one() -> dict[str, Any] | None:
        found = _channel_slices(env)
        return found[0] if len(found) == 1 else None

    stored = wait_for(one, timeout_s=60, what="the real node's channel slice")
    assert stored["spec"]["nodeName"] == NODE
    assert stored["spec"]["pool"]["name"] == NODE
    assert stored["spec"]["devices"] == [cdn.channel_device(0)]
    node = env.get("node", NODE)
    assert node["metadata"]["labels"]["nvidia.com/gpu.deploy.compute-domain-dra-plugin"] == "true"


def test_channel_claim_is_prepared_into_the_container_and_unprepared(
    env: RealNodeCluster,
) -> None:
    env.apply(
        {
            "apiVersion": cdn.API_VERSION,
            "kind": cdn.KIND,
            "metadata": {"name": "imex", "namespace": WORK},
            "spec": {"numNodes": 1, "channel": {"resourceClaimTemplate": {"name": "imex-ch"}}},
        }
    )
    wait_for(
        lambda: env.get("resourceclaimtemplate", "imex-ch", WORK),
        timeout_s=60,
        what="the ComputeDomain's ResourceClaimTemplate",
    )
    command = (
        "ls -ln /dev/nvidia-caps-imex-channels/; "
        "env | grep -E '^(COMPUTE_DOMAIN|IMEX_CHANNELS|DRA_RESOURCE_DRIVER_NAME)' | sort; "
        f"echo {DONE}; exec sleep infinity"
    )
    env.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "imex-pod", "namespace": WORK},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": NODE},
                "terminationGracePeriodSeconds": 1,
                "resourceClaims": [{"name": "ch", "resourceClaimTemplateName": "imex-ch"}],
                "containers": [
                    {
                        "name": "main",
                        "image": TEST_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/bash", "-c", command],
                        "resources": {
                            "limits": {"cpu": "100m", "memory": "64Mi"},
                            "claims": [{"name": "ch"}],
                        },
                    }
                ],
            },
        }
    )

    def started() -> str | None:
        log = env.kubectl("logs", "-n", WORK, "imex-pod", "-c", "main", check=False)
        return log if DONE in log else None

    log = wait_for(started, timeout_s=120, what="the channel pod's listing")
    print(f"channel pod:\n{log}")
    pod = env.get("pod", "imex-pod", WORK)
    claim_name = pod["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
    claim = env.get("resourceclaim", claim_name, WORK)
    uid = claim["metadata"]["uid"]
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert (result["driver"], result["pool"], result["device"]) == (cdn.DRIVER, NODE, "channel-0")
    # the device node stand-in: a character device 1, 3 named channel0
    (entry,) = [line for line in log.splitlines() if line.endswith(" channel0")]
    assert entry.startswith("c") and "1, 3" in entry, log
    assert f"COMPUTE_DOMAIN_DEVICE_channel_0_RESOURCE_CLAIM={uid}" in log
    assert f"DRA_RESOURCE_DRIVER_NAME={cdn.DRIVER}" in log
    assert "IMEX_CHANNELS=0" in log
    cd_uid = env.get(cdn.PLURAL, "imex", WORK)["metadata"]["uid"]
    assert f"COMPUTE_DOMAIN_UUID={cd_uid}" in log
    spec_file = env.host_path(CDI_DIR) / f"k8s.compute-domain.nvidia.com-claim_{uid}.json"
    assert spec_file.exists()
    checkpoint = json.loads(env.host_path(CHECKPOINT).read_text())
    assert uid in checkpoint["claims"]

    def domain_ready() -> dict[str, Any] | None:
        status = env.get(cdn.PLURAL, "imex", WORK).get("status") or {}
        return status if status.get("status") == "Ready" else None

    status = wait_for(domain_ready, timeout_s=60, what="the ComputeDomain Ready")
    assert [n["name"] for n in status["nodes"]] == [NODE]

    env.kubectl("delete", "pod", "-n", WORK, "imex-pod", "--wait=true", "--timeout=90s")

    def unprepared() -> bool:
        claims = json.loads(env.host_path(CHECKPOINT).read_text())["claims"]
        return uid not in claims and not spec_file.exists()

    wait_for(unprepared, timeout_s=60, what="the claim unprepared (checkpoint, CDI spec)")
    env.kubectl("delete", cdn.PLURAL, "-n", WORK, "imex", "--wait=true", "--timeout=60s")


def test_cluster_down_leaves_nothing_behind(env: RealNodeCluster) -> None:
    traces = NodeTraces.of(env.node)
    try:
        env.cluster.stop_sync()
        assert leftovers(traces, env.host_before) == []
    finally:
        traces.close()
