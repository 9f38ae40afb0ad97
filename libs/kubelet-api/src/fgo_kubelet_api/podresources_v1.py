"""Pod resources API v1 (kubelet monitoring endpoint): generated messages/stubs plus constants.

Use as ``from fgo_kubelet_api import podresources_v1 as podres`` then
``podres.pb2_grpc.PodResourcesListerStub(channel)``. The kubelet serves it on a unix socket;
node agents call ``List`` to learn which device IDs it handed to which container.
"""

from __future__ import annotations

from typing import Final

from fgo_kubelet_api.gen.podresources.v1 import api_pb2 as pb2
from fgo_kubelet_api.gen.podresources.v1 import api_pb2_grpc as pb2_grpc

__all__ = ["POD_RESOURCES_PATH", "POD_RESOURCES_SERVICE", "POD_RESOURCES_SOCKET", "pb2", "pb2_grpc"]

# The kubelet's default directory and socket for this API (pkg/kubelet/apis/podresources).
POD_RESOURCES_PATH: Final = "/var/lib/kubelet/pod-resources/"
POD_RESOURCES_SOCKET: Final = POD_RESOURCES_PATH + "kubelet.sock"

POD_RESOURCES_SERVICE: Final[str] = pb2.DESCRIPTOR.services_by_name["PodResourcesLister"].full_name
