"""Injected faults as nvidia-smi shows them (docs/faults.md): a lost GPU among several, clock
event reasons and their counters, degraded clocks; every number equals the telemetry model's,
which the status-exporter's tests check its metrics against (services do not import each
other, so the common model is the meeting point)."""

from __future__ import annotations

import re

from fgo_common.telemetry import GpuSample, profile_for, sample_gpu
from fgo_common.topology import GpuRecord
from fgo_nvidia_smi.main import lost_gpu_message
from smi_fixtures import busy, hgx_node
from smi_testlib import CAPTURE_TIME, Runner

LOST = (
    "Unable to determine the device handle for GPU{}: "
    "GPU is lost.  Reboot the system to recover this GPU\n"
)


def _model(gpu: GpuRecord) -> GpuSample:
    return sample_gpu(gpu, profile_for(gpu), CAPTURE_TIME)


def test_lost_message_names_the_bus_id_without_a_space() -> None:
    assert lost_gpu_message("00000000:1B:00.0") == LOST.format("0000:1B:00.0")


def test_one_lost_gpu_of_eight_fails_the_tool_with_only_its_line(smi: Runner) -> None:
    node = hgx_node()
    node.gpus[3].faults = [{"kind": "lost", "injected": "cm#faults[0]", "since": CAPTURE_TIME - 5}]
    for args in ((), ("-L",), ("-q",), ("--query-gpu=index,name", "--format=csv")):
        result = smi(*args, node=node)
        assert result.code == 15, (args, result)
        assert result.out == LOST.format(node.gpus[3].bus_id[-12:]), (args, result.out)
    # A container that sees only healthy GPUs is not affected.
    visible = ",".join(g.id for g in node.gpus[:2])
    result = smi("-L", node=node, NVIDIA_VISIBLE_DEVICES=visible)
    assert result.code == 0 and "GPU is lost" not in result.out, result
    # Before the fault starts, nothing is lost.
    node.gpus[3].faults[0]["since"] = CAPTURE_TIME + 60
    assert smi("-L", node=node).code == 0


def test_thermal_and_power_reasons_match_the_exporter(smi: Runner) -> None:
    node = hgx_node()
    hot, braked = node.gpus[0], node.gpus[1]
    hot.faults = [{"kind": "thermal", "since": CAPTURE_TIME - 90}]
    braked.faults = [{"kind": "power", "since": CAPTURE_TIME - 7.5}]
    fields = (
        "clocks_event_reasons.active,clocks_event_reasons.hw_thermal_slowdown,"
        "clocks_event_reasons.hw_power_brake_slowdown,"
        "clocks_event_reasons_counters.hw_thermal_slowdown,"
        "clocks_event_reasons_counters.hw_power_brake_slowdown"
    )
    result = smi(f"--query-gpu={fields}", "--format=csv,noheader,nounits", node=node)
    assert result.code == 0, result
    rows = [row.split(", ") for row in result.out.splitlines()]
    for gpu, row in ((hot, rows[0]), (braked, rows[1])):
        model = _model(gpu)
        assert int(row[0], 16) == model.clocks_event_reasons
        assert (int(row[3]), int(row[4])) == (
            model.thermal_violation_ns // 1000,
            model.power_brake_ns // 1000,
        )
    assert rows[0][1:3] == ["Active", "Not Active"] and int(rows[0][3]) == 90_000_000
    assert rows[1][1:3] == ["Not Active", "Active"] and int(rows[1][4]) == 7_500_000
    assert rows[2][1:5] == ["Not Active", "Not Active", "0", "0"]

    text = smi("-q", "-d", "PERFORMANCE", "-i", "0", node=node).out
    assert re.search(r"HW Thermal Slowdown\s+: Active", text), text
    assert re.search(r"HW Thermal Slowdown\s+: 90000000 us", text), text


def test_degraded_gpu_runs_slower_in_both_tools(smi: Runner) -> None:
    node = hgx_node()
    slow, fast = node.gpus[4], node.gpus[5]
    for gpu in (slow, fast):
        gpu.status = busy(f"pod-{gpu.index}", f"uid-{gpu.index}", 80, 80, 1000)
    slow.faults = [{"kind": "degraded", "since": CAPTURE_TIME - 60}]
    result = smi("--query-gpu=index,clocks.sm", "--format=csv,noheader,nounits", node=node)
    clocks = dict(row.split(", ") for row in result.out.splitlines())
    assert int(clocks["4"]) == _model(slow).sm_clock_mhz
    assert int(clocks["5"]) == _model(fast).sm_clock_mhz
    assert int(clocks["4"]) < int(clocks["5"])
    assert int(clocks["4"]) <= profile_for(slow).clock_sm_base_mhz * 0.7
    # No clock event reason names it (NVIDIA has none for this).
    assert _model(slow).clocks_event_reasons == _model(fast).clocks_event_reasons
