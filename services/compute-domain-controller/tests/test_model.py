"""ComputeDomain names and pure logic (fgo_common.computedomain and the controller's status):
spec parsing and its refusals, the workload template, claims -> status, index stability."""

from __future__ import annotations

from typing import Any

import pytest
from fgo_common import computedomain as cdn
from fgo_compute_domain_controller.controller import desired_status, same_status
from fgo_compute_domain_controller.kwokchannels import channel_target

UID = "11111111-2222-3333-4444-555555555555"


def _cd(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": cdn.API_VERSION,
        "kind": cdn.KIND,
        "metadata": {"name": "imex", "namespace": "team", "uid": UID},
        "spec": spec
        if spec is not None
        else {"numNodes": 2, "channel": {"resourceClaimTemplate": {"name": "imex-channel"}}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def _node(name: str, clique: str | None = "cluster-a.0", ip: str = "10.0.0.1") -> dict[str, Any]:
    labels = {cdn.CLIQUE_LABEL: clique} if clique else {}
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "labels": labels},
        "status": {"addresses": [{"type": "Hostname", "address": name},
                                 {"type": "InternalIP", "address": ip}]},
    }  # fmt: skip


def _claim(node: str | None, domain: str = UID) -> dict[str, Any]:
    claim: dict[str, Any] = {
        "metadata": {"name": f"c-{node}", "namespace": "team"},
        "spec": {
            "devices": {
                "config": [
                    {
                        "opaque": {
                            "driver": cdn.DRIVER,
                            "parameters": cdn.channel_config(domain, "Single"),
                        }
                    }
                ]
            }
        },
    }
    if node:
        claim["status"] = {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": "channel", "driver": cdn.DRIVER, "pool": node,
                         "device": "channel-0"},
                        {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "elsewhere",
                         "device": "gpu-0"},
                    ]
                }
            }
        }  # fmt: skip
    return claim


def test_parse_spec_defaults_allocation_mode_to_single() -> None:
    spec = cdn.parse_spec(_cd())
    assert spec == cdn.ComputeDomainSpec(2, "imex-channel", "Single")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"numNodes": -1, "channel": {"resourceClaimTemplate": {"name": "t"}}}, "spec.numNodes"),
        ({"numNodes": "2", "channel": {"resourceClaimTemplate": {"name": "t"}}}, "spec.numNodes"),
        ({"numNodes": True, "channel": {"resourceClaimTemplate": {"name": "t"}}}, "spec.numNodes"),
        ({"numNodes": 1}, "spec.channel"),
        ({"numNodes": 1, "channel": {}}, "spec.channel.resourceClaimTemplate.name"),
        ({"numNodes": 1, "channel": {"resourceClaimTemplate": {"name": "Bad_Name"}}},
         "spec.channel.resourceClaimTemplate.name"),
        ({"numNodes": 1, "channel": {"resourceClaimTemplate": {"name": "t"},
                                     "allocationMode": "Some"}}, "spec.channel.allocationMode"),
    ],
)  # fmt: skip
def test_parse_spec_names_the_bad_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(cdn.SpecError) as err:
        cdn.parse_spec(_cd(spec))
    assert str(err.value).startswith(field + ":")


def test_numnodes_zero_is_valid_and_ready_at_once() -> None:
    spec = cdn.parse_spec(_cd({"numNodes": 0, "channel": {"resourceClaimTemplate": {"name": "t"}}}))
    assert spec.num_nodes == 0
    assert cdn.overall_status(0, 0) == cdn.STATUS_READY


@pytest.mark.parametrize("mode", ["Single", "All"])
def test_workload_template(mode: str) -> None:
    spec = cdn.ComputeDomainSpec(2, "imex-channel", mode)
    template = cdn.workload_template(_cd(), spec, "resource.k8s.io/v1")
    meta = template["metadata"]
    assert (meta["name"], meta["namespace"]) == ("imex-channel", "team")
    assert meta["labels"] == {
        "resource.nvidia.com/computeDomain": "imex",
        "resource.nvidia.com/computeDomainTarget": "workload",
    }
    assert "finalizers" not in meta  # the apiserver would never let us take one off
    (owner,) = meta["ownerReferences"]
    assert owner["uid"] == UID and owner["controller"] and owner["kind"] == "ComputeDomain"
    assert template["spec"]["metadata"]["labels"] == {"nvidia.com/computeDomain": "imex"}
    devices = template["spec"]["spec"]["devices"]
    (request,) = devices["requests"]
    assert request == {
        "name": "channel",
        "exactly": {
            "deviceClassName": "compute-domain-default-channel.nvidia.com",
            "allocationMode": "ExactCount",
            "count": 1,
        },
    }
    (config,) = devices["config"]
    assert config["requests"] == ["channel"]
    assert config["opaque"] == {
        "driver": "compute-domain.nvidia.com",
        "parameters": {
            "apiVersion": "resource.nvidia.com/v1beta1",
            "kind": "ComputeDomainChannelConfig",
            "domainID": UID,
            "allocationMode": mode,
        },
    }


def test_status_lists_allocated_nodes_with_clique_ip_index() -> None:
    nodes = {"n2": _node("n2", ip="10.0.0.2"), "n1": _node("n1", ip="10.0.0.1")}
    status = desired_status(_cd(), 2, [_claim("n2"), _claim("n1"), _claim(None)], nodes)
    assert status == {
        "status": "Ready",
        "nodes": [
            {"name": "n1", "ipAddress": "10.0.0.1", "cliqueID": "cluster-a.0", "index": 0,
             "status": "Ready"},
            {"name": "n2", "ipAddress": "10.0.0.2", "cliqueID": "cluster-a.0", "index": 1,
             "status": "Ready"},
        ],
    }  # fmt: skip


def test_not_ready_until_num_nodes_joined() -> None:
    nodes = {"n1": _node("n1")}
    status = desired_status(_cd(), 2, [_claim("n1"), _claim(None)], nodes)
    assert status["status"] == "NotReady"
    assert [n["name"] for n in status["nodes"]] == ["n1"]


def test_nodes_that_are_gone_leave_the_status() -> None:
    status = desired_status(_cd(), 2, [_claim("n1"), _claim("n2")], {"n1": _node("n1")})
    assert [n["name"] for n in status["nodes"]] == ["n1"]
    assert status["status"] == "NotReady"


def test_claims_of_an_earlier_domain_of_the_same_name_are_ignored() -> None:
    status = desired_status(_cd(), 1, [_claim("n1", domain="old-uid")], {"n1": _node("n1")})
    assert status == {"status": "NotReady", "nodes": []}


def test_index_is_kept_and_unique_per_clique() -> None:
    nodes = {
        "a": _node("a"),
        "b": _node("b"),
        "c": _node("c"),
        "x": _node("x", clique="cluster-a.1"),
    }
    previous = [{"name": "c", "cliqueID": "cluster-a.0", "index": 0}]
    result = cdn.status_nodes({"a", "b", "c", "x"}, nodes, previous)
    index = {n["name"]: (n["cliqueID"], n["index"]) for n in result}
    assert index["c"] == ("cluster-a.0", 0)  # kept
    assert {index["a"], index["b"]} == {("cluster-a.0", 1), ("cluster-a.0", 2)}
    assert index["x"] == ("cluster-a.1", 0)
    # A node without clique label: empty cliqueID (NVIDIA's field is required, may be empty).
    (lone,) = cdn.status_nodes({"z"}, {"z": _node("z", clique=None)})
    assert lone["cliqueID"] == "" and lone["index"] == 0


def test_same_status_treats_missing_nodes_as_empty() -> None:
    assert same_status({"status": "NotReady"}, {"status": "NotReady", "nodes": []})
    assert not same_status(None, {"status": "NotReady", "nodes": []})


def test_channel_device_and_slice_target() -> None:
    assert cdn.channel_device(0) == {
        "name": "channel-0",
        "attributes": {"type": {"string": "channel"}, "id": {"int": 0}},
    }
    kwok = _node("kw")
    kwok["metadata"]["annotations"] = {"kwok.x-k8s.io/node": "fake"}
    # A KWOK node without GPUs (no gpu.present label from the GFD labeler) gets no channel.
    assert channel_target(kwok, "x") is None
    kwok["metadata"]["labels"]["nvidia.com/gpu.present"] = "true"
    target = channel_target(kwok, "compute-domain-controller")
    assert target is not None
    assert target.base_name == "kwok-kw-compute-domain-channel"
    assert target.driver == "compute-domain.nvidia.com"
    assert channel_target(_node("real"), "x") is None
    labelled = _node("lab")
    labelled["metadata"]["labels"].update({"type": "kwok", "nvidia.com/gpu.present": "true"})
    assert channel_target(labelled, "x") is not None
    kwok["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert channel_target(kwok, "x") is None


def test_clique_label_value() -> None:
    assert cdn.clique_label_value("c0ffee", 3) == "c0ffee.3"
