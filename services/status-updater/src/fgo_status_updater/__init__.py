"""Central controller: turns labelled nodes into simulated GPU nodes and records, per GPU, who
holds it and how busy it is."""

from fgo_common import lean_kubernetes

# Before any module of this package imports kubernetes_asyncio: ~30 MiB less RSS.
lean_kubernetes.install()
