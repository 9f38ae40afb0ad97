"""The chart's high-availability knobs (replicas of the central services, leaderElection): one
replica renders exactly what it did before (Recreate, no Lease RBAC); more replicas elect a
leader through a Lease the pods may create, read and renew by name, keep one pod through a
drain (PodDisruptionBudget) and prefer different nodes."""

from __future__ import annotations

from typing import Any

import pytest
from chartlib import Helm, Rendered

# Deployment -> (replicas value, Lease name, ServiceAccount)
CENTRAL = {
    "fgo-status-updater": ("statusUpdater.replicas", "fgo-status-updater", "fgo-status-updater"),
    "fgo-kwok-gpu-capacity": (
        "kwokGpuDevicePlugin.replicas",
        "fgo-kwok-gpu-capacity",
        "fgo-kwok-gpu-capacity",
    ),
    "fgo-kwok-dra-plugin": ("kwokDraPlugin.replicas", "fgo-kwok-dra-plugin", "fgo-kwok-dra-plugin"),
    "nvidia-dcgm-exporter-kwok": (
        "statusExporter.kwok.replicas",
        "nvidia-dcgm-exporter-kwok",
        "fgo-status-exporter",
    ),
}
DRA_ON = ["kwokDraPlugin.enabled=true"]


def _env(deploy: dict[str, Any]) -> dict[str, Any]:
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _lease_rules(rendered: Rendered) -> dict[str, list[dict[str, Any]]]:
    return {
        role["metadata"]["name"]: role["rules"]
        for role in rendered.of_kind("Role")
        if any("coordination.k8s.io" in r.get("apiGroups", []) for r in role["rules"])
    }


def test_one_replica_renders_no_election(helm: Helm) -> None:
    rendered = helm.render(sets=DRA_ON)
    for name in CENTRAL:
        deploy = rendered.get("Deployment", name)
        assert deploy["spec"]["replicas"] == 1
        assert deploy["spec"]["strategy"] == {"type": "Recreate"}
        assert "LEADER_ELECTION" not in _env(deploy)
        assert "affinity" not in deploy["spec"]["template"]["spec"]
    assert _lease_rules(rendered) == {}
    assert rendered.of_kind("PodDisruptionBudget") == []


@pytest.mark.parametrize("deployment", sorted(CENTRAL))
def test_two_replicas_elect_a_leader(helm: Helm, deployment: str) -> None:
    key, lease, service_account = CENTRAL[deployment]
    rendered = helm.render(sets=[*DRA_ON, f"{key}=2", "leaderElection.leaseDurationSeconds=20"])
    deploy = rendered.get("Deployment", deployment)
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    env = _env(deploy)
    assert env["LEADER_ELECTION"] == "true"
    assert env["LEASE_NAME"] == lease
    assert env["LEASE_IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["LEASE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert (env["LEASE_DURATION_SECONDS"], env["RENEW_DEADLINE_SECONDS"]) == ("20", "10")

    (rules,) = _lease_rules(rendered).values()
    assert rules == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease],
            "verbs": ["get", "update"],
        },
    ]
    (binding,) = [
        b for b in rendered.of_kind("RoleBinding") if b["metadata"]["name"].endswith("-leader")
    ]
    assert [s["name"] for s in binding["subjects"]] == [service_account]

    (pdb,) = rendered.of_kind("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    (term,) = deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_election_forced_for_one_replica_and_user_affinity_kept(helm: Helm) -> None:
    mine = "statusUpdater.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    rendered = helm.render(
        sets=[
            "leaderElection.enabled=true",
            "statusUpdater.replicas=2",
            f"{mine}[0].topologyKey=topology.kubernetes.io/zone",
        ]
    )
    updater = rendered.get("Deployment", "fgo-status-updater")
    anti = updater["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert list(anti) == ["requiredDuringSchedulingIgnoredDuringExecution"]
    capacity = rendered.get("Deployment", "fgo-kwok-gpu-capacity")
    assert _env(capacity)["LEADER_ELECTION"] == "true"  # forced, with one replica
    assert capacity["spec"]["replicas"] == 1
    assert [p["metadata"]["name"] for p in rendered.of_kind("PodDisruptionBudget")] == [
        "fgo-status-updater"
    ]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("statusUpdater.replicas=0", "/statusUpdater/replicas"),
        ("kwokDraPlugin.replicas=6", "/kwokDraPlugin/replicas"),
        ("leaderElection.retryPeriodSeconds=0", "/leaderElection/retryPeriodSeconds"),
        ("leaderElection.renewDeadlineSeconds=15", "leaseDurationSeconds (15) > renewDeadline"),
        ("leaderElection.retryPeriodSeconds=10", "> retryPeriodSeconds (10) is required"),
    ],
)
def test_bad_values_are_refused(helm: Helm, setting: str, message: str) -> None:
    assert message in helm.render_error(sets=[setting])
