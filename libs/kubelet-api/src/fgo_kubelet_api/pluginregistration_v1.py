"""Plugin registration API v1 (kubelet plugin watcher): generated code plus constants.

Use as ``from fgo_kubelet_api import pluginregistration_v1 as reg`` then
``reg.pb2.PluginInfo(type=reg.DRA_PLUGIN, ...)``. The plugin type strings are Go constants in
k8s.io/kubelet/pkg/apis/pluginregistration/v1/constants.go; the paths are kubelet defaults and
the file-name conventions of k8s.io/dynamic-resource-allocation/kubeletplugin.
"""

from __future__ import annotations

from typing import Final

from fgo_kubelet_api.gen.pluginregistration.v1 import api_pb2 as pb2
from fgo_kubelet_api.gen.pluginregistration.v1 import api_pb2_grpc as pb2_grpc

__all__ = [
    "CSI_PLUGIN",
    "DEVICE_PLUGIN",
    "DRA_PLUGIN",
    "DRA_SOCKET_NAME",
    "KUBELET_PLUGINS_DIR",
    "KUBELET_PLUGINS_REGISTRY_DIR",
    "REGISTRATION_SERVICE",
    "pb2",
    "pb2_grpc",
    "registration_socket_name",
]

# PluginInfo.type values; the kubelet picks its handler by them.
CSI_PLUGIN: Final = "CSIPlugin"
DEVICE_PLUGIN: Final = "DevicePlugin"
DRA_PLUGIN: Final = "DRAPlugin"

# Kubelet defaults: the watched registration directory, and the per-driver data directories
# (a DRA plugin serves its DRAPlugin socket at <plugins dir>/<driver>/dra.sock by convention).
KUBELET_PLUGINS_REGISTRY_DIR: Final = "/var/lib/kubelet/plugins_registry"
KUBELET_PLUGINS_DIR: Final = "/var/lib/kubelet/plugins"
DRA_SOCKET_NAME: Final = "dra.sock"

REGISTRATION_SERVICE: Final[str] = pb2.DESCRIPTOR.services_by_name["Registration"].full_name


def registration_socket_name(driver_name: str) -> str:
    """File name of a DRA driver's registration socket, ``<driver>-reg.sock``."""
    return f"{driver_name}-reg.sock"
