from __future__ import annotations

from typing import Any

import yaml
from fgo_localcluster import manifests, nodes

# The example Node from the seed README ("Create a Simulated GPU Node").
README_NODE = yaml.safe_load("""
apiVersion: v1
kind: Node
metadata:
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    type: kwok
    run.ai/simulated-gpu-node-pool: default
  name: kwok-gpu-node-1
spec:
  taints:
  - effect: NoSchedule
    key: kwok.x-k8s.io/node
    value: fake
status:
  allocatable:
    cpu: "32"
    memory: 128Gi
    pods: "110"
  capacity:
    cpu: "32"
    memory: 128Gi
    pods: "110"
""")


def test_kwok_node_has_everything_the_readme_example_has() -> None:
    node = nodes.kwok_node("kwok-gpu-node-1")
    assert node["metadata"]["annotations"] == README_NODE["metadata"]["annotations"]
    assert node["metadata"]["labels"].items() >= README_NODE["metadata"]["labels"].items()
    assert node["spec"] == README_NODE["spec"]
    assert node["status"] == README_NODE["status"]


def test_kwok_node_options() -> None:
    node = nodes.kwok_node(
        "n",
        "a100-pool",
        cpu="8",
        memory="64Gi",
        pods="50",
        labels={"zone": "z1"},
        extra_capacity={"nvidia.com/gpu": "4"},
    )
    assert node["metadata"]["labels"]["run.ai/simulated-gpu-node-pool"] == "a100-pool"
    assert node["metadata"]["labels"]["zone"] == "z1"
    assert node["status"]["capacity"] == {
        "cpu": "8",
        "memory": "64Gi",
        "pods": "50",
        "nvidia.com/gpu": "4",
    }
    assert node["status"]["allocatable"] == node["status"]["capacity"]
    assert node["status"]["allocatable"] is not node["status"]["capacity"]


def test_next_names_continue_after_the_highest_existing_index() -> None:
    assert nodes.next_names("kwok-gpu-node-", 2, []) == ["kwok-gpu-node-1", "kwok-gpu-node-2"]
    existing = [
        "kwok-gpu-node-1",
        "kwok-gpu-node-7",
        "kwok-gpu-node-x",
        "other-9",
        "kwok-gpu-node-3",
    ]
    assert nodes.next_names("kwok-gpu-node-", 3, existing) == [
        "kwok-gpu-node-8",
        "kwok-gpu-node-9",
        "kwok-gpu-node-10",
    ]
    assert nodes.next_names("kwok-gpu-node-", 0, existing) == []


def test_device_classes_match_the_nvidia_dra_driver() -> None:
    classes = {d["metadata"]["name"]: d for d in manifests.nvidia_device_classes()}
    assert set(classes) == {"gpu.nvidia.com", "mig.nvidia.com"}
    gpu = classes["gpu.nvidia.com"]
    assert gpu["apiVersion"] == "resource.k8s.io/v1"
    assert gpu["spec"]["selectors"] == [
        {
            "cel": {
                "expression": "device.driver == 'gpu.nvidia.com' && "
                "device.attributes['gpu.nvidia.com'].type == 'gpu'"
            }
        }
    ]
    assert gpu["spec"]["extendedResourceName"] == "nvidia.com/gpu"
    mig = classes["mig.nvidia.com"]
    assert mig["spec"]["selectors"][0]["cel"]["expression"].endswith(".type == 'mig'")
    assert "extendedResourceName" not in mig["spec"]


def test_operator_namespace_allows_privileged_pods() -> None:
    ns = manifests.operator_namespace()
    assert ns["metadata"]["name"] == "gpu-operator"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_stale_kwok_leases_are_the_ones_held_by_a_kwok_process() -> None:
    leases: list[dict[str, Any]] = [
        {
            "metadata": {"name": "a"},
            "spec": {"holderIdentity": "vm_0d8e745a-5530-4fbe-8246-b9f96119fe8c"},
        },
        {"metadata": {"name": "real-node"}, "spec": {"holderIdentity": "real-node"}},
        {"metadata": {"name": "released"}, "spec": {"holderIdentity": None}},
        {"metadata": {"name": "no-spec"}},
    ]
    assert nodes.stale_kwok_leases(leases) == ["a"]


def test_node_json_helpers() -> None:
    node = nodes.kwok_node("n")
    assert nodes.is_kwok_node(node)
    assert not nodes.is_ready(node)
    node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    assert nodes.is_ready(node)
    assert not nodes.is_kwok_node({"metadata": {"name": "real"}})
