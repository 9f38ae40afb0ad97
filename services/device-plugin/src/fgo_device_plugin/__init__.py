"""Kubelet device plugin (v1beta1) for nvidia.com/gpu and MIG resources; GPU capacity of KWOK
nodes."""

from fgo_common import lean_kubernetes

# Before any module of this package imports kubernetes_asyncio: ~30 MiB less RSS.
lean_kubernetes.install()
