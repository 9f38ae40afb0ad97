"""Kubelet device plugin (v1beta1) for nvidia.com/gpu and MIG resources, plus GPU capacity on KWOK nodes."""
