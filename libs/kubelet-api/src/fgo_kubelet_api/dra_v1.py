"""DRA kubelet plugin gRPC API v1: generated messages/stubs plus registration constants.

Use as ``from fgo_kubelet_api import dra_v1`` then ``dra_v1.pb2.Claim(...)``,
``dra_v1.pb2_grpc.DRAPluginStub(channel)``.
"""

from __future__ import annotations

from typing import Final

from fgo_kubelet_api.gen.dra.v1 import api_pb2 as pb2
from fgo_kubelet_api.gen.dra.v1 import api_pb2_grpc as pb2_grpc

__all__ = ["DRA_PLUGIN_SERVICE", "GRPC_SERVICE_NAME", "pb2", "pb2_grpc"]

# The string a plugin lists in PluginInfo.supported_versions to offer this service; the
# kubelet's DRAPluginService constant ("<short package>.<service>", not the full gRPC name).
DRA_PLUGIN_SERVICE: Final = "v1.DRAPlugin"

# The full gRPC service name, as used on the wire ("/<name>/NodePrepareResources").
GRPC_SERVICE_NAME: Final[str] = pb2.DESCRIPTOR.services_by_name["DRAPlugin"].full_name
