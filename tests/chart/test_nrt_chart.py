"""The chart's NodeResourceTopology switch (statusExporter.nodeResourceTopology, docs/numa.md):
the CRD, the status-updater's env and RBAC, and the numa keys it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chartlib import CHART, Helm, Rendered

CRD = "noderesourcetopologies.topology.node.k8s.io"
ON = ["statusExporter.nodeResourceTopology.enabled=true"]


def _env(rendered: Rendered) -> dict[str, str]:
    deploy = rendered.get("Deployment", "fgo-status-updater")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def _nrt_rules(rendered: Rendered) -> list[dict[str, object]]:
    return [
        rule
        for role in rendered.of_kind("ClusterRole")
        for rule in role.get("rules") or []
        if "topology.node.k8s.io" in rule.get("apiGroups", [])
    ]


def test_off_by_default(helm: Helm) -> None:
    rendered = helm.render()
    assert not rendered.of_kind("CustomResourceDefinition")
    assert _env(rendered)["NODE_RESOURCE_TOPOLOGY_ENABLED"] == "false"
    assert not _nrt_rules(rendered)


def test_enabled_renders_crd_env_and_rbac(helm: Helm) -> None:
    rendered = helm.render(sets=ON)
    crd = rendered.get("CustomResourceDefinition", CRD)
    assert crd == yaml.safe_load((CHART / "files" / "noderesourcetopology-crd.yaml").read_text())
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    versions = {v["name"]: (v["served"], v["storage"]) for v in crd["spec"]["versions"]}
    assert versions == {"v1alpha1": (True, False), "v1alpha2": (True, True)}
    assert _env(rendered)["NODE_RESOURCE_TOPOLOGY_ENABLED"] == "true"
    assert _nrt_rules(rendered) == [
        {
            "apiGroups": ["topology.node.k8s.io"],
            "resources": ["noderesourcetopologies"],
            "verbs": ["list", "watch", "create", "patch", "delete"],
        }
    ]


def test_install_crd_false_keeps_the_objects_but_not_the_crd(helm: Helm) -> None:
    rendered = helm.render(sets=[*ON, "statusExporter.nodeResourceTopology.installCRD=false"])
    assert not rendered.of_kind("CustomResourceDefinition")
    assert _env(rendered)["NODE_RESOURCE_TOPOLOGY_ENABLED"] == "true"
    assert _nrt_rules(rendered)


def test_reference_values_key_is_no_longer_named_as_ignored(helm: Helm, tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump({"statusExporter": {"nodeResourceTopology": {"enabled": True}}}))
    assert "nodeResourceTopology" not in helm.notes([path])


@pytest.mark.parametrize(
    ("numa", "fragment"),
    [
        ("topologyManagerPolicy=strict", "topologyManagerPolicy"),
        ("topologyManagerScope=node", "topologyManagerScope"),
        ("cpuPerZone=lots", "cpuPerZone"),
        ("memPerZone=64 GB", "memPerZone"),
        ("distances.far=1", "distances"),
        ("distances.self=0", "distances/self"),
    ],
)
def test_schema_refuses_bad_numa_keys(helm: Helm, numa: str, fragment: str) -> None:
    sets = [
        "topology.nodePools.x.gpus[0].type=H100",
        "topology.nodePools.x.gpus[0].count=4",
        "topology.nodePools.x.numa.zones=2",
        f"topology.nodePools.x.numa.{numa}",
    ]
    error = helm.render_error(sets=sets)
    assert "values don't meet the specifications of the schema" in error
    assert fragment in error, error


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (
            ["topology.nodePools.x.numa.zones=3"],
            "topology.nodePools.x.numa.zones: 3 NUMA zones for 2 GPU(s); at most one zone per GPU",
        ),
        (
            ["topology.nodePools.x.numa.zones=2", "topology.nodePools.x.numa.gpusPerZone={2,1}"],
            "topology.nodePools.x.numa.gpusPerZone: must sum to the pool's GPU count 2, got 3",
        ),
    ],
)
def test_validation_names_the_numa_field(helm: Helm, sets: list[str], expected: str) -> None:
    base = ["topology.nodePools.x.gpus[0].type=H100", "topology.nodePools.x.gpus[0].count=2"]
    error = helm.render_error(sets=base + sets)
    assert "fake-gpu-operator: invalid values:" in error
    assert expected in error, error


def test_valid_numa_block_renders(helm: Helm) -> None:
    helm.render(
        sets=[
            *ON,
            "topology.nodePools.x.gpus[0].type=H100",
            "topology.nodePools.x.gpus[0].count=8",
            "topology.nodePools.x.numa.zones=2",
            "topology.nodePools.x.numa.topologyManagerPolicy=restricted",
            "topology.nodePools.x.numa.topologyManagerScope=pod",
            "topology.nodePools.x.numa.cpuPerZone=15500m",
            "topology.nodePools.x.numa.memPerZone=64Gi",
            "topology.nodePools.x.numa.distances.self=10",
            "topology.nodePools.x.numa.distances.remote=32",
        ]
    )
