"""The chart's ComputeDomain switch (computeDomainDraPlugin.enabled, docs/computedomains.md):
NVIDIA's CRD and DeviceClasses, the compute-domain-controller's Deployment and RBAC."""

from __future__ import annotations

from chartlib import Helm, Rendered
from fgo_common import computedomain as cdn

CRD = "computedomains.resource.nvidia.com"
ON = ["computeDomainDraPlugin.enabled=true"]
CHANNEL_CLASS = "compute-domain-default-channel.nvidia.com"
DAEMON_CLASS = "compute-domain-daemon.nvidia.com"


def _controller_env(rendered: Rendered) -> dict[str, str]:
    deploy = rendered.get("Deployment", "fgo-compute-domain-controller")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def _rules(rendered: Rendered) -> list[dict[str, object]]:
    role = next(
        r
        for r in rendered.of_kind("ClusterRole")
        if "compute-domain-controller" in r["metadata"]["name"]
    )
    return list(role["rules"])


def test_off_by_default(helm: Helm) -> None:
    rendered = helm.render()
    names = rendered.names()
    assert f"CustomResourceDefinition/{CRD}" not in names
    assert f"DeviceClass/{CHANNEL_CLASS}" not in names
    assert not [n for n in names if "compute-domain" in n]


def test_crd_is_nvidias_schema(helm: Helm) -> None:
    crd = helm.render(sets=ON).get("CustomResourceDefinition", CRD)
    assert crd["spec"]["group"] == "resource.nvidia.com"
    assert crd["spec"]["names"]["kind"] == "ComputeDomain"
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1beta1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    spec = schema["spec"]
    assert sorted(spec["required"]) == ["channel", "numNodes"]
    assert spec["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    assert spec["properties"]["numNodes"]["type"] == "integer"
    assert spec["properties"]["numNodes"]["minimum"] == 0
    channel = spec["properties"]["channel"]
    assert channel["required"] == ["resourceClaimTemplate"]
    mode = channel["properties"]["allocationMode"]
    assert sorted(mode["enum"]) == ["All", "Single"] and mode["default"] == "Single"
    assert channel["properties"]["resourceClaimTemplate"]["required"] == ["name"]
    status = schema["status"]
    assert status["required"] == ["status"]
    assert status["properties"]["status"]["enum"] == ["Ready", "NotReady"]
    nodes = status["properties"]["nodes"]
    assert nodes["x-kubernetes-list-type"] == "map"
    assert nodes["x-kubernetes-list-map-keys"] == ["name"]
    item = nodes["items"]
    assert sorted(item["required"]) == ["cliqueID", "ipAddress", "name"]
    assert set(item["properties"]) == {"name", "ipAddress", "cliqueID", "index", "status"}
    assert item["properties"]["index"]["type"] == "integer"
    assert item["properties"]["status"]["enum"] == ["Ready", "NotReady", "Failed"]
    # Deleting the CRD would delete every ComputeDomain: uninstall keeps it.
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_device_classes_carry_nvidias_cel(helm: Helm) -> None:
    rendered = helm.render(sets=ON)
    channel = rendered.get("DeviceClass", CHANNEL_CLASS)
    daemon = rendered.get("DeviceClass", DAEMON_CLASS)
    assert channel["spec"]["selectors"] == [
        {
            "cel": {
                "expression": "device.driver == 'compute-domain.nvidia.com' && "
                "device.attributes['compute-domain.nvidia.com'].type == 'channel' && "
                "device.attributes['compute-domain.nvidia.com'].id == 0"
            }
        }
    ]
    assert daemon["spec"]["selectors"] == [
        {
            "cel": {
                "expression": "device.driver == 'compute-domain.nvidia.com' && "
                "device.attributes['compute-domain.nvidia.com'].type == 'daemon'"
            }
        }
    ]
    # The same selectors the code (and the local cluster's tests) use.
    for expected in cdn.device_classes():
        got = rendered.get("DeviceClass", expected["metadata"]["name"])
        assert got["spec"] == expected["spec"]
    # No GPU DRA plugin asked for: the gpu.nvidia.com classes stay out.
    assert "DeviceClass/gpu.nvidia.com" not in rendered.names()


def test_controller_deployment_env_and_rbac(helm: Helm) -> None:
    rendered = helm.render(sets=ON)
    env = _controller_env(rendered)
    assert env["KWOK_CHANNELS"] == "true"
    assert env["HEALTH_PORT"] == "8080"
    deploy = rendered.get("Deployment", "fgo-compute-domain-controller")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "fgo-compute-domain-controller"
    assert pod["containers"][0]["image"].rsplit(":", 1)[0].endswith("/compute-domain-controller")
    rules = _rules(rendered)
    by_resource = {r: set(rule["verbs"]) for rule in rules for r in rule["resources"]}
    assert by_resource["computedomains"] == {"list", "watch", "patch"}
    assert by_resource["computedomains/status"] == {"patch"}
    assert by_resource["resourceclaimtemplates"] >= {"create", "patch", "delete"}
    assert by_resource["resourceclaims"] == {"list", "watch"}
    assert "create" in by_resource["resourceslices"]
    assert by_resource["events"] == {"create"}


def test_kwok_channels_off_drops_slice_rights(helm: Helm) -> None:
    rendered = helm.render(sets=[*ON, "computeDomainDraPlugin.kwokChannels=false"])
    assert _controller_env(rendered)["KWOK_CHANNELS"] == "false"
    assert "resourceslices" not in {r for rule in _rules(rendered) for r in rule["resources"]}


def test_replicas_elect_a_leader(helm: Helm) -> None:
    rendered = helm.render(sets=[*ON, "computeDomainDraPlugin.replicas=2"])
    env = _controller_env(rendered)
    assert env.get("LEADER_ELECTION") == "true"
    assert env["LEASE_NAME"] == "fgo-compute-domain-controller"


def test_schema_refuses_unknown_key(helm: Helm) -> None:
    error = helm.render_error(sets=[*ON, "computeDomainDraPlugin.numNodes=2"])
    assert "numNodes" in error


NVL72 = [
    "topology.nodePools.nvl72.gpus[0].type=gb200",
    "topology.nodePools.nvl72.gpus[0].count=4",
]


def test_pool_nvlink_domain_reaches_the_status_updater(helm: Helm) -> None:
    from fgo_common.config import load_cluster_config

    rendered = helm.render(sets=[*NVL72, "topology.nodePools.nvl72.nvlinkDomain.cliqueSize=18"])
    config = load_cluster_config(rendered.get("ConfigMap", "topology")["data"]["topology.yml"])
    domain = config.pools["nvl72"].nvlink_domain
    assert domain is not None and domain.clique_size == 18


def test_pool_nvlink_domain_refused_by_the_schema(helm: Helm) -> None:
    error = helm.render_error(sets=[*NVL72, "topology.nodePools.nvl72.nvlinkDomain.cliqueSize=0"])
    assert "nvlinkDomain" in error and "cliqueSize" in error
    error = helm.render_error(sets=[*NVL72, "topology.nodePools.nvl72.nvlinkDomain.size=4"])
    assert "nvlinkDomain" in error


def test_reference_image_refused_when_enabled(helm: Helm) -> None:
    reference = "computeDomainDraPlugin.image.repository=ghcr.io/run-ai/fake-gpu-operator/compute-domain-dra-plugin"
    error = helm.render_error(sets=[*ON, reference])
    assert "computeDomainDraPlugin.image.repository" in error
    assert "compute-domain-controller" in error
    # Disabled (the reference's default), the key is accepted and nothing is rendered.
    assert "compute-domain" not in " ".join(helm.render(sets=[reference]).names())


def test_kubelet_plugin_daemonset_for_real_nodes(helm: Helm) -> None:
    rendered = helm.render(sets=ON)
    ds = rendered.get("DaemonSet", "fgo-compute-domain-dra-plugin")
    pod = ds["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "fgo-compute-domain-dra-plugin"
    # the reference's selector label, which the status-updater sets on real pool nodes
    assert pod["nodeSelector"] == {"nvidia.com/gpu.deploy.compute-domain-dra-plugin": "true"}
    (container,) = pod["containers"]
    assert container["image"].rsplit(":", 1)[0].endswith("/dra-plugin")
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    assert env["DRIVER_MODE"] == "compute-domain"
    assert env["KUBELET_PLUGINS_DIRECTORY_PATH"] == "/var/lib/kubelet/plugins"
    assert env["CDI_ROOT"] == "/var/run/cdi"
    assert container["livenessProbe"]["grpc"] == {"port": 51516, "service": "liveness"}
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert labels["app"] == labels["component"] == "compute-domain-dra-plugin"
    role = rendered.get("ClusterRole", "fgo-fgo-compute-domain-dra-plugin")
    by_resource = {r: set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"]}
    assert by_resource == {
        "resourceclaims": {"get"},
        "resourceslices": {"list", "watch", "create", "patch", "delete"},
        "nodes": {"list", "watch"},
    }


def test_kubelet_plugin_follows_draplugin_paths_and_can_be_off(helm: Helm) -> None:
    rendered = helm.render(
        sets=[
            *ON,
            "draPlugin.cdiRoot=/etc/cdi",
            "computeDomainDraPlugin.kubeletPlugin.healthcheckPort=9000",
        ]
    )
    container = rendered.get("DaemonSet", "fgo-compute-domain-dra-plugin")["spec"]["template"][
        "spec"
    ]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    assert env["CDI_ROOT"] == "/etc/cdi" and env["HEALTHCHECK_PORT"] == "9000"
    off = helm.render(sets=[*ON, "computeDomainDraPlugin.kubeletPlugin.enabled=false"])
    assert "DaemonSet/fgo-compute-domain-dra-plugin" not in off.names()
    assert "Deployment/fgo-compute-domain-controller" in off.names()
