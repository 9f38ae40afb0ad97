"""What a pod does to a GPU: utilisation range and framebuffer use (``PodUsage``).

Rules (reference §3.1.3, with its weak points fixed):

1. Framebuffer used = the pod's share of the GPU: annotation ``gpu-memory`` (MiB, or a quantity
   such as ``4Gi``) if present, else ``gpu-fraction`` x GPU memory, else the whole GPU. Set even
   while the pod is not running (memory is reserved from admission).
2. Not running, or named ``runai-idle-gpu-*``: utilisation 0.
3. Annotation ``run.ai/simulated-gpu-utilization``: ``"N"`` or ``"N-M"`` with 0 <= N <= M <= 100.
   A malformed value is reported (one Warning Event on the pod) and ignored, never a crash.
4. Else by workload class (label ``workloadKind``, else the pod's PodGroup priority class):
   ``train`` 80-100; ``build``/``interactive``/``interactive-preemptible``/``distributed`` 0;
   ``inference``/``distributed-inference`` from Knative request rate (Prometheus).
5. Else the configured default (``DEFAULT_GPU_UTILIZATION``): the reference's fixed 100 % made
   every unannotated pod look saturated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from fgo_common import annotations as ann
from fgo_common.topology import PodUsage, UtilizationRange
from fgo_common.units import MemoryParseError, parse_memory_mib

from fgo_status_updater.findings import Finding, pod_ref
from fgo_status_updater.podinfo import Obj, annotations_of, is_running, labels_of, meta, pod_uid

# workloadKind label -> workload class (Run:ai priority class names).
WORKLOAD_KIND_CLASS: dict[str, str] = {
    "TrainingWorkload": "train",
    # The reference maps DistributedWorkload to distributed-inference (Knative): a distributed
    # *training* job would then show its inference request rate. It trains, so it is "train".
    "DistributedWorkload": "train",
    "InteractiveWorkload": "interactive",
    "InferenceWorkload": "inference",
    "DistributedInferenceWorkload": "distributed-inference",
}
CLASS_UTILIZATION: dict[str, tuple[int, int]] = {
    "train": (80, 100),
    "build": (0, 0),
    "interactive-preemptible": (0, 0),
    "interactive": (0, 0),
    "distributed": (0, 0),
}
KNATIVE_CLASSES = frozenset({"inference", "distributed-inference"})

_RANGE_RE = re.compile(r"^\s*(\d{1,3})\s*(?:-\s*(\d{1,3})\s*)?$")


class UtilizationFormatError(ValueError):
    """A utilisation value outside ``"N"`` / ``"N-M"`` with 0 <= N <= M <= 100."""


def parse_utilization(value: str) -> UtilizationRange:
    """``"N"`` -> N..N, ``"N-M"`` -> N..M; raises :class:`UtilizationFormatError`."""
    match = _RANGE_RE.match(value)
    if not match:
        raise UtilizationFormatError(
            f'{value!r} is not a percentage or a range (expected "N" or "N-M", 0-100)'
        )
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else low
    if high > 100:
        raise UtilizationFormatError(f"{value!r}: percentages go up to 100")
    if low > high:
        raise UtilizationFormatError(f"{value!r}: the range's lower end is above its upper end")
    return UtilizationRange(low, high)


@dataclass(frozen=True, slots=True)
class UsagePolicy:
    default_utilization: UtilizationRange = field(default_factory=lambda: UtilizationRange(50, 90))


def workload_class(pod: Obj, pod_groups: Mapping[str, str]) -> str:
    """Workload class from the ``workloadKind`` label, else the PodGroup's priority class
    (``pod_groups`` maps ``"<namespace>/<podgroup>"`` to ``spec.priorityClassName``)."""
    kind = labels_of(pod).get(ann.WORKLOAD_KIND_LABEL)
    if kind in WORKLOAD_KIND_CLASS:
        return WORKLOAD_KIND_CLASS[kind]
    group = annotations_of(pod).get(ann.POD_GROUP_NAME)
    if group:
        return pod_groups.get(f"{meta(pod).get('namespace', '')}/{group}", "")
    return ""


def is_knative(pod: Obj, pod_groups: Mapping[str, str]) -> bool:
    return workload_class(pod, pod_groups) in KNATIVE_CLASSES


def fb_used_mib(pod: Obj, gpu_memory_mib: int, findings: list[Finding]) -> int:
    notes = annotations_of(pod)
    if ann.GPU_MEMORY in notes:
        try:
            wanted = parse_memory_mib(notes[ann.GPU_MEMORY])
            if wanted <= 0:
                raise MemoryParseError("must be positive")
            return min(gpu_memory_mib, wanted)
        except (MemoryParseError, ValueError, TypeError) as exc:
            findings.append(
                Finding(
                    pod_ref(pod),
                    "InvalidGpuMemoryAnnotation",
                    f"annotation {ann.GPU_MEMORY}={notes[ann.GPU_MEMORY]!r} ignored: {exc}; "
                    'expected MiB (e.g. "4096") or a quantity (e.g. "4Gi")',
                )
            )
    if ann.GPU_FRACTION in notes:
        raw = notes[ann.GPU_FRACTION]
        try:
            fraction = float(raw)
        except ValueError:
            fraction = -1.0
        if 0.0 < fraction <= 1.0:
            return int(gpu_memory_mib * fraction)
        findings.append(
            Finding(
                pod_ref(pod),
                "InvalidGpuFractionAnnotation",
                f"annotation {ann.GPU_FRACTION}={raw!r} ignored: expected a number in (0, 1]",
            )
        )
    return gpu_memory_mib


def pod_usage(
    pod: Obj,
    gpu_memory_mib: int,
    *,
    policy: UsagePolicy,
    pod_groups: Mapping[str, str],
    knative_percent: int | None,
    previous: PodUsage | None,
    since: float,
    findings: list[Finding],
) -> PodUsage:
    """The usage entry of ``pod`` on one GPU of ``gpu_memory_mib``.

    ``knative_percent`` is the latest Prometheus-derived value (None: none yet); without one a
    Knative pod keeps what the previous record said (so a restart does not reset it), else 0.
    """
    m = meta(pod)
    usage = PodUsage(
        fb_used_mib=fb_used_mib(pod, gpu_memory_mib, findings),
        namespace=str(m.get("namespace", "")),
        pod=str(m.get("name", "")),
        since=since,
    )
    if not is_running(pod) or str(m.get("name", "")).startswith(ann.IDLE_POD_PREFIX):
        return usage
    raw = annotations_of(pod).get(ann.SIMULATED_UTILIZATION)
    if raw is not None:
        try:
            usage.utilization = parse_utilization(raw)
            return usage
        except UtilizationFormatError as exc:
            findings.append(
                Finding(
                    pod_ref(pod),
                    "InvalidUtilizationAnnotation",
                    f"annotation {ann.SIMULATED_UTILIZATION} ignored: {exc}; "
                    "using the workload's default",
                )
            )
    klass = workload_class(pod, pod_groups)
    if klass in KNATIVE_CLASSES:
        usage.use_knative = True
        value = knative_percent
        if value is None:
            value = previous.utilization.max if previous and previous.use_knative else 0
        usage.utilization = UtilizationRange(value, value)
        return usage
    if klass in CLASS_UTILIZATION:
        low, high = CLASS_UTILIZATION[klass]
        usage.utilization = UtilizationRange(low, high)
        return usage
    default = policy.default_utilization
    usage.utilization = UtilizationRange(default.min, default.max)
    return usage


__all__ = [
    "UsagePolicy",
    "UtilizationFormatError",
    "is_knative",
    "parse_utilization",
    "pod_uid",
    "pod_usage",
    "workload_class",
]
