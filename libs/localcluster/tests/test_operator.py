"""LocalOperator's reading of a rendered manifest: Deployments and, per node, DaemonSets."""

from __future__ import annotations

import yaml
from fgo_localcluster.operator import node_workloads_from_manifest, workloads_from_manifest


def _workload(kind: str, name: str, image: str) -> dict[str, object]:
    return {
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "template": {
                "spec": {
                    "serviceAccountName": name,
                    "containers": [
                        {
                            "image": f"ghcr.io/x/{image}:1.0",
                            "env": [
                                {"name": "MODE", "value": "node"},
                                {
                                    "name": "NODE_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                                },
                            ],
                            "ports": [{"name": "health", "containerPort": 8080}],
                        }
                    ],
                }
            }
        },
    }


MANIFEST = yaml.safe_dump_all(
    [
        _workload("Deployment", "fgo-status-updater", "status-updater"),
        _workload("DaemonSet", "fgo-dra-plugin", "dra-plugin"),
        _workload("DaemonSet", "someone-else", "busybox"),
        {"kind": "ConfigMap", "metadata": {"name": "topology"}},
    ]
)


def test_deployments_only_without_a_node() -> None:
    (workload,) = workloads_from_manifest(MANIFEST, "ns")
    assert workload.name == "fgo-status-updater"
    assert workload.env["NODE_NAME"] == ""


def test_daemonsets_as_their_pod_on_a_node() -> None:
    (workload,) = node_workloads_from_manifest(MANIFEST, "ns", "node-7")
    assert workload.name == "fgo-dra-plugin-node-7"
    assert workload.module == "fgo_dra_plugin"
    assert workload.service_account == "fgo-dra-plugin"
    assert workload.env == {"MODE": "node", "NODE_NAME": "node-7"}
    assert workload.ports == {"health": 8080}
