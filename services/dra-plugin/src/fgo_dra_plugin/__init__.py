"""Kubelet DRA plugin for driver gpu.nvidia.com on real nodes."""
