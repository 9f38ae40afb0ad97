"""GPU sharing requested through DRA opaque device configs, as the GPU kubelet plugins read them.

A ResourceClaim's allocation carries the device configs of its class and of the claim
(``status.allocation.devices.config``: ``source`` FromClass | FromClaim, optional ``requests``,
``opaque: {driver, parameters}``). Two config families exist for driver ``gpu.nvidia.com``:

* NVIDIA's (``resource.nvidia.com/v1beta1``): ``GpuConfig`` / ``MigDeviceConfig`` with
  ``sharing.strategy`` TimeSlicing | MPS, ``timeSlicingConfig.interval`` Default | Short |
  Medium | Long, ``mpsConfig`` (``defaultActiveThreadPercentage``,
  ``defaultPinnedDeviceMemoryLimit``, ``defaultPerDevicePinnedMemoryLimit``);
* run-ai/fake-gpu-operator's (dra-example-driver's ``gpu.resource.example.com/v1alpha1``
  ``GpuConfig``): TimeSlicing | SpacePartitioning, ``spacePartitioningConfig.partitionCount``;
  prepared as ``GPU_DEVICE_<device>_SHARING_STRATEGY`` / ``_TIMESLICE_INTERVAL`` /
  ``_PARTITION_COUNT`` variables, which that project's scenarios check.

The rules are NVIDIA's driver's: configs of other drivers are skipped; for our driver only the
kinds above decode, strictly (an unknown kind or field is an error, never ignored); claim
configs rank above class configs, and within each source a later config above an earlier one;
the highest-ranked config that names the result's request, or names no request, applies; a
GPU config never applies to a MIG device and the other way round. Every config is normalised
(implied defaults) and validated before anything is prepared, so one bad config fails the claim
with one clear message (the prepare error the kubelet shows in the pod's events). This module
is pure: the node plugin turns the result into CDI edits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fgo_common.units import quantity_bytes

NVIDIA_API_VERSION = "resource.nvidia.com/v1beta1"
EXAMPLE_API_VERSION = "gpu.resource.example.com/v1alpha1"
GPU_CONFIG = "GpuConfig"
MIG_DEVICE_CONFIG = "MigDeviceConfig"

TIME_SLICING = "TimeSlicing"
MPS = "MPS"
SPACE_PARTITIONING = "SpacePartitioning"
FABRIC = "Fabric"
INTERVALS = ("Default", "Short", "Medium", "Long")

# NVIDIA's driver gates both strategies (TimeSlicingSettings, MPSSupport); a simulator is
# installed to exercise them, so both are on unless the plugin's FEATURE_GATES turns them off.
FEATURE_GATES = {"TimeSlicingSettings": True, "MPSSupport": True}

# Where the MPS control daemon's pipe directory appears in containers (NVIDIA's driver).
MPS_PIPE_CONTAINER_DIR = "/tmp/nvidia-mps"  # noqa: S108 (a path inside the container)
MPS_SHM_CONTAINER_DIR = "/dev/shm"  # noqa: S108 (a path inside the container)

DeviceType = Literal["gpu", "mig"]
Obj = dict[str, Any]


class SharingConfigError(ValueError):
    """Why a claim's device configs cannot be applied (the claim's prepare error)."""


@dataclass(frozen=True, slots=True)
class MpsSettings:
    active_thread_percentage: int | None = None
    default_pinned_limit_bytes: int | None = None
    per_device_pinned_limit_bytes: Mapping[str, int] = field(default_factory=dict)

    def pinned_limits(self, uuids: Sequence[str]) -> dict[str, str]:
        """UUID -> limit as the MPS control daemon is given it (``<MiB>M``), NVIDIA's rules:
        the default applies to every device, per-device entries (UUID or index into
        ``uuids``) override it; a limit below 1 MiB is refused."""
        limits: dict[str, str] = {}
        if self.default_pinned_limit_bytes is not None and uuids:
            mib = self.default_pinned_limit_bytes // (1 << 20)
            if mib <= 0:
                raise SharingConfigError(
                    f"invalid limit: default value set too low: {self.default_pinned_limit_bytes}"
                )
            limits = dict.fromkeys(uuids, f"{mib}M")
        for key, n_bytes in self.per_device_pinned_limit_bytes.items():
            uuid = _device_key(key, uuids)
            mib = n_bytes // (1 << 20)
            if mib <= 0:
                raise SharingConfigError(f"invalid limit: value set too low: {key}: {n_bytes}")
            limits[uuid] = f"{mib}M"
        return limits


def _device_key(key: str, uuids: Sequence[str]) -> str:
    if key in uuids:
        return key
    try:
        index = int(key)
    except ValueError:
        raise SharingConfigError(
            f"invalid device: unable to parse key as an integer: {key}"
        ) from None
    if 0 <= index < len(uuids):
        return uuids[index]
    raise SharingConfigError(f"invalid device: invalid device index: {index}")


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One decoded, normalised config. ``strategy`` None: no sharing asked for."""

    api_version: str
    kind: str
    strategy: str | None = None
    interval: str | None = None
    partition_count: int | None = None
    mps: MpsSettings | None = None
    explicit: bool = True  # False for the driver's built-in defaults

    @property
    def applies_to(self) -> DeviceType:
        return "mig" if self.kind == MIG_DEVICE_CONFIG else "gpu"

    @property
    def reference_style(self) -> bool:
        return self.api_version == EXAMPLE_API_VERSION

    def describe(self) -> str:
        return f"{self.kind} ({self.api_version})"


@dataclass(frozen=True, slots=True)
class AllocationResult:
    request: str
    device: str
    device_type: DeviceType
    uuid: str


@dataclass(frozen=True, slots=True)
class ConfigGroup:
    """The results one config applies to (the unit NVIDIA's driver prepares together)."""

    config: DeviceConfig
    results: tuple[AllocationResult, ...]

    @property
    def uuids(self) -> list[str]:
        return list(dict.fromkeys(r.uuid for r in self.results))


DEFAULT_GPU_CONFIG = DeviceConfig(NVIDIA_API_VERSION, GPU_CONFIG, explicit=False)
DEFAULT_MIG_CONFIG = DeviceConfig(NVIDIA_API_VERSION, MIG_DEVICE_CONFIG, explicit=False)


# -- decoding ------------------------------------------------------------------------------


def _fields(raw: object, path: str, allowed: set[str]) -> Obj:
    if not isinstance(raw, dict):
        raise SharingConfigError(f"{path or 'parameters'}: expected an object, got {_kind(raw)}")
    for key in raw:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise SharingConfigError(f'strict decoding error: unknown field "{where}"')
    return raw


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else "null"
    )


def _string(raw: Obj, key: str, path: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SharingConfigError(f"{path}.{key}: expected a string, got {_kind(value)}")
    return value


def _integer(raw: Obj, key: str, path: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SharingConfigError(f"{path}.{key}: expected an integer, got {_kind(value)}")
    return value


def _quantity(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SharingConfigError(f"{path}: expected a quantity such as 10Gi, got {_kind(value)}")
    try:
        return quantity_bytes(value)
    except ValueError as exc:
        raise SharingConfigError(f"{path}: {exc}") from None


def decode_parameters(parameters: object) -> DeviceConfig:
    """One opaque ``parameters`` object for our driver -> its config (strict, normalised)."""
    if isinstance(parameters, str | bytes):
        try:
            parameters = json.loads(parameters)
        except ValueError as exc:
            raise SharingConfigError(f"parameters are not JSON: {exc}") from None
    if not isinstance(parameters, dict):
        raise SharingConfigError(f"parameters: expected an object, got {_kind(parameters)}")
    api_version, kind = parameters.get("apiVersion"), parameters.get("kind")
    if not api_version or not kind:
        raise SharingConfigError(
            "Object 'Kind' is missing in the parameters (apiVersion and kind are required)"
        )
    known = {
        (NVIDIA_API_VERSION, GPU_CONFIG),
        (NVIDIA_API_VERSION, MIG_DEVICE_CONFIG),
        (EXAMPLE_API_VERSION, GPU_CONFIG),
    }
    if (api_version, kind) not in known:
        raise SharingConfigError(
            f'no kind "{kind}" is registered for version "{api_version}" '
            f"(driver gpu.nvidia.com understands GpuConfig and MigDeviceConfig of "
            f"{NVIDIA_API_VERSION}, and GpuConfig of {EXAMPLE_API_VERSION})"
        )
    raw = _fields(parameters, "", {"apiVersion", "kind", "metadata", "sharing"})
    sharing = raw.get("sharing")
    if sharing is None:
        return DeviceConfig(str(api_version), str(kind))
    if api_version == EXAMPLE_API_VERSION:
        return _decode_example(sharing)
    return _decode_nvidia(str(kind), sharing)


def _decode_nvidia(kind: str, sharing: object) -> DeviceConfig:
    allowed = {"strategy", "mpsConfig"}
    if kind == GPU_CONFIG:
        allowed.add("timeSlicingConfig")
    raw = _fields(sharing, "sharing", allowed)
    strategy = _string(raw, "strategy", "sharing") or ""
    interval = None
    if raw.get("timeSlicingConfig") is not None:
        ts = _fields(raw["timeSlicingConfig"], "sharing.timeSlicingConfig", {"interval"})
        interval = _string(ts, "interval", "sharing.timeSlicingConfig")
    mps = None
    if raw.get("mpsConfig") is not None:
        mps = _decode_mps(raw["mpsConfig"])
    if strategy == TIME_SLICING and mps is not None:
        raise SharingConfigError(f"cannot use MpsConfig with the '{TIME_SLICING}' strategy")
    if strategy == MPS and raw.get("timeSlicingConfig") is not None:
        raise SharingConfigError(f"cannot use TimeSlicingConfig with the '{MPS}' strategy")
    if strategy == TIME_SLICING and kind == GPU_CONFIG:
        interval = interval or "Default"
    if strategy == MPS and mps is None:
        mps = MpsSettings()
    return DeviceConfig(NVIDIA_API_VERSION, kind, strategy, interval=interval, mps=mps)


def _decode_mps(raw_config: object) -> MpsSettings:
    path = "sharing.mpsConfig"
    raw = _fields(
        raw_config,
        path,
        {
            "defaultActiveThreadPercentage",
            "defaultPinnedDeviceMemoryLimit",
            "defaultPerDevicePinnedMemoryLimit",
        },
    )
    default_limit = raw.get("defaultPinnedDeviceMemoryLimit")
    per_device = raw.get("defaultPerDevicePinnedMemoryLimit") or {}
    if not isinstance(per_device, dict):
        raise SharingConfigError(
            f"{path}.defaultPerDevicePinnedMemoryLimit: expected an object of device index or "
            f"UUID to quantity, got {_kind(per_device)}"
        )
    return MpsSettings(
        active_thread_percentage=_integer(raw, "defaultActiveThreadPercentage", path),
        default_pinned_limit_bytes=None
        if default_limit is None
        else _quantity(default_limit, f"{path}.defaultPinnedDeviceMemoryLimit"),
        per_device_pinned_limit_bytes={
            str(k): _quantity(v, f"{path}.defaultPerDevicePinnedMemoryLimit.{k}")
            for k, v in per_device.items()
        },
    )


def _decode_example(sharing: object) -> DeviceConfig:
    raw = _fields(sharing, "sharing", {"strategy", "timeSlicingConfig", "spacePartitioningConfig"})
    strategy = _string(raw, "strategy", "sharing") or ""
    interval = count = None
    if raw.get("timeSlicingConfig") is not None:
        ts = _fields(raw["timeSlicingConfig"], "sharing.timeSlicingConfig", {"interval"})
        interval = _string(ts, "interval", "sharing.timeSlicingConfig")
    if raw.get("spacePartitioningConfig") is not None:
        sp = _fields(
            raw["spacePartitioningConfig"], "sharing.spacePartitioningConfig", {"partitionCount"}
        )
        count = _integer(sp, "partitionCount", "sharing.spacePartitioningConfig")
    if strategy == TIME_SLICING and raw.get("spacePartitioningConfig") is not None:
        raise SharingConfigError(
            f"cannot use SpacePartitioningConfig with the '{TIME_SLICING}' strategy"
        )
    if strategy == SPACE_PARTITIONING and raw.get("timeSlicingConfig") is not None:
        raise SharingConfigError(
            f"cannot use TimeSlicingConfig with the '{SPACE_PARTITIONING}' strategy"
        )
    if strategy == TIME_SLICING:
        interval = interval or "Default"
    if strategy == SPACE_PARTITIONING and count is None:
        count = 1
    return DeviceConfig(
        EXAMPLE_API_VERSION, GPU_CONFIG, strategy, interval=interval, partition_count=count
    )


# -- validation ----------------------------------------------------------------------------


def validate(config: DeviceConfig, gates: Mapping[str, bool] = FEATURE_GATES) -> None:
    """NVIDIA's (and the example driver's) validation; raises SharingConfigError."""
    strategy = config.strategy
    if strategy is None:
        return
    if config.reference_style:
        if strategy not in (TIME_SLICING, SPACE_PARTITIONING):
            raise SharingConfigError(f"unknown GPU sharing strategy: {strategy}")
        if strategy == TIME_SLICING and config.interval not in INTERVALS:
            raise SharingConfigError(f"unknown time-slice interval: {config.interval}")
        if strategy == SPACE_PARTITIONING and (config.partition_count or 0) < 1:
            raise SharingConfigError(
                f"invalid partition count: {config.partition_count} (must be 1 or more)"
            )
        return
    if strategy == TIME_SLICING and gates.get("TimeSlicingSettings", False):
        if config.kind == GPU_CONFIG and config.interval not in INTERVALS:
            raise SharingConfigError(f"unknown time-slice interval: {config.interval}")
        return
    if strategy == MPS and gates.get("MPSSupport", False):
        percentage = config.mps.active_thread_percentage if config.mps else None
        if percentage is not None and percentage < 0:
            raise SharingConfigError("active thread percentage must not be negative")
        if percentage is not None and percentage > 100:
            raise SharingConfigError("active thread percentage must not be greater than 100")
        return
    if strategy == FABRIC:
        raise SharingConfigError("fabric GPU sharing strategy is not enabled")
    raise SharingConfigError(f"unknown GPU sharing strategy: {strategy}")


def parse_feature_gates(text: str) -> dict[str, bool]:
    """``Gate=true,Other=false`` (the drivers' --feature-gates form) over our defaults."""
    gates = dict(FEATURE_GATES)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or value.strip().lower() not in ("true", "false"):
            raise ValueError(f"feature gate {item!r}: expected <name>=true|false")
        if name.strip() not in FEATURE_GATES:
            known = ", ".join(sorted(FEATURE_GATES))
            raise ValueError(f"unknown feature gate {name.strip()!r} (known: {known})")
        gates[name.strip()] = value.strip().lower() == "true"
    return gates


# -- which config applies to which result --------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Candidate:
    requests: tuple[str, ...]
    config: DeviceConfig


def claim_configs(allocation: Obj, driver: str) -> list[_Candidate]:
    """Our driver's configs of an allocation, lowest precedence first (class, then claim;
    each in list order). Raises SharingConfigError for a config we cannot read."""
    by_source: dict[str, list[_Candidate]] = {"FromClass": [], "FromClaim": []}
    configs = (allocation.get("devices") or {}).get("config") or []
    for entry in configs:
        source = entry.get("source")
        if source not in by_source:
            raise SharingConfigError(f"invalid config source: {source}")
        opaque = entry.get("opaque")
        if opaque is None:
            raise SharingConfigError("only opaque parameters are supported by this driver")
        if opaque.get("driver") != driver:
            continue  # a request may be satisfiable by several drivers: not ours to judge
        try:
            config = decode_parameters(opaque.get("parameters"))
        except SharingConfigError as exc:
            raise SharingConfigError(f"error decoding config parameters: {exc}") from None
        requests = tuple(str(r) for r in entry.get("requests") or ())
        by_source[source].append(_Candidate(requests, config))
    return [*by_source["FromClass"], *by_source["FromClaim"]]


def group_results(
    allocation: Obj,
    driver: str,
    results: Sequence[AllocationResult],
    gates: Mapping[str, bool] = FEATURE_GATES,
) -> list[ConfigGroup]:
    """The config each result gets, grouped by config, validated (NVIDIA's precedence)."""
    candidates = [
        _Candidate((), DEFAULT_MIG_CONFIG),
        _Candidate((), DEFAULT_GPU_CONFIG),
        *claim_configs(allocation, driver),
    ]
    groups: dict[int, list[AllocationResult]] = {}
    for result in results:
        chosen = _choose(candidates, result)
        groups.setdefault(chosen, []).append(result)
    out = []
    for index, members in groups.items():
        config = candidates[index].config
        try:
            validate(config, gates)
        except SharingConfigError as exc:
            raise SharingConfigError(f"error validating GPU config: {exc}") from None
        out.append(ConfigGroup(config, tuple(members)))
    return out


def _choose(candidates: Sequence[_Candidate], result: AllocationResult) -> int:
    for index in range(len(candidates) - 1, -1, -1):
        candidate = candidates[index]
        fits = candidate.config.applies_to == result.device_type
        if result.request in candidate.requests:
            if not fits:
                raise SharingConfigError(
                    f"cannot apply {candidate.config.kind} to device {result.device!r} of type "
                    f"{result.device_type!r} (request: {result.request})"
                )
            return index
        if not candidate.requests and fits:
            return index
    raise AssertionError("the built-in defaults match every device type")


# -- what a prepared container gets ---------------------------------------------------------


def env_name(device: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in device)


def reference_env(config: DeviceConfig, device: str) -> list[str]:
    """run-ai/fake-gpu-operator's per-device sharing variables (example-driver configs)."""
    if not config.reference_style or not config.strategy:
        return []
    prefix = f"GPU_DEVICE_{env_name(device)}"
    out = [f"{prefix}_SHARING_STRATEGY={config.strategy}"]
    if config.strategy == TIME_SLICING:
        out.append(f"{prefix}_TIMESLICE_INTERVAL={config.interval}")
    elif config.strategy == SPACE_PARTITIONING:
        out.append(f"{prefix}_PARTITION_COUNT={config.partition_count}")
    return out


def mps_daemon_id(claim_uid: str, uuids: Sequence[str]) -> str:
    """The id NVIDIA's driver gives a claim group's MPS control daemon (and its directories)."""
    digest = hashlib.sha256(",".join(uuids).encode()).hexdigest()
    return f"{claim_uid}-{digest[:5]}"


def sharing_summary(config: DeviceConfig) -> dict[str, Any]:
    """What the node records about a prepared device's sharing (checkpoint, node state)."""
    if not config.strategy:
        return {}
    out: dict[str, Any] = {"strategy": config.strategy}
    if config.interval:
        out["interval"] = config.interval
    if config.partition_count is not None:
        out["partitionCount"] = config.partition_count
    if config.mps and config.mps.active_thread_percentage is not None:
        out["activeThreadPercentage"] = config.mps.active_thread_percentage
    return out
