"""The DeviceClasses of the NVIDIA DRA driver (``gpu.nvidia.com``, ``mig.nvidia.com``), as its
chart installs them: the local cluster applies them and the chart renders the same objects."""

from __future__ import annotations

import yaml

from fgo_common.dradevices import RESOURCE_API_VERSION, Obj
from fgo_common.names import DRA_NAMES, RESOURCE_NAMES, DraNames


def type_selector(device_type: str, names: DraNames = DRA_NAMES) -> str:
    """The upstream DeviceClasses' CEL: driver plus the qualified ``type`` attribute."""
    return (
        f"device.driver == '{names.driver}' && "
        f"device.attributes['{names.driver}'].{names.attr_type} == '{device_type}'"
    )


def device_class(
    name: str,
    device_type: str,
    *,
    extended_resource_name: str | None = None,
    names: DraNames = DRA_NAMES,
    labels: dict[str, str] | None = None,
) -> Obj:
    spec: Obj = {"selectors": [{"cel": {"expression": type_selector(device_type, names)}}]}
    if extended_resource_name:
        # resource.k8s.io/v1 DeviceClassSpec.extendedResourceName (beta in 1.36, DRAExtendedResource
        # on by default): a pod's plain `nvidia.com/gpu: 1` is served from these devices on nodes
        # that do not advertise the extended resource themselves. An older API server drops it.
        spec["extendedResourceName"] = extended_resource_name
    metadata: Obj = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": RESOURCE_API_VERSION,
        "kind": "DeviceClass",
        "metadata": metadata,
        "spec": spec,
    }


def device_classes(
    names: DraNames = DRA_NAMES,
    *,
    extended_resource: bool = True,
    labels: dict[str, str] | None = None,
) -> list[Obj]:
    """``gpu.nvidia.com`` (with ``extendedResourceName: nvidia.com/gpu``) and ``mig.nvidia.com``,
    as the NVIDIA DRA driver's chart installs them."""
    return [
        device_class(
            names.device_class_gpu,
            names.type_gpu,
            extended_resource_name=RESOURCE_NAMES.gpu if extended_resource else None,
            names=names,
            labels=labels,
        ),
        device_class(names.device_class_mig, names.type_mig, names=names, labels=labels),
    ]


def device_classes_yaml(names: DraNames = DRA_NAMES, *, extended_resource: bool = True) -> str:
    """The DeviceClasses as a multi-document YAML stream (what the chart renders)."""
    return yaml.safe_dump_all(
        device_classes(names, extended_resource=extended_resource), sort_keys=False
    )
