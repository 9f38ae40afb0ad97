"""dcgm-exporter compatible metrics and GPU feature discovery labels, per node and for KWOK
nodes."""

from fgo_common import lean_kubernetes

# Before any module of this package imports kubernetes_asyncio: ~30 MiB less RSS.
lean_kubernetes.install()
