"""Kubelet wire protocols: our own .proto files and their generated gRPC stubs.

Modules (import the one you need; each re-exports ``pb2`` and ``pb2_grpc``):

- ``deviceplugin_v1beta1`` device plugin API (Registration on kubelet.sock, DevicePlugin)
- ``dra_v1`` / ``dra_v1beta1``  DRA kubelet plugin API (DRAPlugin)
- ``pluginregistration_v1``     plugin watcher registration API (served by the plugin)
- ``dra``                       which DRA services the kubelet accepts and how it picks one

``grpc.health.v1`` comes from the grpcio-health-checking package (``grpc_health.v1``).
"""
