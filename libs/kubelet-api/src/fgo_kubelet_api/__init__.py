"""Kubelet wire protocols (our .proto files and generated stubs)."""
