"""Central controller publishing gpu.nvidia.com ResourceSlices for KWOK nodes."""

from fgo_common import lean_kubernetes

# Before any module of this package imports kubernetes_asyncio: ~30 MiB less RSS.
lean_kubernetes.install()
