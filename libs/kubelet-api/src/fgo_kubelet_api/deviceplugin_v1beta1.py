"""Device plugin API v1beta1: generated messages/stubs plus the kubelet's constants.

Use as ``from fgo_kubelet_api import deviceplugin_v1beta1 as dp`` then ``dp.pb2.Device(...)``,
``dp.pb2_grpc.DevicePluginStub(channel)``. The constants mirror
k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/constants.go at the pinned release, so plugin code
never spells these strings itself.
"""

from __future__ import annotations

from typing import Final

from fgo_kubelet_api.gen.deviceplugin.v1beta1 import api_pb2 as pb2
from fgo_kubelet_api.gen.deviceplugin.v1beta1 import api_pb2_grpc as pb2_grpc

__all__ = [
    "DEVICE_PLUGIN_PATH",
    "DEVICE_PLUGIN_SERVICE",
    "HEALTHY",
    "KUBELET_SOCKET",
    "KUBELET_SOCKET_NAME",
    "PRE_START_CONTAINER_TIMEOUT_SECONDS",
    "REGISTRATION_SERVICE",
    "SUPPORTED_VERSIONS",
    "UNHEALTHY",
    "VERSION",
    "pb2",
    "pb2_grpc",
]

# RegisterRequest.version a plugin must send; the only one the kubelet accepts.
VERSION: Final = "v1beta1"
SUPPORTED_VERSIONS: Final = (VERSION,)

# Device.health values.
HEALTHY: Final = "Healthy"
UNHEALTHY: Final = "Unhealthy"

# Directory the kubelet serves its Registration socket in; plugins put their sockets here too
# and register with the bare file name as RegisterRequest.endpoint.
DEVICE_PLUGIN_PATH: Final = "/var/lib/kubelet/device-plugins/"
KUBELET_SOCKET_NAME: Final = "kubelet.sock"
KUBELET_SOCKET: Final = DEVICE_PLUGIN_PATH + KUBELET_SOCKET_NAME

# The kubelet gives PreStartContainer this long before failing the container start.
PRE_START_CONTAINER_TIMEOUT_SECONDS: Final = 30

# Fully qualified gRPC service names (what grpc.health / reflection would name).
REGISTRATION_SERVICE: Final[str] = pb2.DESCRIPTOR.services_by_name["Registration"].full_name
DEVICE_PLUGIN_SERVICE: Final[str] = pb2.DESCRIPTOR.services_by_name["DevicePlugin"].full_name
