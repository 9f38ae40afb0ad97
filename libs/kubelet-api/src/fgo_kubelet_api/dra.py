"""What the kubelet accepts from DRA plugins, independent of the API version."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from fgo_kubelet_api import dra_v1, dra_v1beta1

__all__ = ["SERVICES_SUPPORTED_BY_KUBELET", "choose_service"]

# Mirrors servicesSupportedByKubelet in pkg/kubelet/cm/dra/plugin at the pinned release,
# newest first.
SERVICES_SUPPORTED_BY_KUBELET: Final = (
    dra_v1.DRA_PLUGIN_SERVICE,
    dra_v1beta1.DRA_PLUGIN_SERVICE,
)


def choose_service(
    plugin_services: Sequence[str],
    kubelet_services: Sequence[str] = SERVICES_SUPPORTED_BY_KUBELET,
) -> str:
    """Pick the service the kubelet will call, exactly as the kubelet does.

    The kubelet walks the *plugin's* list in order and takes the first entry it knows, so a
    plugin should list its newest service first. Raises ValueError worded like the kubelet's error.
    """
    if not plugin_services:
        raise ValueError("empty list of supported gRPC services (aka supported versions)")
    for service in plugin_services:
        if service in kubelet_services:
            return service
    raise ValueError(
        f"none of services supported by the plugin ({_go_quoted(plugin_services)}) "
        f"are supported by the kubelet ({_go_quoted(kubelet_services)})"
    )


def _go_quoted(items: Sequence[str]) -> str:
    """Format like Go's %q of a []string, so messages read as the kubelet's do."""
    return "[" + " ".join(json.dumps(item) for item in items) + "]"
