"""Throttle reasons, violation counters, DCGM_EXP_CLOCK_EVENTS_COUNT and DCGM_EXP_GPU_HEALTH_STATUS
(opt-in families): names, HELP/TYPE, label order and values agree with the telemetry model
(and so with nvidia-smi, which reads the same model)."""

from __future__ import annotations

import re

from exporter_builders import T0, enable_mig, hold, node
from fgo_common.names import DCGM_NAMES, HEALTH_WATCH_SYSTEMS
from fgo_common.telemetry import (
    CLOCKS_EVENT_HW_SLOWDOWN,
    CLOCKS_EVENT_HW_THERMAL,
    profile_for,
    sample_gpu,
)
from fgo_common.topology import NodeTopology
from fgo_status_exporter.dcgm import DcgmCollector, ExporterOptions, ServedNode
from prometheus_client.parser import text_string_to_metric_families

EXTRAS = (
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
    "DCGM_FI_DEV_POWER_VIOLATION",
    "DCGM_FI_DEV_THERMAL_VIOLATION",
    "DCGM_FI_DEV_SYNC_BOOST_VIOLATION",
    "DCGM_EXP_CLOCK_EVENTS_COUNT",
    "DCGM_EXP_GPU_HEALTH_STATUS",
)


def _scrape(topo: NodeTopology, t: float = T0, **opts: object) -> str:
    options = ExporterOptions(names=DCGM_NAMES, extra_metrics=EXTRAS, **opts)  # type: ignore[arg-type]
    return DcgmCollector(options).scrape_text([ServedNode(topo, topo.node_name)], t)


def _lines(text: str, name: str, uuid: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(name + "{") and f'"{uuid}"' in ln]


def _value(line: str) -> int:
    return int(line.rpartition(" ")[2])


def test_families_parse_with_their_help_and_type() -> None:
    topo = node(count=1)
    text = _scrape(topo)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in EXTRAS:
        fld = DCGM_NAMES.field(name)
        assert f"# HELP {name} {fld.help}\n# TYPE {name} {fld.kind}\n" in text
    assert families["DCGM_EXP_GPU_HEALTH_STATUS"].type == "gauge"
    assert families["DCGM_FI_DEV_POWER_VIOLATION"].type == "counter"


def test_reasons_and_violations_follow_the_fault_and_the_model() -> None:
    topo = node(count=2)
    topo.gpus[1].faults = [{"kind": "thermal", "since": T0 - 42}]
    text = _scrape(topo)
    hot = topo.gpus[1]
    sample = sample_gpu(hot, profile_for(hot), T0)
    (reasons,) = _lines(text, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", hot.id)
    assert _value(reasons) == sample.clocks_event_reasons
    assert _value(reasons) & (CLOCKS_EVENT_HW_SLOWDOWN | CLOCKS_EVENT_HW_THERMAL)
    (old_name,) = _lines(text, "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", hot.id)
    assert _value(old_name) == _value(reasons)
    (thermal,) = _lines(text, "DCGM_FI_DEV_THERMAL_VIOLATION", hot.id)
    assert _value(thermal) == 42 * 10**9
    (cool,) = _lines(text, "DCGM_FI_DEV_THERMAL_VIOLATION", topo.gpus[0].id)
    assert _value(cool) == 0
    (cool_reasons,) = _lines(text, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", topo.gpus[0].id)
    assert not _value(cool_reasons) & CLOCKS_EVENT_HW_THERMAL


def test_clock_events_count_labels_and_zero_series() -> None:
    topo = node(count=2)
    hold(topo, 0)
    topo.gpus[1].faults = [{"kind": "power", "since": T0 - 3600}]
    text = _scrape(topo, clock_events_window_ms=60000, collect_interval_ms=30000)
    brake = [ln for ln in _lines(text, "DCGM_EXP_CLOCK_EVENTS_COUNT", topo.gpus[1].id)
             if 'clock_event="hw_power_brake"' in ln]  # fmt: skip
    assert len(brake) == 1 and _value(brake[0]) == 2
    # Labels: the GPU's head (ending with the driver label), then clock_event and the window,
    # then the pod attributes, as dcgm-exporter renders labels before attributes.
    held = _lines(text, "DCGM_EXP_CLOCK_EVENTS_COUNT", topo.gpus[0].id)
    assert held and all(
        re.search(r'DCGM_FI_DRIVER_VERSION="[^"]*",clock_event="\w+",window_size_in_ms="60000",'
                  r'container="train",namespace="ml",pod="trainer-0"\}', ln)
        for ln in held
    ), held  # fmt: skip
    # A GPU without any reason in the window: one 0 series without clock_event.
    quiet = node(count=1)
    hold(quiet, 0, util=(60, 60))
    (zero,) = _lines(_scrape(quiet), "DCGM_EXP_CLOCK_EVENTS_COUNT", quiet.gpus[0].id)
    assert "clock_event=" not in zero and 'window_size_in_ms="300000"' in zero
    assert _value(zero) == 0


def test_health_status_per_gpu_and_system() -> None:
    topo = node(count=3)
    topo.gpus[0].faults = [{"kind": "xid", "code": 79}]
    topo.gpus[1].faults = [{"kind": "xid", "code": 13}]  # application XID: passes
    text = _scrape(topo)
    for gpu, failing in ((topo.gpus[0], {"PCIE"}), (topo.gpus[1], set()), (topo.gpus[2], set())):
        lines = _lines(text, "DCGM_EXP_GPU_HEALTH_STATUS", gpu.id)
        systems = [re.search(r'health_watch="(\w+)"', ln)[1] for ln in lines]  # type: ignore[index]
        assert systems == list(HEALTH_WATCH_SYSTEMS)
        assert {s for s, ln in zip(systems, lines, strict=True) if _value(ln) == 20} == failing
        assert all(_value(ln) in (0, 20) for ln in lines)
    (pcie,) = [ln for ln in _lines(text, "DCGM_EXP_GPU_HEALTH_STATUS", topo.gpus[0].id)
               if 'health_watch="PCIE"' in ln]  # fmt: skip
    assert 'health_error_code="DCGM_FR_XID_ERROR",health_watch="PCIE"}' in pcie


def test_health_status_once_per_mig_gpu_without_instance_labels() -> None:
    topo = node(count=1, mig_strategy="mixed")
    enable_mig(topo, 0, [("1g.10gb", 0), ("1g.10gb", 1)])
    topo.gpus[0].faults = [{"kind": "xid", "code": 79, "mig": topo.gpus[0].mig_devices[1].uuid}]
    text = _scrape(topo)
    lines = _lines(text, "DCGM_EXP_GPU_HEALTH_STATUS", topo.gpus[0].id)
    assert len(lines) == len(HEALTH_WATCH_SYSTEMS)
    assert not any("GPU_I_ID" in ln for ln in lines)
    # A fault on one MIG device only: the GPU is not failed, PCIE warns.
    assert max(_value(ln) for ln in lines) == 10
    # Clock events are per GPU instance, like the other device-wide families.
    events = _lines(text, "DCGM_EXP_CLOCK_EVENTS_COUNT", topo.gpus[0].id)
    assert {re.search(r'GPU_I_ID="(\d+)"', ln)[1] for ln in events} == {"1", "2"}  # type: ignore[index]
