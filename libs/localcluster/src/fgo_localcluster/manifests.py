"""Objects every local cluster starts with: the operator's namespace and NVIDIA's DeviceClasses.

The DeviceClasses are the ones the upstream NVIDIA DRA driver installs (selectors from its
chart, see peers-and-standards §3.5), so workloads written for real GPU clusters select our
simulated devices unchanged. The fake-gpu-operator chart renders the same objects; they are
created here too so DRA works in a bare local cluster before (or without) the chart, and the
two agree because both follow the upstream definitions.
"""

from __future__ import annotations

from typing import Any

from fgo_common import draclasses

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


def nvidia_device_classes() -> list[dict[str, Any]]:
    # fgo_common.draclasses is the one definition (the chart's template is compared with it
    # by tests).
    return draclasses.device_classes()
