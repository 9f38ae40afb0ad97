"""The import facade and constants agree with the generated descriptors and kubelet rules."""

from __future__ import annotations

import re

import pytest
from fgo_kubelet_api import deviceplugin_v1beta1 as dp
from fgo_kubelet_api import dra, dra_v1, dra_v1beta1
from fgo_kubelet_api import pluginregistration_v1 as reg
from fgo_testkit.kubelet import is_extended_resource_name


def test_grpc_service_names_come_from_the_protos() -> None:
    assert dp.DEVICE_PLUGIN_SERVICE == "v1beta1.DevicePlugin"
    assert dp.REGISTRATION_SERVICE == "v1beta1.Registration"
    assert dra_v1.GRPC_SERVICE_NAME == "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"
    assert dra_v1beta1.GRPC_SERVICE_NAME == "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin"
    assert reg.REGISTRATION_SERVICE == "pluginregistration.Registration"


def test_supported_versions_strings_are_short_package_dot_service() -> None:
    # The kubelet matches "<last package element>.<service>", not the full gRPC name.
    for module in (dra_v1, dra_v1beta1):
        package_tail = module.pb2.DESCRIPTOR.package.rsplit(".", 1)[-1]
        assert f"{package_tail}.DRAPlugin" == module.DRA_PLUGIN_SERVICE
    assert dra.SERVICES_SUPPORTED_BY_KUBELET == ("v1.DRAPlugin", "v1beta1.DRAPlugin")


def test_list_and_watch_is_the_only_streaming_method() -> None:
    service = dp.pb2.DESCRIPTOR.services_by_name["DevicePlugin"]
    streaming = {m.name for m in service.methods if m.server_streaming or m.client_streaming}
    assert streaming == {"ListAndWatch"}


def test_v1beta1_and_v1_dra_messages_are_wire_compatible() -> None:
    v1 = dra_v1.pb2.NodePrepareResourcesResponse()
    v1.claims["uid-1"].devices.add(
        request_names=["gpu"], pool_name="node-a", device_name="gpu-0", cdi_device_ids=["x=y"]
    )
    beta = dra_v1beta1.pb2.NodePrepareResourcesResponse.FromString(v1.SerializeToString())
    assert beta.claims["uid-1"].devices[0].device_name == "gpu-0"
    assert list(beta.claims["uid-1"].devices[0].cdi_device_ids) == ["x=y"]


def test_share_id_is_proto3_optional_in_v1_only() -> None:
    device = dra_v1.pb2.Device()
    assert not device.HasField("share_id")
    device.share_id = ""
    assert device.HasField("share_id")
    assert "share_id" not in dra_v1beta1.pb2.Device.DESCRIPTOR.fields_by_name


@pytest.mark.parametrize(
    ("plugin", "kubelet", "expected"),
    [
        (["v1.DRAPlugin", "v1beta1.DRAPlugin"], dra.SERVICES_SUPPORTED_BY_KUBELET, "v1.DRAPlugin"),
        # The plugin's order decides, as in the kubelet's loop.
        (
            ["v1beta1.DRAPlugin", "v1.DRAPlugin"],
            dra.SERVICES_SUPPORTED_BY_KUBELET,
            "v1beta1.DRAPlugin",
        ),
        (["v2.DRAPlugin", "v1.DRAPlugin"], dra.SERVICES_SUPPORTED_BY_KUBELET, "v1.DRAPlugin"),
        (["v1.DRAPlugin", "v1beta1.DRAPlugin"], ("v1beta1.DRAPlugin",), "v1beta1.DRAPlugin"),
    ],
)
def test_choose_service(plugin: list[str], kubelet: tuple[str, ...], expected: str) -> None:
    assert dra.choose_service(plugin, kubelet) == expected


def test_choose_service_rejects_empty_and_unknown() -> None:
    with pytest.raises(ValueError, match="empty list"):
        dra.choose_service([])
    with pytest.raises(ValueError, match=re.escape('by the plugin (["1.0.0"]) are')):
        dra.choose_service(["1.0.0"])


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("nvidia.com/gpu", True),
        ("nvidia.com/mig-1g.10gb", True),
        ("example.com/a_b", True),
        ("gpu", False),  # native (no domain)
        ("kubernetes.io/gpu", False),
        ("requests.nvidia.com/gpu", False),
        ("Nvidia.com/gpu", False),  # prefix must be a lower-case DNS subdomain
        ("nvidia.com/-gpu", False),
        ("nvidia.com/" + "g" * 64, False),
        ("a/b/c", False),
    ],
)
def test_is_extended_resource_name(name: str, ok: bool) -> None:
    assert is_extended_resource_name(name) is ok


def test_registration_socket_name() -> None:
    assert reg.registration_socket_name("gpu.nvidia.com") == "gpu.nvidia.com-reg.sock"
    assert (reg.CSI_PLUGIN, reg.DEVICE_PLUGIN, reg.DRA_PLUGIN) == (
        "CSIPlugin",
        "DevicePlugin",
        "DRAPlugin",
    )
