"""Kubelet-side test peers: what a kubelet does to device plugins and DRA plugins.

Used by unit/integration tests and benchmarks of our plugins; both run on asyncio and
grpc.aio and talk to plugins over real unix sockets.
"""

from fgo_testkit.kubelet._unix import PeerError
from fgo_testkit.kubelet.deviceplugin import (
    DevicePluginConnection,
    DevicePluginKubeletPeer,
    is_extended_resource_name,
    unexpected_admission_message,
)
from fgo_testkit.kubelet.dra import (
    DraKubeletPeer,
    DraPluginConnection,
    RegistrationAttempt,
    claim,
)

__all__ = [
    "DevicePluginConnection",
    "DevicePluginKubeletPeer",
    "DraKubeletPeer",
    "DraPluginConnection",
    "PeerError",
    "RegistrationAttempt",
    "claim",
    "is_extended_resource_name",
    "unexpected_admission_message",
]
