"""LocalOperator's reading of a rendered manifest: Deployments and, per node, DaemonSets."""

from __future__ import annotations

from typing import Any

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


def test_each_replica_is_a_workload_with_its_own_pod_name() -> None:
    deployment: dict[str, Any] = _workload("Deployment", "fgo-status-updater", "status-updater")
    deployment["spec"]["replicas"] = 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["env"].append(
        {"name": "LEASE_IDENTITY", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    )
    first, second = workloads_from_manifest(yaml.safe_dump(deployment), "ns")
    assert (first.name, second.name) == ("fgo-status-updater", "fgo-status-updater-1")
    assert first.env["LEASE_IDENTITY"] != second.env["LEASE_IDENTITY"]
    assert first.service_account == second.service_account == "fgo-status-updater"


def test_daemonsets_as_their_pod_on_a_node() -> None:
    (workload,) = node_workloads_from_manifest(MANIFEST, "ns", "node-7")
    assert workload.name == "fgo-dra-plugin-node-7"
    assert workload.module == "fgo_dra_plugin"
    assert workload.service_account == "fgo-dra-plugin"
    assert workload.env == {"MODE": "node", "NODE_NAME": "node-7"}
    assert workload.ports == {"health": 8080}


def test_ports_of_an_earlier_run_are_kept_while_free() -> None:
    import socket

    from fgo_localcluster.layout import fresh_port
    from fgo_localcluster.operator import LocalWorkload, local_ports

    workload = LocalWorkload(
        name="exporter",
        namespace="ns",
        service_account="sa",
        module="m",
        env={"HEALTH_PORT": "8080", "METRICS_ADDRESS": ":9400"},
        ports={"health": 8080, "metrics": 9400},
    )
    health, metrics = fresh_port(), fresh_port()
    env, ports = local_ports(workload, {"health": health, "metrics": metrics})
    assert ports == {"health": health, "metrics": metrics}
    assert env == {"HEALTH_PORT": str(health), "METRICS_ADDRESS": f":{metrics}"}
    # Taken by something else meanwhile: a fresh port instead.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", metrics))
        taken.listen()
        _, ports = local_ports(workload, {"health": health, "metrics": metrics})
    assert ports["health"] == health
    assert ports["metrics"] != metrics


def test_ports_given_to_other_workloads_are_never_chosen(monkeypatch: Any) -> None:
    """A port chosen for another workload is free until that service binds it, seconds later:
    neither a reused nor a fresh port may be one of them (two services on one port: the second
    exits with "address already in use")."""
    from fgo_localcluster import layout, operator
    from fgo_localcluster.operator import LocalWorkload, local_ports

    workload = LocalWorkload(
        name="exporter",
        namespace="ns",
        service_account="sa",
        module="m",
        env={"HEALTH_PORT": "8080"},
        ports={"health": 8080},
    )
    other = layout.fresh_port()
    _, ports = local_ports(workload, {"health": other}, taken={other})
    assert ports["health"] != other
    # The random pick lands on the other workload's port first: it is skipped.
    picks = iter([other, other, other + 1])
    monkeypatch.setattr(layout.random.SystemRandom, "choice", lambda self, seq: next(picks))
    monkeypatch.setattr(layout, "port_is_free", lambda port: True)
    monkeypatch.setattr(operator, "port_is_free", lambda port: True)
    _, ports = local_ports(workload, None, taken={other})
    assert ports["health"] == other + 1


def test_status_lists_processes_and_stable_urls() -> None:
    from pathlib import Path

    from fgo_localcluster.cli import format_operator
    from fgo_localcluster.operator import WorkloadStatus

    text = "\n".join(
        format_operator(
            [
                WorkloadStatus("ns", "exporter", 42, "ok", {"health": 1, "metrics": 2}, Path("l")),
                WorkloadStatus("ns", "updater", None, "down", {"health": 3}, Path("u.log")),
            ]
        )
    )
    assert "ns/exporter" in text
    assert "health=1 metrics=2" in text
    assert "exporter: http://127.0.0.1:2/metrics" in text
    assert "ns/updater" in text
    assert "down" in text
    assert format_operator([]) == []
