"""DRA kubelet plugin gRPC API v1beta1: generated messages/stubs plus registration constants.

Use as ``from fgo_kubelet_api import dra_v1beta1`` then ``dra_v1beta1.pb2.Claim(...)``.
Its messages are wire-compatible with v1 (v1 only adds the optional ``Device.share_id``), which
is how the kubelet converts between them and how our peers do too.
"""

from __future__ import annotations

from typing import Final

from fgo_kubelet_api.gen.dra.v1beta1 import api_pb2 as pb2
from fgo_kubelet_api.gen.dra.v1beta1 import api_pb2_grpc as pb2_grpc

__all__ = ["DRA_PLUGIN_SERVICE", "GRPC_SERVICE_NAME", "pb2", "pb2_grpc"]

# The string a plugin lists in PluginInfo.supported_versions to offer this service.
DRA_PLUGIN_SERVICE: Final = "v1beta1.DRAPlugin"

GRPC_SERVICE_NAME: Final[str] = pb2.DESCRIPTOR.services_by_name["DRAPlugin"].full_name
