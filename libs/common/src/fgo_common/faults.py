"""GPU fault injection: the declaration format, its validation, and what a fault means.

Users declare faults in ConfigMaps labelled ``fake-gpu-operator/gpu-faults=true`` in the
operator's namespace (key ``faults.yaml``: a YAML list, or a mapping with a ``faults`` list).
A ConfigMap rather than a node annotation or a CRD because: it needs no CRD installed (the
simulator must work on any cluster the chart lands on), one object holds one scenario of many
faults on many nodes, ``kubectl apply`` / ``kubectl delete`` inject and clear it, RBAC is one
namespaced rule the status-updater already has, and touching Nodes (which the scheduler and every
kubelet-side controller watch) is avoided. See docs/faults.md.

Each entry::

    node: kwok-gpu-node-0        # required
    gpu: 0                       # index, GPU UUID or MIG UUID (required)
    kind: xid                    # xid | ecc | gpuLost | thermal | power | degraded
    code: 79                     # xid only: the XID code
    count: 1                     # ecc: single-bit count; degraded: PCIe replays
    doubleBit: 0                 # ecc only: double-bit count
    aggregate: 0                 # ecc only: errors from before this boot (aggregate only)
    start: 30s | "2026-11-28T10:00:00Z"   # optional; a duration counts from the CM's creation
    duration: 5m                 # optional; absent = until the entry is removed

This module is pure: the status-updater (the only writer of records) turns the declarations into
``GpuRecord.faults`` entries and ``health``; the publishers ask :func:`device_taints` which DRA
taints a device carries. Record entries keep the telemetry model's schema
(``fgo_common.telemetry``: ``kind``/``code``/``since``/``until`` and the ECC counter names) and add
``injected`` (the declaration's id, so injected faults are told apart from others) and ``mig``
(the MIG device UUID when one MIG device is targeted).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fgo_common.names import (
    HEALTH_FR_OK,
    HEALTH_FR_PCI_REPLAY_RATE,
    HEALTH_FR_ROW_REMAP_FAILURE,
    HEALTH_FR_THROTTLE_POWER,
    HEALTH_FR_THROTTLE_THERMAL,
    HEALTH_FR_UNCONTAINED,
    HEALTH_FR_VOLATILE_DBE,
    HEALTH_FR_VOLATILE_SBE,
    HEALTH_FR_XID_ERROR,
    HEALTH_RESULT_FAIL,
    HEALTH_RESULT_PASS,
    HEALTH_RESULT_WARN,
    HEALTH_WATCH_SYSTEMS,
)

FAULTS_LABEL = "fake-gpu-operator/gpu-faults"
FAULTS_DATA_KEY = "faults.yaml"

KIND_XID = "xid"
KIND_ECC = "ecc"
KIND_LOST = "gpuLost"
KIND_THERMAL = "thermal"
KIND_POWER = "power"
KIND_DEGRADED = "degraded"
KINDS = (KIND_XID, KIND_ECC, KIND_LOST, KIND_THERMAL, KIND_POWER, KIND_DEGRADED)

# Record-side kinds (fgo_common.telemetry reads xid/ecc/thermal/power/pcieReplay; "lost" and
# "degraded" are for the health rule and the tools).
RECORD_LOST = "lost"
RECORD_DEGRADED = "degraded"
RECORD_PCIE_REPLAY = "pcieReplay"

# NVIDIA's device plugin skips these XIDs when deciding health: they are caused by the
# application (illegal address, MMU fault, reset channel, preemptive cleanup, video
# processor exception, ...), not by the GPU (k8s-device-plugin, nvml health.go).
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
# XIDs after which the GPU is gone until reset: existing workloads cannot continue either, so
# DRA taints them NoExecute (79: fallen off the bus).
EVICTING_XIDS = frozenset({79})
XID_DOUBLE_BIT_ECC = 48

TAINT_NO_SCHEDULE = "NoSchedule"
TAINT_NO_EXECUTE = "NoExecute"

_ENTRY_KEYS = frozenset(
    {"node", "gpu", "kind", "code", "count", "doubleBit", "aggregate", "start", "duration"}
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class FaultSpecError(ValueError):
    """One invalid declaration; ``field`` names what is wrong (``faults[2].code``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One validated declaration, with absolute start/end (unix seconds; ``end`` may be inf)."""

    id: str  # "<configmap>#<position>": stable while the entry stays where it is
    node: str
    gpu: str  # "3", "GPU-...", "MIG-..."
    kind: str
    start: float
    end: float
    code: int = 0
    count: int = 0
    double_bit: int = 0
    aggregate: int = 0

    def active(self, t: float) -> bool:
        return self.start <= t < self.end

    def describe(self) -> str:
        what = {
            KIND_XID: f"XID {self.code}",
            KIND_ECC: f"ECC errors ({self.count} single-bit, {self.double_bit} double-bit)",
            KIND_LOST: "GPU lost (fallen off the bus)",
            KIND_THERMAL: "thermal throttling",
            KIND_POWER: "power throttling",
            KIND_DEGRADED: "degraded performance",
        }[self.kind]
        return f"{what} on GPU {self.gpu}"


def parse_duration(value: object, field: str) -> float:
    """Seconds from ``90``, ``"90s"``, ``"5m"``, ``"1.5h"``."""
    if isinstance(value, bool):
        raise FaultSpecError(field, "must be a duration such as 30s, 5m or a number of seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise FaultSpecError(field, f"{value!r} is not a duration (examples: 30s, 5m, 1h, 120)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise FaultSpecError(field, "must be a non-negative duration")
    return seconds


def parse_time(value: object, field: str, created: float) -> float:
    """An RFC 3339 time, or a duration counted from ``created`` (the ConfigMap's creation)."""
    if isinstance(value, dt.datetime):  # YAML reads unquoted timestamps as datetimes
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return stamp.timestamp()
    text = str(value)
    if "T" in text or "-" in text:
        try:
            stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise FaultSpecError(field, f"{text!r} is not an RFC 3339 time") from exc
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return stamp.timestamp()
    return created + parse_duration(value, field)


def _int_field(entry: Mapping[str, Any], key: str, field: str, *, minimum: int = 0) -> int:
    value = entry.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FaultSpecError(f"{field}.{key}", f"must be an integer >= {minimum}, got {value!r}")
    return value


def parse_entry(entry: object, field: str, source: str, created: float) -> FaultSpec:
    """Validate one declaration; raises :class:`FaultSpecError` naming the bad field."""
    if not isinstance(entry, Mapping):
        raise FaultSpecError(field, "must be a mapping with node, gpu and kind")
    unknown = sorted(str(k) for k in entry if k not in _ENTRY_KEYS)
    if unknown:
        raise FaultSpecError(
            f"{field}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(_ENTRY_KEYS))})"
        )
    node = entry.get("node")
    if not isinstance(node, str) or not node:
        raise FaultSpecError(f"{field}.node", "required: the node's name")
    gpu = entry.get("gpu")
    if isinstance(gpu, bool) or gpu is None:
        raise FaultSpecError(f"{field}.gpu", "required: a GPU index, GPU UUID or MIG UUID")
    if isinstance(gpu, int):
        if gpu < 0:
            raise FaultSpecError(f"{field}.gpu", "an index must be >= 0")
    elif not isinstance(gpu, str) or not (
        gpu.isdigit() or gpu.upper().startswith(("GPU-", "MIG-"))
    ):
        raise FaultSpecError(f"{field}.gpu", f"{gpu!r} is not an index, GPU-... or MIG-... UUID")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise FaultSpecError(f"{field}.kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    code = count = double_bit = aggregate = 0
    if kind == KIND_XID:
        if "code" not in entry:
            raise FaultSpecError(f"{field}.code", "required for kind xid (e.g. 79, 48, 13)")
        code = _int_field(entry, "code", field, minimum=1)
    elif "code" in entry:
        raise FaultSpecError(f"{field}.code", f"only for kind xid, not {kind}")
    if kind == KIND_ECC:
        count = _int_field(entry, "count", field)
        double_bit = _int_field(entry, "doubleBit", field)
        aggregate = _int_field(entry, "aggregate", field)
        if count == 0 and double_bit == 0:
            count = 1  # "an ECC error" without numbers: one correctable error
    elif kind == KIND_DEGRADED:
        count = _int_field(entry, "count", field) or 100
    else:
        for key in ("count", "doubleBit", "aggregate"):
            if key in entry:
                raise FaultSpecError(f"{field}.{key}", f"not used by kind {kind}")
    start = (
        parse_time(entry["start"], f"{field}.start", created)
        if entry.get("start") is not None
        else created
    )
    end = math.inf
    if entry.get("duration") is not None:
        length = parse_duration(entry["duration"], f"{field}.duration")
        if length == 0:
            raise FaultSpecError(f"{field}.duration", "must be > 0 (remove the entry to clear)")
        end = start + length
    return FaultSpec(
        id=f"{source}#{field}",
        node=node,
        gpu=str(gpu),
        kind=str(kind),
        start=start,
        end=end,
        code=code,
        count=count,
        double_bit=double_bit,
        aggregate=aggregate,
    )


def parse_document(
    text: str | None, source: str, created: float
) -> tuple[list[FaultSpec], list[FaultSpecError]]:
    """Every valid entry of one ConfigMap's ``faults.yaml``, and one error per invalid entry
    (invalid entries are ignored, the others still apply)."""
    import yaml

    if text is None:
        return [], [FaultSpecError(FAULTS_DATA_KEY, "the ConfigMap has no such data key")]
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [], [FaultSpecError(FAULTS_DATA_KEY, f"not valid YAML: {exc}")]
    if isinstance(raw, Mapping):
        raw = raw.get("faults")
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        return [], [FaultSpecError(FAULTS_DATA_KEY, "must be a list of faults")]
    specs, errors = [], []
    for i, entry in enumerate(raw):
        try:
            specs.append(parse_entry(entry, f"faults[{i}]", source, created))
        except FaultSpecError as exc:
            errors.append(exc)
    return specs, errors


# --- what a fault means -----------------------------------------------------------------------


def is_critical(fault: Mapping[str, Any]) -> bool:
    """Whether a record fault makes its device Unhealthy (NVIDIA's device-plugin rule: every
    XID except the application ones; a lost GPU; a double-bit ECC error, which the driver
    reports as XID 48)."""
    kind = fault.get("kind")
    if kind == RECORD_LOST:
        return True
    if kind == KIND_XID:
        code = fault.get("code")
        return isinstance(code, int) and code not in APPLICATION_XIDS
    return False


def is_evicting(fault: Mapping[str, Any]) -> bool:
    """Whether workloads on the device cannot continue either (DRA taint NoExecute)."""
    kind = fault.get("kind")
    return kind == RECORD_LOST or (kind == KIND_XID and fault.get("code") in EVICTING_XIDS)


def record_faults(spec: FaultSpec, mig: str = "") -> list[dict[str, Any]]:
    """The ``GpuRecord.faults`` entries one active declaration becomes."""
    base: dict[str, Any] = {"injected": spec.id, "since": round(spec.start, 3)}
    if math.isfinite(spec.end):
        base["until"] = round(spec.end, 3)
    if mig:
        base["mig"] = mig
    if spec.kind == KIND_XID:
        return [{"kind": KIND_XID, "code": spec.code, **base}]
    if spec.kind == KIND_ECC:
        out = [
            {
                "kind": KIND_ECC,
                "sbeVolatile": spec.count,
                "dbeVolatile": spec.double_bit,
                "sbeAggregate": spec.count + spec.aggregate,
                "dbeAggregate": spec.double_bit,
                **base,
            }
        ]
        if spec.double_bit:
            # The driver reports an uncorrectable ECC error as XID 48 too.
            out.append({"kind": KIND_XID, "code": XID_DOUBLE_BIT_ECC, **base})
        return out
    if spec.kind == KIND_LOST:
        return [{"kind": RECORD_LOST, **base}]
    if spec.kind in (KIND_THERMAL, KIND_POWER):
        return [{"kind": spec.kind, **base}]
    # Degraded: a flaky link retrains and replays (what DCGM_FI_DEV_PCIE_REPLAY_COUNTER and
    # nvidia-smi's "Replays Since Reset" show); the device stays Healthy.
    return [
        {"kind": RECORD_DEGRADED, **base},
        {"kind": RECORD_PCIE_REPLAY, "count": spec.count, **base},
    ]


def _active_now(fault: Mapping[str, Any], t: float | None) -> bool:
    if t is None:
        return True
    since = fault.get("since") or 0.0
    until = fault.get("until") or math.inf
    return bool(since <= t < until)


def gpu_lost(faults: Iterable[Mapping[str, Any]], t: float | None = None) -> bool:
    """Whether a lost-GPU fault of the whole GPU is active (nvidia-smi then fails)."""
    return any(
        f.get("kind") == RECORD_LOST and not f.get("mig") and _active_now(f, t) for f in faults
    )


def _normalized(fault: Mapping[str, Any]) -> Mapping[str, Any]:
    """``{xid: 48}`` (the record's earliest spelling) as ``{kind: xid, code: 48}``."""
    legacy = fault.get("xid")
    if "kind" not in fault and isinstance(legacy, int) and not isinstance(legacy, bool):
        return {**fault, "kind": KIND_XID, "code": legacy}
    return fault


def device_taints(
    faults: Sequence[Mapping[str, Any]],
    healthy: bool,
    *,
    driver: str,
    xid_key: str,
    lost_key: str,
    mig: str = "",
) -> list[dict[str, str]]:
    """The DRA device taints the real driver would set for these faults: ``<driver>/xid=<code>``
    for the latest critical XID, else ``<driver>/gpu-lost`` (also for a device Unhealthy for
    another reason); NoExecute when the fault stops running workloads too, else NoSchedule.
    ``mig``: the MIG device asked about (whole-GPU faults apply to it as well)."""
    mine = [_normalized(f) for f in faults if not f.get("mig") or f.get("mig") == mig]
    critical = [f for f in mine if is_critical(f)]
    if healthy and not critical:
        return []
    effect = TAINT_NO_EXECUTE if any(is_evicting(f) for f in critical) else TAINT_NO_SCHEDULE
    xids = [f for f in critical if f.get("kind") == KIND_XID]
    if xids and not any(f.get("kind") == RECORD_LOST for f in critical):
        latest = max(xids, key=lambda f: float(f.get("since") or 0.0))
        return [{"key": f"{driver}/{xid_key}", "value": str(latest["code"]), "effect": effect}]
    return [{"key": f"{driver}/{lost_key}", "value": "true", "effect": effect}]


# --- DCGM health watches (DCGM_EXP_GPU_HEALTH_STATUS) -----------------------------------------

# Which DCGM health watch system reports a critical XID, and with which error code. DCGM's own
# mapping is not published per XID; ours follows the XID's meaning: memory errors to MEM (48/94
# double-bit, 95 uncontained, 63/64 row remapping), fallen off the bus to PCIE, the rest to SM.
_MEMORY_XIDS = {
    48: HEALTH_FR_VOLATILE_DBE,
    94: HEALTH_FR_VOLATILE_DBE,
    95: HEALTH_FR_UNCONTAINED,
    63: HEALTH_FR_XID_ERROR,
    64: HEALTH_FR_ROW_REMAP_FAILURE,
}


def _health_finding(fault: Mapping[str, Any]) -> tuple[str, str] | None:
    """(system, error code) a fault shows under, or None for faults DCGM health ignores."""
    kind = fault.get("kind")
    if kind == RECORD_LOST:
        return "PCIE", HEALTH_FR_XID_ERROR
    if kind == KIND_XID:
        code = fault.get("code")
        if not isinstance(code, int) or code in APPLICATION_XIDS:
            return None
        if code in _MEMORY_XIDS:
            return "MEM", _MEMORY_XIDS[code]
        return ("PCIE" if code in EVICTING_XIDS else "SM"), HEALTH_FR_XID_ERROR
    if kind == KIND_ECC:
        if (fault.get("dbeVolatile") or 0) > 0:
            return "MEM", HEALTH_FR_VOLATILE_DBE
        return "MEM", HEALTH_FR_VOLATILE_SBE
    if kind == KIND_THERMAL:
        return "THERMAL", HEALTH_FR_THROTTLE_THERMAL
    if kind == KIND_POWER:
        return "POWER", HEALTH_FR_THROTTLE_POWER
    if kind == RECORD_PCIE_REPLAY:
        return "PCIE", HEALTH_FR_PCI_REPLAY_RATE
    return None


def dcgm_health(
    faults: Iterable[Mapping[str, Any]], t: float | None = None
) -> dict[str, tuple[int, str]]:
    """Every DCGM health watch system of one GPU -> (result, error code) at ``t``.

    FAIL exactly when the GPU is Unhealthy by :func:`is_critical` (NVIDIA's device-plugin rule)
    for a fault on the whole GPU; a critical fault on one MIG device only (the GPU stays
    Healthy, as in the record) and the non-critical kinds (single-bit ECC, thermal, power,
    PCIe replays) WARN; application XIDs leave the GPU passing. Unaffected systems PASS with
    DCGM_FR_OK."""
    out = dict.fromkeys(HEALTH_WATCH_SYSTEMS, (HEALTH_RESULT_PASS, HEALTH_FR_OK))
    for raw in faults:
        if not isinstance(raw, Mapping) or not _active_now(raw, t):
            continue
        fault = _normalized(raw)
        finding = _health_finding(fault)
        if finding is None:
            continue
        system, code = finding
        whole_gpu_critical = is_critical(fault) and not fault.get("mig")
        result = HEALTH_RESULT_FAIL if whole_gpu_critical else HEALTH_RESULT_WARN
        if result > out[system][0]:
            out[system] = (result, code)
    return out
