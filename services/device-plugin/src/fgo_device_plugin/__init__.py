"""Kubelet device plugin (v1beta1) for nvidia.com/gpu and MIG resources; GPU capacity of KWOK
nodes."""
