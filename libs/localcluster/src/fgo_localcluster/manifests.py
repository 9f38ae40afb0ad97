"""Objects every local cluster starts with: the operator's namespace and NVIDIA's DeviceClasses.

The DeviceClasses are the ones the upstream NVIDIA DRA driver installs (selectors from its
chart, see peers-and-standards §3.5), so workloads written for real GPU clusters select our
simulated devices unchanged. The fake-gpu-operator chart renders the same objects; they are
created here too so DRA works in a bare local cluster before (or without) the chart, and the
two agree because both follow the upstream definitions.
"""

from __future__ import annotations

from typing import Any

OPERATOR_NAMESPACE = "gpu-operator"
NVIDIA_DRA_DRIVER = "gpu.nvidia.com"


def operator_namespace() -> dict[str, Any]:
    # The operator's node plugins are privileged pods; say so explicitly instead of relying on
    # Pod Security Admission's cluster default (the seed README asks users to do the same).
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": OPERATOR_NAMESPACE,
            "labels": {"pod-security.kubernetes.io/enforce": "privileged"},
        },
    }


def _device_class(name: str, device_type: str, extended_resource: str | None) -> dict[str, Any]:
    expression = (
        f"device.driver == '{NVIDIA_DRA_DRIVER}' && "
        f"device.attributes['{NVIDIA_DRA_DRIVER}'].type == '{device_type}'"
    )
    spec: dict[str, Any] = {"selectors": [{"cel": {"expression": expression}}]}
    if extended_resource:
        # Lets a plain `nvidia.com/gpu: 1` limit be satisfied through DRA (DRAExtendedResource).
        # An apiserver without that feature drops the field, which is the upstream fallback.
        spec["extendedResourceName"] = extended_resource
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": name},
        "spec": spec,
    }


def nvidia_device_classes() -> list[dict[str, Any]]:
    return [
        _device_class("gpu.nvidia.com", "gpu", "nvidia.com/gpu"),
        _device_class("mig.nvidia.com", "mig", None),
    ]
