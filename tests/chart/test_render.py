"""Unit tier of the chart: lint and render over the values matrix, and what the render contains.

No cluster: `helm lint` / `helm template` with the pinned helm and Kubernetes version. What
the apiserver thinks of the objects is test_cluster.py's job.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartlib import CHART, CI_VALUES, NAMESPACE, ROOT, Helm, Rendered, values_id
from fgo_common.config import load_cluster_config
from fgo_common.profiles.custom import custom_catalog

CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "DeviceClass", "RuntimeClass"}
NODE_AGENTS = {("DaemonSet", "fgo-device-plugin"), ("DaemonSet", "fgo-dra-plugin")}


# ----------------------------------------------------------------------------- matrix


def test_matrix_covers_the_acceptance_entries() -> None:
    names = {values_id(p) for p in CI_VALUES}
    # defaults, seed snippets, DRA only, KWOK + DRA, status-updater only, every value null.
    assert {"defaults", "seed-topology", "seed-prometheus", "seed-dra", "seed-kwok",
            "seed-readme", "kwok-dra", "status-updater-only", "nulls"} <= names  # fmt: skip


def test_nulls_file_nulls_every_top_level_value() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    nulls = yaml.safe_load((CHART / "ci" / "nulls-values.yaml").read_text())
    assert set(nulls) == set(defaults)
    assert all(v is None for v in nulls.values())


def test_lint(helm: Helm, ci_values: Path) -> None:
    result = helm.run("lint", str(CHART), "--strict", "--kube-version", helm.kube_version,
                      "--namespace", NAMESPACE, "-f", str(ci_values), check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_template_is_well_formed(helm: Helm, ci_values: Path) -> None:
    rendered = helm.render([ci_values])
    assert rendered.objects, "nothing rendered"
    seen: set[tuple[str, str]] = set()
    for obj in rendered.objects:
        kind, meta = obj["kind"], obj["metadata"]
        key = (kind, meta["name"])
        assert key not in seen, f"{kind}/{meta['name']} rendered twice"
        seen.add(key)
        labels = meta.get("labels", {})
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", key
        assert labels.get("app.kubernetes.io/instance") == "fgo", key
        if kind in CLUSTER_SCOPED:
            assert "namespace" not in meta, key
        else:
            # Namespace-agnostic: everything namespaced goes to the release namespace.
            assert meta.get("namespace") == NAMESPACE, key
    # (fake-gpu-operator in paths and label keys is our name, not a namespace)
    assert not re.search(r"(?<![-\w/])gpu-operator(?![-\w])", _namespaces_and_env(rendered))


def _namespaces_and_env(rendered: Rendered) -> str:
    """Every namespace field and env value: where a hard-coded namespace would hide."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "namespace" and isinstance(value, str):
                    found.append(value)
                elif key == "env" and isinstance(value, list):
                    found.extend(str(e.get("value", "")) for e in value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(rendered.objects)
    return " ".join(found)


def test_nulls_render_the_defaults(helm: Helm, defaults: Rendered) -> None:
    nulls = helm.render([CHART / "ci" / "nulls-values.yaml"])
    assert nulls.names() == defaults.names()
    # Same topology and the same containers, env included.
    for kind in ("Deployment", "DaemonSet", "ConfigMap"):
        for obj in defaults.of_kind(kind):
            twin = nulls.get(kind, obj["metadata"]["name"])
            assert twin.get("spec", twin.get("data")) == obj.get("spec", obj.get("data"))


# ----------------------------------------------------------------------------- topology


def test_topology_configmap_is_a_valid_cluster_config(helm: Helm, ci_values: Path) -> None:
    """The status-updater parses what the chart renders (fgo_common.config, every shape, with
    the custom profiles of the same ConfigMap)."""
    rendered = helm.render([ci_values])
    cms = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"] == "topology"]
    assert len(cms) == 1
    data = cms[0]["data"]
    config = load_cluster_config(data["topology.yml"], custom_catalog(data.get("profiles.yml")))
    assert config.pools, "no pools"


def test_default_topology_is_the_seeds(defaults: Rendered) -> None:
    config = load_cluster_config(defaults.get("ConfigMap", "topology")["data"]["topology.yml"])
    pool = config.pools["default"]
    assert [(g.product, g.count) for g in pool.groups] == [("Tesla K80", 2)]
    assert config.node_pool_label_key == "run.ai/simulated-gpu-node-pool"


def test_reference_legacy_pool_is_not_merged_with_the_default_pool(helm: Helm) -> None:
    """Helm merges maps: a default pool in values.yaml would leak keys into the user's."""
    rendered = helm.render([CHART / "ci" / "reference-values.yaml"])
    doc = yaml.safe_load(rendered.get("ConfigMap", "topology")["data"]["topology.yml"])
    assert doc["nodePools"] == {
        "default": {"gpuProduct": "Tesla-K80", "gpuCount": 2, "gpuMemory": 11441}
    }


def test_a_mock_pool_installs_and_runs_as_fake(helm: Helm) -> None:
    """gpu.backend: mock (the reference's nvml-mock) is accepted per pool: the chart renders,
    the other pool is intact, and the config warns about the mock pool only."""
    rendered = helm.render(
        sets=[
            "topology.nodePools.train.gpu.profile=h100",
            "topology.nodePools.mocked.gpu.backend=mock",
            "topology.nodePools.mocked.gpu.profile=gb300",
        ]
    )
    config = load_cluster_config(rendered.get("ConfigMap", "topology")["data"]["topology.yml"])
    assert {"train", "mocked"} <= set(config.pools)
    assert config.pools["mocked"].groups[0].product == "NVIDIA GB300"
    assert [w.split(":")[0] for w in config.warnings] == ["nodePools.mocked.gpu.backend"]


def test_cluster_key_replaces_topology(helm: Helm) -> None:
    rendered = helm.render([CHART / "ci" / "profiles-values.yaml"])
    data = rendered.get("ConfigMap", "topology")["data"]
    config = load_cluster_config(data["topology.yml"], custom_catalog(data["profiles.yml"]))
    assert set(config.pools) == {"default", "highend", "mixed", "legacy", "mig", "custom"}
    assert config.pools["highend"].gpu_count == 4
    custom = yaml.safe_load(data["profiles.yml"])
    assert custom["my-gpu"]["device_defaults"]["name"] == "NVIDIA Example GPU"
    # What the status-updater makes of the pool that uses it.
    pool = config.pools["custom"]
    assert pool.gpu_count == 2
    assert (pool.groups[0].profile.name, pool.groups[0].profile.memory_mib) == (
        "NVIDIA Example GPU",
        24576,
    )


def test_no_profiles_key_without_custom_profiles(defaults: Rendered) -> None:
    assert set(defaults.get("ConfigMap", "topology")["data"]) == {"topology.yml"}


# ----------------------------------------------------------------------------- components


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_component_toggles(helm: Helm) -> None:
    def workloads(values: str) -> set[str]:
        return {o["metadata"]["name"] for o in helm.render([CHART / "ci" / values]).workloads()}

    assert workloads("defaults-values.yaml") == {
        "fgo-status-updater", "fgo-device-plugin", "fgo-kwok-gpu-capacity",
        "nvidia-dcgm-exporter", "nvidia-dcgm-exporter-kwok",
    }  # fmt: skip
    assert workloads("status-updater-only-values.yaml") == {"fgo-status-updater"}
    assert workloads("kwok-dra-values.yaml") == {
        "fgo-status-updater", "fgo-kwok-dra-plugin",
        "nvidia-dcgm-exporter", "nvidia-dcgm-exporter-kwok",
    }  # fmt: skip
    seed_dra = workloads("seed-dra-values.yaml")
    assert "fgo-dra-plugin" in seed_dra and "fgo-device-plugin" not in seed_dra


def test_device_classes_only_with_dra(helm: Helm, defaults: Rendered) -> None:
    assert not defaults.of_kind("DeviceClass")
    dra = helm.render([CHART / "ci" / "kwok-dra-values.yaml"])
    classes = {c["metadata"]["name"]: c for c in dra.of_kind("DeviceClass")}
    assert set(classes) == {"gpu.nvidia.com", "mig.nvidia.com"}
    assert classes["gpu.nvidia.com"]["apiVersion"] == "resource.k8s.io/v1"
    assert "device.driver == 'gpu.nvidia.com'" in str(classes["gpu.nvidia.com"]["spec"])
    off = helm.render([CHART / "ci" / "kwok-dra-values.yaml"], ["deviceClasses.enabled=false"])
    assert not off.of_kind("DeviceClass")


def test_per_component_knobs(helm: Helm) -> None:
    components = {
        "statusUpdater": ("Deployment", "fgo-status-updater"),
        "devicePlugin": ("DaemonSet", "fgo-device-plugin"),
        "kwokGpuDevicePlugin": ("Deployment", "fgo-kwok-gpu-capacity"),
        "draPlugin": ("DaemonSet", "fgo-dra-plugin"),
        "kwokDraPlugin": ("Deployment", "fgo-kwok-dra-plugin"),
        "statusExporter": ("DaemonSet", "nvidia-dcgm-exporter"),
        "statusExporter.kwok": ("Deployment", "nvidia-dcgm-exporter-kwok"),
    }
    sets = ["draPlugin.enabled=true", "kwokDraPlugin.enabled=true", "image.registry=reg.example/x",
            "image.tag=t1"]  # fmt: skip
    for key in components:
        sets += [
            f"{key}.nodeSelector.zone=z-{key}",
            f"{key}.tolerations[0].key=t-{key}",
            f"{key}.tolerations[0].operator=Exists",
            f"{key}.priorityClassName=pc-{key}",
            f"{key}.podAnnotations.a=b-{key}",
            f"{key}.resources.limits.memory=77Mi",
            f"{key}.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight=1",
            f"{key}.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].podAffinityTerm.topologyKey=k-{key}",
        ]
        if key != "statusExporter.kwok":
            sets += [f"{key}.image.tag=tag-{key}", f"{key}.extraEnv[0].name=EXTRA",
                     f"{key}.extraEnv[0].value=v-{key}"]  # fmt: skip
    rendered = helm.render(sets=sets)
    for key, (kind, name) in components.items():
        pod = rendered.get(kind, name)["spec"]["template"]
        spec = pod["spec"]
        assert spec["nodeSelector"]["zone"] == f"z-{key}", key
        assert spec["tolerations"] == [{"key": f"t-{key}", "operator": "Exists"}], key
        assert spec["priorityClassName"] == f"pc-{key}", key
        assert pod["metadata"]["annotations"] == {"a": f"b-{key}"}, key
        assert spec["affinity"]["podAntiAffinity"], key
        main = spec["containers"][0]
        assert main["resources"]["limits"]["memory"] == "77Mi", key
        owner = key.split(".")[0]
        assert (
            main["image"]
            == f"reg.example/x/{main['image'].split('/')[-1].split(':')[0]}:tag-{owner}"
        )
        if key != "statusExporter.kwok":
            assert {"name": "EXTRA", "value": f"v-{key}"} in main["env"], key


def test_image_defaults(defaults: Rendered) -> None:
    images = {c["image"] for w in defaults.workloads() for c in _containers(w)}
    assert images == {
        "ghcr.io/fake-gpu-operator/status-updater:0.1.0",
        "ghcr.io/fake-gpu-operator/device-plugin:0.1.0",
        "ghcr.io/fake-gpu-operator/status-exporter:0.1.0",
    }


def test_full_image_reference_is_used_as_is(helm: Helm) -> None:
    rendered = helm.render(sets=["statusUpdater.image.repository=my.reg/team/su"])
    image = rendered.get("Deployment", "fgo-status-updater")["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert image == "my.reg/team/su:0.1.0"


def test_node_agents_are_restricted_to_simulated_pools(defaults: Rendered, helm: Helm) -> None:
    for name in ("fgo-device-plugin", "nvidia-dcgm-exporter"):
        terms = defaults.get("DaemonSet", name)["spec"]["template"]["spec"]["affinity"][
            "nodeAffinity"
        ]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms == [
            {"matchExpressions": [{"key": "run.ai/simulated-gpu-node-pool", "operator": "Exists"}]}
        ]
    # A user's required terms are kept, each one gets the pool requirement ANDed.
    rendered = helm.render(
        sets=[
            "topology.nodePoolLabelKey=example.com/pool",
            "devicePlugin.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=zone",
            "devicePlugin.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
            "devicePlugin.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[1].matchFields[0].key=metadata.name",
            "devicePlugin.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[1].matchFields[0].operator=In",
            "devicePlugin.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[1].matchFields[0].values[0]=n1",
        ]
    )
    terms = rendered.get("DaemonSet", "fgo-device-plugin")["spec"]["template"]["spec"]["affinity"][
        "nodeAffinity"
    ]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    pool = {"key": "example.com/pool", "operator": "Exists"}
    assert terms == [
        {"matchExpressions": [{"key": "zone", "operator": "Exists"}, pool]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}],
         "matchExpressions": [pool]},
    ]  # fmt: skip
    # Central Deployments are not node agents: no such affinity.
    spec = defaults.get("Deployment", "fgo-status-updater")["spec"]["template"]["spec"]
    assert "affinity" not in spec


def test_coexistence_values(helm: Helm) -> None:
    rendered = helm.render([CHART / "ci" / "coexistence-values.yaml"])
    assert not rendered.of_kind("RuntimeClass") and not rendered.of_kind("DeviceClass")
    for name in ("fgo-device-plugin", "fgo-dra-plugin", "nvidia-dcgm-exporter"):
        spec = rendered.get("DaemonSet", name)["spec"]["template"]["spec"]
        assert "nodeSelector" not in spec, name
        expr = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert expr["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == (
            "fake-gpu-operator/simulated-pool"
        )
    env = _env(rendered.get("DaemonSet", "fgo-device-plugin"))
    assert env["VISIBLE_DEVICES_ENV_NAME"] == "FGO_VISIBLE_DEVICES"
    assert _env(rendered.get("Deployment", "fgo-status-updater"))["DISABLE_NODE_LABELING"] == "true"


def _env(workload: dict[str, Any], container: int = 0) -> dict[str, Any]:
    c = workload["spec"]["template"]["spec"]["containers"][container]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def test_values_reach_the_services(helm: Helm) -> None:
    rendered = helm.render(
        sets=[
            "prometheus.url=http://prom.example:9090",
            "environment.resourceReservationNamespace=resv",
            "statusUpdater.defaultUtilization=10-20",
            "statusUpdater.migReconfigureSeconds=0.5",
            "logLevel=DEBUG",
            "statusExporter.port=9500",
            "statusExporter.extraMetrics={DCGM_FI_PROF_SM_ACTIVE,DCGM_FI_DEV_FB_TOTAL,"
            "DCGM_EXP_XID_ERRORS_COUNT}",
            "statusExporter.hostnameLabel=hostname",
            "telemetrySeed=7",
            "draPlugin.enabled=true",
        ]
    )
    su = _env(rendered.get("Deployment", "fgo-status-updater"))
    assert su["PROMETHEUS_URL"] == "http://prom.example:9090"
    assert su["RESOURCE_RESERVATION_NAMESPACE"] == "resv"
    assert su["DEFAULT_GPU_UTILIZATION"] == "10-20"
    assert su["MIG_RECONFIGURE_SECONDS"] == "0.5"
    assert su["LOG_LEVEL"] == "DEBUG"
    assert su["TOPOLOGY_CM_NAMESPACE"] == NAMESPACE
    exporter = rendered.get("Deployment", "nvidia-dcgm-exporter-kwok")
    env = _env(exporter)
    assert env["METRICS_PORT"] == "9500"
    assert env["EXPORTER_EXTRA_METRICS"] == (
        "DCGM_FI_PROF_SM_ACTIVE,DCGM_FI_DEV_FB_TOTAL,DCGM_EXP_XID_ERRORS_COUNT"
    )
    assert env["HOSTNAME_LABEL"] == "hostname"
    # nvidia-smi in pods gets the seed from the node plugin that allocated the GPU (device
    # plugin or DRA plugin): all must agree with the exporter.
    assert env["FGO_SEED"] == "7"
    for agent in ("fgo-device-plugin", "fgo-dra-plugin"):
        assert _env(rendered.get("DaemonSet", agent))["FGO_SEED"] == "7", agent
    ports = exporter["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "metrics", "containerPort": 9500} in ports
    svc = rendered.get("Service", "nvidia-dcgm-exporter-kwok")
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == "9500"
    assert svc["spec"]["ports"][0]["port"] == 9500


def test_device_naming_reaches_both_dra_publishers(helm: Helm) -> None:
    """draPlugin.deviceNaming: one value, so the kubelet plugin and the kwok-dra-plugin always
    publish the same names (the status-updater reads either form and needs no setting)."""
    on = ["draPlugin.enabled=true", "kwokDraPlugin.enabled=true"]
    for sets, expected in (
        (on, "nvidia"),
        ([*on, "draPlugin.deviceNaming=reference"], "reference"),
    ):
        rendered = helm.render(sets=sets)
        assert _env(rendered.get("DaemonSet", "fgo-dra-plugin"))["DEVICE_NAMING"] == expected
        assert _env(rendered.get("Deployment", "fgo-kwok-dra-plugin"))["DEVICE_NAMING"] == expected
    assert "deviceNaming" in helm.render_error(sets=[*on, "draPlugin.deviceNaming=uuid"])


def test_dra_feature_gates_reach_the_plugin_and_unknown_gates_are_refused(helm: Helm) -> None:
    on = ["draPlugin.enabled=true"]
    env = _env(helm.render(sets=on).get("DaemonSet", "fgo-dra-plugin"))
    assert env["FEATURE_GATES"] == "MPSSupport=true,TimeSlicingSettings=true"
    env = _env(
        helm.render(sets=[*on, "draPlugin.featureGates.MPSSupport=false"]).get(
            "DaemonSet", "fgo-dra-plugin"
        )
    )
    assert env["FEATURE_GATES"] == "MPSSupport=false,TimeSlicingSettings=true"
    error = helm.render_error(sets=[*on, "draPlugin.featureGates.DynamicMIG=true"])
    assert "featureGates" in error and "DynamicMIG" in error


def test_service_monitor(helm: Helm, everything: Rendered) -> None:
    monitors = {m["metadata"]["name"]: m for m in everything.of_kind("ServiceMonitor")}
    assert set(monitors) == {"nvidia-dcgm-exporter", "nvidia-dcgm-exporter-kwok"}
    endpoint = monitors["nvidia-dcgm-exporter-kwok"]["spec"]["endpoints"][0]
    assert endpoint["port"] == "gpu-metrics" and endpoint["honorLabels"] is True
    error = helm.render_error(sets=["statusExporter.serviceMonitor.enabled=true"])
    assert "monitoring.coreos.com/v1" in error and "CRDs" in error


# ----------------------------------------------------------------------------- security


def test_central_components_meet_psa_restricted(everything: Rendered) -> None:
    for workload in everything.workloads():
        if (workload["kind"], workload["metadata"]["name"]) in NODE_AGENTS:
            continue
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in _containers(workload):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, c["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]


def test_node_agents_say_why_they_run_as_root(everything: Rendered) -> None:
    for kind, name in NODE_AGENTS:
        workload = everything.get(kind, name)
        for c in _containers(workload):
            sc = c["securityContext"]
            assert sc["runAsUser"] == 0 and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}, "no capability is needed"
            assert "privileged" not in sc
    text = everything.text
    assert text.count("# Root (uid 0)") >= 4, "each root container carries a comment saying why"


def test_every_workload_has_probes_and_resources(everything: Rendered) -> None:
    for workload in everything.workloads():
        for c in workload["spec"]["template"]["spec"]["containers"]:
            assert c.get("livenessProbe") and c.get("readinessProbe"), workload["metadata"]["name"]
            assert c["resources"].get("limits") and c["resources"].get("requests")


def test_rbac_has_no_wildcards_and_every_rule_says_why(everything: Rendered) -> None:
    from rbac import rbac_rules

    rules = rbac_rules(everything.text)
    assert rules, "no RBAC rendered"
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.rule.get(field, []), rule
        assert rule.why, f"{rule.role} rule {rule.rule} has no comment saying why"
    roles = {r.role for r in rules}
    assert {"ClusterRole/fgo-fgo-status-updater", "Role/fgo-status-updater",
            "Role/fgo-topology-reader"} <= roles  # fmt: skip


def test_every_service_account_is_bound(everything: Rendered) -> None:
    accounts = {sa["metadata"]["name"] for sa in everything.of_kind("ServiceAccount")}
    used = {w["spec"]["template"]["spec"]["serviceAccountName"] for w in everything.workloads()}
    assert accounts == used
    subjects = {
        s["name"]
        for b in everything.of_kind("ClusterRoleBinding") + everything.of_kind("RoleBinding")
        for s in b["subjects"]
    }
    assert accounts == subjects
    roles = {r["metadata"]["name"] for r in everything.of_kind("Role")}
    for binding in everything.of_kind("RoleBinding"):
        assert binding["roleRef"]["name"] in roles


def test_tokens_are_mounted_only_where_a_pod_asks(everything: Rendered) -> None:
    for sa in everything.of_kind("ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False, sa["metadata"]["name"]
    for workload in everything.workloads():
        spec = workload["spec"]["template"]["spec"]
        # Every service of ours calls the API: each pod says so explicitly.
        assert spec["automountServiceAccountToken"] is True, workload["metadata"]["name"]


def test_topology_reader_role_only_when_someone_reads(helm: Helm) -> None:
    alone = helm.render([CHART / "ci" / "status-updater-only-values.yaml"])
    assert [r["metadata"]["name"] for r in alone.of_kind("Role")] == ["fgo-status-updater"]


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["devicePlugin.enabeld=true"], ["/devicePlugin", "enabeld", "not allowed"]),
        (["statusExporter.port=http"], ["/statusExporter/port", "integer"]),
        (["topology.migStrategy=half"], ["/topology/migStrategy", "one of"]),
        (["topology.nodePools.a.gpus[0].type=T4", "topology.nodePools.a.gpus[0].count=100"],
         ["/topology/nodePools/a/gpus/0/count", "64"]),
        (["image.pullPolicy=Sometimes"], ["/image/pullPolicy"]),
        (["devicePlugin.visibleDevicesEnvName=A-B"], ["/devicePlugin/visibleDevicesEnvName"]),
        (["customProfiles.My_GPU.device_count=1"], ["My_GPU", "does not match pattern"]),
        (["statusUpdater.defaultUtilization=lots"], ["/statusUpdater/defaultUtilization"]),
        (["statusUpdater.migReconfigureSeconds=-1"], ["/statusUpdater/migReconfigureSeconds"]),
        (["statusUpdater.migReconfigureSeconds=soon"], ["/statusUpdater/migReconfigureSeconds"]),
    ],
)  # fmt: skip
def test_schema_rejects_bad_values(helm: Helm, sets: list[str], expected: list[str]) -> None:
    error = helm.render_error(sets=sets)
    assert "values don't meet the specifications of the schema" in error
    for fragment in expected:
        assert fragment in error, error


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["statusUpdater.enabled=false"], "statusUpdater.enabled=false but other components"),
        (["topology.nodePools.default.gpus[0].type=T4",
          "topology.nodePools.default.gpuProduct=T4", "topology.nodePools.default.gpuCount=1"],
         "topology.nodePools.default: mixes the shapes gpus (seed) and gpuProduct/gpuCount/gpuMemory (legacy)"),
        (["topology.nodePools.x.numa.zones=1"], "topology.nodePools.x: no GPUs"),
        (["topology.nodePools.x.gpus[0].type=T4", "topology.nodePools.x.gpus[0].count=40",
          "topology.nodePools.x.gpus[1].type=L4", "topology.nodePools.x.gpus[1].count=40"],
         "topology.nodePools.x.gpus: 80 GPUs per node; at most 64"),
        (["restrictToSimulatedPools=false", "devicePlugin.nodeSelector=null"],
         "devicePlugin: with restrictToSimulatedPools=false"),
        (["statusExporter.port=8080"], "statusExporter.port=8080 collides"),
        (["draPlugin.enabled=true", "draPlugin.healthcheckPort=8080"], "draPlugin.healthcheckPort=8080"),
        (["cluster.migStrategy=none"], "cluster.nodePools: at least one node pool is required"),
    ],
)  # fmt: skip
def test_validation_template_fails_with_a_clear_message(
    helm: Helm, sets: list[str], expected: str
) -> None:
    error = helm.render_error(sets=sets)
    assert "fake-gpu-operator: invalid values:" in error
    assert expected in error, error


def test_validation_reports_every_problem_at_once(helm: Helm) -> None:
    error = helm.render_error(sets=["statusUpdater.enabled=false", "statusExporter.port=8080"])
    assert error.count("\n  - ") == 2


def test_chart_refuses_kubernetes_without_dra_v1_era_apis(helm: Helm) -> None:
    # The API-group check of the validation template is for clusters that switched
    # resource.k8s.io off, which `helm template` cannot simulate (its API list always has it);
    # older clusters are refused by Chart.yaml's kubeVersion.
    result = helm.run("template", "fgo", str(CHART), "--kube-version", "1.30.0", check=False)
    assert result.returncode != 0 and "kubeVersion" in result.stderr


# ----------------------------------------------------------------------------- values/schema


def test_schema_is_generated_and_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "gen-chart.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _schema() -> dict[str, Any]:
    import json

    return dict(json.loads((CHART / "values.schema.json").read_text()))


def test_every_value_is_in_the_schema_with_a_description() -> None:
    schema = _schema()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        assert node.get("description"), f"{path}: no description in the schema"
        if isinstance(value, dict) and "properties" in node:
            for key, sub in value.items():
                assert key in node["properties"], f"{path}.{key}: not in the schema"
                walk(sub, node["properties"][key], f"{path}.{key}")

    for key, value in values.items():
        assert key in schema["properties"], f"{key}: not in the schema"
        walk(value, schema["properties"][key], key)


def test_every_schema_object_rejects_unknown_keys_and_is_described() -> None:
    def walk(node: dict[str, Any], path: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: accepts unknown keys"
            for key, sub in node["properties"].items():
                assert sub.get("description"), f"{path}.{key}: no description"
                walk(sub, f"{path}.{key}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(_schema(), "")


def test_reference_keys_are_accepted_and_reported(helm: Helm) -> None:
    notes = helm.notes([CHART / "ci" / "reference-values.yaml"])
    assert "accepted but have no effect here:" in notes
    assert "  - migFaker: " in notes and "  - topologyServer: " in notes


# ----------------------------------------------------------------------------- NOTES


def test_notes_tell_what_to_do_next(helm: Helm) -> None:
    notes = helm.notes()
    assert f"namespace {NAMESPACE}" in notes
    assert "kubectl label node <node-name> run.ai/simulated-gpu-node-pool=default" in notes
    assert "nvidia.com/gpu: 1" in notes and "gpu.nvidia.com" not in notes
    assert "svc/nvidia-dcgm-exporter-kwok 9400" in notes
    assert "pod-security.kubernetes.io/enforce=privileged" in notes
    dra = helm.notes([CHART / "ci" / "kwok-dra-values.yaml"])
    assert "deviceClassName: gpu.nvidia.com" in dra and "nvidia.com/gpu: 1" not in dra
    assert "kubectl get resourceslices" in dra
    assert "pod-security" in dra, "the per-node exporter is still a DaemonSet"
    alone = helm.notes([CHART / "ci" / "status-updater-only-values.yaml"])
    assert "pod-security" not in alone and "Metrics" not in alone


def test_notes_render_for_every_matrix_entry(helm: Helm, ci_values: Path) -> None:
    notes = helm.notes([ci_values])
    assert "Next steps" in notes
    assert not re.search(r"<no value>|%!", notes), notes


def test_node_agents_mount_the_nvidia_smi_bundle_the_init_container_installs(
    helm: Helm,
) -> None:
    """Both node plugins point GPU containers at the same launcher and bundle, under the host
    directory the install-nvidia-smi init container writes to."""
    rendered = helm.render(sets=["draPlugin.enabled=true"])
    paths = {}
    for agent in ("fgo-device-plugin", "fgo-dra-plugin"):
        ds = rendered.get("DaemonSet", agent)
        env = _env(ds)
        paths[agent] = (env["NVIDIA_SMI_HOST_PATH"], env["NVIDIA_SMI_BUNDLE_HOST_DIR"])
        init = ds["spec"]["template"]["spec"]["initContainers"][0]
        host_dir = init["command"][1].removeprefix("/host")
        assert env["NVIDIA_SMI_BUNDLE_HOST_DIR"].startswith(host_dir + "/"), agent
        assert env["NVIDIA_SMI_HOST_PATH"].startswith(host_dir + "/"), agent
    assert paths["fgo-device-plugin"] == paths["fgo-dra-plugin"]


def test_per_node_targets_render_a_scrape_config_for_the_kwok_exporter(helm: Helm) -> None:
    sets = ["statusExporter.serviceMonitor.enabled=true", "statusExporter.kwok.perNodeTargets=true"]
    apis = ["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"]
    rendered = helm.render(
        sets=sets, extra=[*apis, "--api-versions", "monitoring.coreos.com/v1alpha1/ScrapeConfig"]
    )
    # The per-node exporter keeps its ServiceMonitor; the KWOK one is discovered per node.
    monitors = {m["metadata"]["name"] for m in rendered.of_kind("ServiceMonitor")}
    assert monitors == {"nvidia-dcgm-exporter"}
    (scrape,) = rendered.of_kind("ScrapeConfig")
    assert scrape["apiVersion"] == "monitoring.coreos.com/v1alpha1"
    assert scrape["metadata"]["name"] == "nvidia-dcgm-exporter-kwok"
    (sd,) = scrape["spec"]["httpSDConfigs"]
    namespace = scrape["metadata"]["namespace"]
    assert sd["url"] == f"http://nvidia-dcgm-exporter-kwok.{namespace}.svc:9400/http_sd"
    assert scrape["spec"]["honorLabels"] is True and scrape["spec"]["scrapeInterval"] == "15s"
    service = rendered.get("Service", "nvidia-dcgm-exporter-kwok")
    assert service["spec"]["ports"][0]["port"] == 9400
    error = helm.render_error(sets=sets, extra=apis)
    assert "ScrapeConfig" in error and "monitoring.coreos.com/v1alpha1" in error
    # Without monitors the switch renders nothing more (the endpoint is served either way).
    assert not helm.render(sets=["statusExporter.kwok.perNodeTargets=true"]).of_kind("ScrapeConfig")
