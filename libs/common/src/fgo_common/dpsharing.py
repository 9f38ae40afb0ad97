"""Device-plugin GPU sharing: NVIDIA k8s-device-plugin's config file, validated as its plugin does.

A config is NVIDIA's document (``version: v1``, ``sharing.timeSlicing`` or ``sharing.mps``, each
``{renameByDefault, failRequestsGreaterThanOne, resources: [{name, replicas}]}``). The chart
keeps named configs (``devicePlugin.config``, rendered into the topology ConfigMap as
``devicePluginConfig: {default, configs}``); the node label ``nvidia.com/device-plugin.config``
picks one per node, as NVIDIA's config-manager does. The status-updater selects and validates
it and writes the result into the node's record (``NodeTopology.sharing``); everyone else
derives from the record. Pure; docs/sharing.md has the model and the messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from fgo_common import sharing as dra_sharing
from fgo_common.topology import NodeSharing, SharedResource

CONFIG_LABEL = "nvidia.com/device-plugin.config"
VERSION = "v1"
TIME_SLICING = "time-slicing"
MPS = "mps"
NONE = "none"
# Holder.sharing of a pod holding a replica: the strategy names fgo_common.sharing uses for DRA
# claims, so nvidia-smi and the exporter read one vocabulary.
HOLDER_SHARING = {TIME_SLICING: dra_sharing.TIME_SLICING, MPS: dra_sharing.MPS}
SHARED_SUFFIX = ".shared"
# NVIDIA sets no upper bound; beyond this a typo (replicas: 40000) would make a node advertise
# millions of devices to the scheduler and the kubelet's ListAndWatch stream.
MAX_REPLICAS = 1024
MAX_FIELD = 63  # label values name configs: a label value is at most 63 characters

_TOP_KEYS = ("version", "flags", "resources", "sharing")
_SHARING_KEYS = ("timeSlicing", "mps")
_REPLICATED_KEYS = ("renameByDefault", "failRequestsGreaterThanOne", "resources")
_RESOURCE_KEYS = ("name", "rename", "devices", "replicas")


class DevicePluginConfigError(ValueError):
    """A config the device plugin would refuse; ``path`` names the field."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


@dataclass(frozen=True, slots=True)
class DevicePluginConfigs:
    """The named configs and the default (``""``: nodes without the label are not shared).
    ``parsed`` maps a valid config's name to its sharing (None: it shares nothing); ``errors``
    maps an invalid config's name to why."""

    default: str = ""
    parsed: Mapping[str, NodeSharing | None] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return sorted({*self.parsed, *self.errors})


@dataclass(frozen=True, slots=True)
class Selection:
    """What a node gets: ``sharing`` (None = unshared) and, when the node asked for something it
    cannot have, ``problem`` (an Event's reason and message)."""

    sharing: NodeSharing | None = None
    config: str = ""
    problem: tuple[str, str] | None = None


def _mapping(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DevicePluginConfigError(path, f"must be a mapping, got {type(value).__name__}")
    return value


def _keys(raw: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in raw:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise DevicePluginConfigError(
                where, f"unknown field {key!r} (allowed: {', '.join(allowed)})"
            )


def _bool(raw: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise DevicePluginConfigError(f"{path}.{key}", f"must be true or false, got {value!r}")
    return value


def _resource(raw: object, path: str, strategy: str, rename_by_default: bool) -> SharedResource:
    entry = _mapping(raw, path)
    _keys(entry, _RESOURCE_KEYS, path)
    if "name" not in entry:
        raise DevicePluginConfigError(path, "no resource name specified")
    name = entry["name"]
    if not isinstance(name, str) or not name.startswith("nvidia.com/"):
        raise DevicePluginConfigError(
            f"{path}.name", f"must be a resource name like nvidia.com/gpu, got {name!r}"
        )
    if "replicas" not in entry:
        raise DevicePluginConfigError(path, "no replicas specified")
    replicas = entry["replicas"]
    if not isinstance(replicas, int) or isinstance(replicas, bool):
        raise DevicePluginConfigError(f"{path}.replicas", f"must be an integer, got {replicas!r}")
    if replicas < 2:
        raise DevicePluginConfigError(f"{path}.replicas", "number of replicas must be >= 2")
    if replicas > MAX_REPLICAS:
        raise DevicePluginConfigError(
            f"{path}.replicas", f"number of replicas must be <= {MAX_REPLICAS}, got {replicas}"
        )
    devices = entry.get("devices", "all")
    if devices != "all":
        raise DevicePluginConfigError(
            f"{path}.devices", f"only 'all' is supported (NVIDIA ignores others), got {devices!r}"
        )
    rename = entry.get("rename")
    if rename is not None and not isinstance(rename, str):
        raise DevicePluginConfigError(f"{path}.rename", f"must be a string, got {rename!r}")
    if strategy == MPS and rename:
        raise DevicePluginConfigError(
            f"{path}.rename", "renaming shared resources is not supported with MPS"
        )
    # NVIDIA's plugin honours renameByDefault only: a 'rename' other than <name>.shared is
    # ignored with a warning; so is it here.
    advertised = name + SHARED_SUFFIX if rename_by_default else name
    return SharedResource(name, replicas, advertised)


def parse_config(raw: object, name: str = "") -> NodeSharing | None:
    """One NVIDIA config (a mapping, or its YAML text as in a ConfigMap) -> the node's sharing,
    None when it replicates nothing; ``DevicePluginConfigError`` naming the field otherwise."""
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise DevicePluginConfigError("", f"unmarshal error: {exc}") from None
    top = _mapping(raw if raw is not None else {}, "(top level)")
    _keys(top, _TOP_KEYS, "")
    version = top.get("version") or VERSION
    if version != VERSION:
        raise DevicePluginConfigError("version", f"unknown version: {version}")
    if top.get("sharing") is None:
        return None
    sharing = _mapping(top["sharing"], "sharing")
    _keys(sharing, _SHARING_KEYS, "sharing")
    present = [k for k in _SHARING_KEYS if sharing.get(k) is not None]
    if not present:
        return None
    if len(present) > 1:
        raise DevicePluginConfigError(
            "sharing", "set one of sharing.timeSlicing and sharing.mps, not both"
        )
    key = present[0]
    strategy = TIME_SLICING if key == "timeSlicing" else MPS
    path = f"sharing.{key}"
    block = _mapping(sharing[key], path)
    _keys(block, _REPLICATED_KEYS, path)
    rename_by_default = _bool(block, "renameByDefault", path, False)
    if strategy == MPS and rename_by_default:
        raise DevicePluginConfigError(
            f"{path}.renameByDefault", "renaming shared resources is not supported with MPS"
        )
    # NVIDIA: MPS defaults failRequestsGreaterThanOne to true (kept historical behaviour).
    fail_gt_one = _bool(block, "failRequestsGreaterThanOne", path, strategy == MPS)
    resources_raw = block.get("resources")
    if not isinstance(resources_raw, list) or not resources_raw:
        if resources_raw is not None and not isinstance(resources_raw, list):
            raise DevicePluginConfigError(f"{path}.resources", "must be a list")
        raise DevicePluginConfigError(path, "no resources specified")
    resources = []
    seen: set[str] = set()
    for i, entry in enumerate(resources_raw):
        resource = _resource(entry, f"{path}.resources[{i}]", strategy, rename_by_default)
        if resource.name in seen:
            raise DevicePluginConfigError(
                f"{path}.resources[{i}].name", f"{resource.name} is listed twice"
            )
        seen.add(resource.name)
        resources.append(resource)
    return NodeSharing(
        strategy=strategy,
        resources=tuple(resources),
        config=name,
        rename_by_default=rename_by_default,
        fail_requests_greater_than_one=fail_gt_one,
    )


def parse_configs(raw: object, path: str = "devicePluginConfig") -> DevicePluginConfigs:
    """The topology document's ``devicePluginConfig: {default, configs: {name: config}}``.

    The shape itself (not a mapping, a default naming no config) raises
    ``DevicePluginConfigError``; a bad individual config is kept in ``errors`` so only the nodes
    that select it fall back to unshared (with an Event), as a node's NVIDIA plugin would fail
    alone."""
    if raw is None:
        return DevicePluginConfigs()
    top = _mapping(raw, path)
    _keys(top, ("default", "configs"), path)
    default = top.get("default") or ""
    if not isinstance(default, str):
        raise DevicePluginConfigError(f"{path}.default", f"must be a string, got {default!r}")
    configs = _mapping(top.get("configs") or {}, f"{path}.configs")
    parsed: dict[str, NodeSharing | None] = {}
    errors: dict[str, str] = {}
    for name, body in configs.items():
        if not isinstance(name, str) or not name or len(name) > MAX_FIELD:
            raise DevicePluginConfigError(
                f"{path}.configs", f"config names must be label values, got {name!r}"
            )
        try:
            parsed[name] = parse_config(body, name)
        except DevicePluginConfigError as exc:
            errors[name] = str(exc)
    if default and default not in parsed and default not in errors:
        known = ", ".join(sorted(configs)) or "none"
        raise DevicePluginConfigError(
            f"{path}.default", f"names no config of {path}.configs (known: {known})"
        )
    return DevicePluginConfigs(default, parsed, errors)


def select(configs: DevicePluginConfigs, node_labels: Mapping[str, str]) -> Selection:
    """The node's config: its ``nvidia.com/device-plugin.config`` label, else the default.
    A label naming no config, or a config that failed validation, leaves the node unshared
    with a problem to report (NVIDIA's plugin would not start on that node)."""
    wanted = node_labels.get(CONFIG_LABEL) or configs.default
    if not wanted:
        return Selection()
    if wanted in configs.errors:
        return Selection(
            config=wanted,
            problem=(
                "InvalidDevicePluginConfig",
                f"device-plugin config {wanted!r} is invalid: {configs.errors[wanted]}; "
                "the node's GPUs are not shared",
            ),
        )
    if wanted not in configs.parsed:
        known = ", ".join(configs.names) or "none"
        return Selection(
            config=wanted,
            problem=(
                "UnknownDevicePluginConfig",
                f"label {CONFIG_LABEL}={wanted!r} names no device-plugin config "
                f"(known: {known}); the node's GPUs are not shared",
            ),
        )
    return Selection(sharing=configs.parsed[wanted], config=wanted)


def replica_id(device_id: str, replica: int) -> str:
    """NVIDIA's annotated device ID of a replica: ``<uuid>::<n>``."""
    return f"{device_id}::{replica}"


def base_id(device_id: str) -> str:
    """The device a (possibly replica) ID names: ``GPU-x::3`` -> ``GPU-x``."""
    return device_id.split("::", 1)[0]


def is_replica_id(device_id: str) -> bool:
    return "::" in device_id


def oversized_request_error(count: int) -> str:
    """NVIDIA's Allocate error for a request above 1 with failRequestsGreaterThanOne (the
    kubelet shows it as ``UnexpectedAdmissionError``)."""
    return f"invalid request: maximum request size for shared resources is 1; found {count}"
