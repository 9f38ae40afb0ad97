"""``fgo nvidia-smi``: which inputs a pod's container gets (device plugin, DRA, settings), and
the packaged nvidia-smi run with them."""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any

import pytest
from fgo_common.config import parse_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.topology import HOLDER_DRA, Holder, NodeTopology
from fgo_localcluster import smi
from fgo_localcluster.cli import split_smi_args

NODE = "node-a"


def record(count: int = 4) -> NodeTopology:
    config = parse_cluster_config(
        {"nodePools": {"p": {"gpus": [{"type": "h100", "count": count}]}}}
    )
    return build_node_topology(NODE, config.pools["p"], config, kwok=True)


def pod(**extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": "p1", "namespace": "ns", "uid": "uid-1"},
        "spec": {"nodeName": NODE, "containers": [{"name": "main"}, {"name": "side"}]},
        "status": {},
    }
    for key, value in extra.items():
        obj[key].update(value)
    return obj


def hold(topology: NodeTopology, index: int, holder: Holder) -> None:
    topology.gpus[index].status.holders.append(holder)


def test_settings_come_from_the_charts_workloads() -> None:
    def workload(image: str, env: dict[str, str]) -> dict[str, Any]:
        entries = [{"name": k, "value": v} for k, v in env.items()]
        entries.append({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "x"}}})
        container = {"image": f"ghcr.io/fgo/{image}:1", "env": entries}
        return {"spec": {"template": {"spec": {"containers": [container]}}}}

    got = smi.operator_settings(
        [
            workload("status-updater", {"TOPOLOGY_CM_NAME": "topo"}),
            workload("device-plugin", {"FGO_SEED": "7", "VISIBLE_DEVICES_ENV_NAME": "FGO_X"}),
            workload("dra-plugin", {"VISIBLE_DEVICES_ENV_NAME": "FGO_Y"}),
        ]
    )
    assert got == smi.OperatorSettings("topo", "7", "FGO_X", "FGO_Y")
    assert smi.operator_settings([]) == smi.OperatorSettings()
    assert smi.record_name(got, NODE) == "topo-node-a"


def test_container_is_the_one_kubectl_exec_picks() -> None:
    assert smi.container_name(pod(), None) == "main"
    annotated = pod(metadata={"annotations": {smi.DEFAULT_CONTAINER_ANNOTATION: "side"}})
    assert smi.container_name(annotated, None) == "side"
    assert smi.container_name(pod(), "side") == "side"
    with pytest.raises(smi.SmiError, match="no container 'nope'"):
        smi.container_name(pod(), "nope")


def test_device_plugin_pod_sees_its_holders_only() -> None:
    topology = record()
    hold(topology, 2, Holder("ns", "p1", "main", "uid-1"))
    hold(topology, 0, Holder("ns", "p1", "side", "uid-1"))
    hold(topology, 1, Holder("ns", "p1", "main", "uid-old"))  # an earlier pod of that name
    hold(topology, 3, Holder("ns", "p1", "main", "uid-1", kind=HOLDER_DRA))  # not Allocate's
    env = smi.pod_env(pod(), "main", topology, {}, smi.OperatorSettings(seed="3"))
    assert env == {"FGO_SEED": "3", "NVIDIA_VISIBLE_DEVICES": topology.gpus[2].id}
    # A holder written without a UID (the reference) is matched by namespace/name.
    legacy = record()
    hold(legacy, 1, Holder("ns", "p1"))
    assert smi.plugin_devices(legacy, pod(), "main") == [legacy.gpus[1].id]


def test_pod_without_gpu_is_refused() -> None:
    with pytest.raises(smi.SmiError, match="holds no GPU"):
        smi.pod_env(pod(), "main", record(), {}, smi.OperatorSettings())


def claim(*results: tuple[str, str]) -> dict[str, Any]:
    return {
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"driver": "gpu.nvidia.com", "pool": NODE, "device": d, "request": r}
                        for r, d in results
                    ]
                    + [{"driver": "other.example.com", "pool": NODE, "device": "gpu-3"}]
                }
            }
        }
    }


def test_dra_container_sees_its_claims_devices() -> None:
    topology = record()
    p = pod(
        spec={
            "resourceClaims": [
                {"name": "gpus", "resourceClaimTemplateName": "t"},
                {"name": "other", "resourceClaimName": "shared"},
            ],
            "containers": [
                {"name": "main", "resources": {"claims": [{"name": "gpus"}]}},
                {"name": "side", "resources": {"claims": [{"name": "other", "request": "b"}]}},
            ],
        },
        status={"resourceClaimStatuses": [{"name": "gpus", "resourceClaimName": "p1-gpus-x"}]},
    )
    claims = {
        "p1-gpus-x": claim(("g", "gpu-1"), ("g", "gpu-2")),
        "shared": claim(("a", "gpu-0"), ("b", "gpu-3")),
    }
    assert smi.container_claims(p, "main") == [("p1-gpus-x", None)]
    env = smi.pod_env(p, "main", topology, claims, smi.OperatorSettings(dra_visible_env="V"))
    assert env["V"] == f"{topology.gpus[1].id},{topology.gpus[2].id}"
    # The CDI spec sets the whole claim's list, whichever of its requests the container uses.
    env = smi.pod_env(p, "side", topology, claims, smi.OperatorSettings())
    assert env["NVIDIA_VISIBLE_DEVICES"] == f"{topology.gpus[0].id},{topology.gpus[3].id}"
    # ... but only if one of its requests got a device of ours.
    assert smi.claim_devices(claims["shared"], frozenset(["c"]), topology) == []


def test_dra_devices_named_the_reference_way() -> None:
    """Publishers with DEVICE_NAMING=reference name full GPUs gpu-<uuid>."""
    topology = record()
    name = "gpu-" + topology.gpus[2].id.lower().removeprefix("gpu-")
    devices = smi.claim_devices(claim(("g", name)), None, topology)
    assert devices == [topology.gpus[2].id]


def test_extended_resource_served_by_dra() -> None:
    topology = record()
    p = pod(
        status={
            "extendedResourceClaimStatus": {
                "resourceClaimName": "p1-extended-resources-x",
                "requestMappings": [
                    {"containerName": "main", "resourceName": "nvidia.com/gpu", "requestName": "r0"}
                ],
            }
        }
    )
    assert smi.container_claims(p, "main") == [("p1-extended-resources-x", frozenset(["r0"]))]
    assert smi.container_claims(p, "side") == []
    claims = {"p1-extended-resources-x": claim(("r0", "gpu-2"))}
    env = smi.pod_env(p, "main", topology, claims, smi.OperatorSettings())
    assert env["NVIDIA_VISIBLE_DEVICES"] == topology.gpus[2].id


def test_fraction_from_the_pod_spec() -> None:
    topology = record()
    hold(topology, 0, Holder("ns", "p1", "main", "uid-1"))
    p = pod(
        spec={
            "containers": [{"name": "main", "env": [{"name": "RUNAI_NUM_OF_GPUS", "value": "0.5"}]}]
        }
    )
    env = smi.pod_env(p, "main", topology, {}, smi.OperatorSettings())
    assert env["RUNAI_NUM_OF_GPUS"] == "0.5"


def test_fractional_pod_names_itself_by_uid() -> None:
    """A Run:ai/KAI fractional pod: the reservation pod holds the GPU, the pod has a usage
    entry; with the chart's MutatingAdmissionPolicy its containers carry FGO_POD_UID."""
    from fgo_common.topology import HOLDER_RESERVATION, PodUsage

    topology = record()
    hold(topology, 1, Holder("runai-reservation", "r", "c", "uid-r", kind=HOLDER_RESERVATION))
    topology.gpus[1].status.usage["uid-1"] = PodUsage(fb_used_mib=100, namespace="ns", pod="p1")
    uid_ref = {"fieldRef": {"fieldPath": "metadata.uid"}}
    mutated = pod(spec={"containers": [{"name": "main", "env": [
        {"name": "FGO_POD_UID", "valueFrom": uid_ref},
        {"name": "GPU_PORTION", "value": "0.5"},
    ]}]})  # fmt: skip
    env = smi.pod_env(mutated, "main", topology, {}, smi.OperatorSettings(seed="2"))
    assert env == {"FGO_SEED": "2", "FGO_POD_UID": "uid-1", "GPU_PORTION": "0.5"}
    # Run:ai's own POD_UUID does as well.
    runai = pod(
        spec={"containers": [{"name": "main", "env": [{"name": "POD_UUID", "value": "uid-1"}]}]}
    )
    assert smi.pod_env(runai, "main", topology, {}, smi.OperatorSettings())["POD_UUID"] == "uid-1"
    # Not mutated (no policy on this cluster): nvidia-smi is not in the container.
    with pytest.raises(smi.SmiError, match=r"MutatingAdmissionPolicy .* did not mutate it"):
        smi.pod_env(pod(), "main", topology, {}, smi.OperatorSettings())
    # Mutated but not (yet) in the record: nothing to show either.
    with pytest.raises(smi.SmiError, match="holds no GPU"):
        smi.pod_env(mutated, "main", record(), {}, smi.OperatorSettings())


def test_nvidia_smi_arguments_follow_the_double_dash() -> None:
    assert split_smi_args(["nvidia-smi", "ns/p", "--", "-i", "0", "--", "x"]) == (
        ["nvidia-smi", "ns/p"],
        ["-i", "0", "--", "x"],
    )
    assert split_smi_args(["cluster", "node-exec", "--", "ls"]) == (
        ["cluster", "node-exec", "--", "ls"],
        [],
    )


def test_runs_the_packaged_nvidia_smi_with_only_the_pods_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topology = record()
    # The caller's own variables must not reach it: this one would show every GPU.
    monkeypatch.setenv("FGO_VISIBLE_DEVICES", "all")
    visible = topology.gpus[2]
    with tempfile.TemporaryFile() as out:
        code = asyncio.run(
            smi.run_smi(
                topology,
                {"NVIDIA_VISIBLE_DEVICES": visible.id, "FGO_SEED": "0"},
                [],
                stdout=out.fileno(),
            )
        )
        out.seek(0)
        text = out.read().decode()
    assert code == 0, text
    assert "H100" in text
    bus_ids = [g.bus_id for g in topology.gpus]
    assert [b for b in bus_ids if b.upper() in text.upper()] == [visible.bus_id]
    assert os.environ["FGO_VISIBLE_DEVICES"] == "all"
