"""Built-in GPU profiles: sane values, lookups, and the H100 MIG table against the real capture."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from fgo_common.profiles import BUILTIN_CATALOG, GpuProfile

DATA = Path(__file__).parent / "data" / "nvidia-smi-h100"
SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "reference" / "nvidia-smi-h100"


@dataclass(frozen=True)
class LgipRow:
    name: str
    gi_id: int
    total: int
    memory_gib: str
    p2p: bool
    sm: int
    dec: int
    enc: int
    ce: int
    jpg: int
    ofa: int


_ROW1 = re.compile(
    r"^\|\s+(\d+)\s+MIG (\S+)\s+(\d+)\s+(\d+)/(\d+)\s+([\d.]+)\s+(Yes|No)"
    r"\s+(\d+)\s+(\d+)\s+(\d+)\s+\|$"
)
_ROW2 = re.compile(r"^\|\s+(\d+)\s+(\d+)\s+(\d+)\s+\|$")


def parse_lgip(text: str) -> list[LgipRow]:
    """Parse `nvidia-smi mig -lgip`: each profile is a row plus a CE/JPEG/OFA continuation row."""
    rows: list[LgipRow] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _ROW1.match(line)
        if not m:
            continue
        m2 = _ROW2.match(lines[i + 1])
        assert m2, f"no continuation row after {line!r}"
        rows.append(
            LgipRow(
                name=m[2],
                gi_id=int(m[3]),
                total=int(m[5]),
                memory_gib=m[6],
                p2p=m[7] == "Yes",
                sm=int(m[8]),
                dec=int(m[9]),
                enc=int(m[10]),
                ce=int(m2[1]),
                jpg=int(m2[2]),
                ofa=int(m2[3]),
            )
        )
    return rows


def test_capture_copies_match_shared_reference() -> None:
    if not SHARED.is_dir():
        pytest.skip("shared reference directory not present")
    for copy in DATA.iterdir():
        if copy.suffix in {".txt", ".json"}:
            assert copy.read_bytes() == (SHARED / copy.name).read_bytes(), copy.name


def h100() -> GpuProfile:
    return BUILTIN_CATALOG.get("NVIDIA H100 80GB HBM3")


def test_h100_mig_table_equals_mig_lgip_capture() -> None:
    rows = parse_lgip((DATA / "mig_lgip.txt").read_text())
    assert len(rows) == 7
    profile = h100()
    # Same profiles, same order as nvidia-smi prints them.
    assert [r.name for r in rows] == [p.name for p in profile.mig_profiles]
    for row in rows:
        mig = profile.mig_profile(row.name)
        assert mig.gi_profile_id == row.gi_id, row.name
        assert mig.max_instances == row.total, row.name
        # nvidia-smi prints MiB / 1024 with two decimals.
        assert f"{mig.memory_mib / 1024:.2f}" == row.memory_gib, row.name
        assert mig.p2p == row.p2p
        assert (mig.sm_count, mig.decoders, mig.encoders) == (row.sm, row.dec, row.enc), row.name
        assert (mig.copy_engines, mig.jpeg, mig.ofa) == (row.ce, row.jpg, row.ofa), row.name


def test_h100_mig_table_equals_nvml_capture() -> None:
    nvml = json.loads((DATA / "nvml.json").read_text())
    reported = nvml["devices"][0]["GpuInstanceProfiles"]
    profile = h100()
    by_index = {p.nvml_profile_index: p for p in profile.mig_profiles}
    supported = {int(k): v for k, v in reported.items() if isinstance(v, dict)}
    assert set(by_index) == set(supported)
    for index, info in supported.items():
        mig = by_index[index]
        assert mig.gi_profile_id == info["id"]
        assert mig.compute_slices == info["sliceCount"]
        assert mig.max_instances == info["instanceCount"]
        assert mig.sm_count == info["multiprocessorCount"]
        assert mig.copy_engines == info["copyEngineCount"]
        assert mig.decoders == info["decoderCount"]
        assert mig.encoders == info["encoderCount"]
        assert mig.jpeg == info["jpegCount"]
        assert mig.ofa == info["ofaCount"]
        assert mig.memory_mib == info["memorySizeMB"]
        assert mig.p2p == bool(info["isP2pSupported"])


def _q_value(text: str, key: str) -> str:
    m = re.search(rf"^\s*{re.escape(key)}\s+: (.*)$", text, re.MULTILINE)
    assert m, key
    return m[1].strip()


def test_h100_profile_matches_smi_q_capture() -> None:
    text = (DATA / "smi_q.txt").read_text()
    nvml = json.loads((DATA / "nvml.json").read_text())["devices"][0]
    p = h100()
    assert p.name == _q_value(text, "Product Name") == nvml["Name"]
    assert p.brand == _q_value(text, "Product Brand")
    assert p.architecture == _q_value(text, "Product Architecture").lower()
    assert p.vbios_version == _q_value(text, "VBIOS Version") == nvml["VbiosVersion"]
    assert p.board_part_number == _q_value(text, "Board Part Number")
    assert p.gpu_part_number == _q_value(text, "GPU Part Number")
    assert p.inforom_image_version == _q_value(text, "Image Version")
    assert f"0x{p.pci_device_id:08X}" == _q_value(text, "Device Id")
    assert p.pci_device_id == nvml["PciInfo"]["pciDeviceId"]
    assert f"0x{p.pci_subsystem_id:08X}" == _q_value(text, "Sub System Id")
    assert f"{p.memory_mib} MiB" == _q_value(text, "Total")
    assert p.memory_mib == nvml["MemoryInfo"]["total"] // 2**20
    assert f"{p.memory_reserved_mib} MiB" == _q_value(text, "Reserved")
    assert p.bar1_mib == nvml["BAR1MemoryInfo"]["bar1Total"] // 2**20
    assert p.cuda_cores == nvml["NumGpuCores"]
    assert list(p.compute_capability) == nvml["CudaComputeCapability"]
    assert p.driver_version == _q_value(text, "Driver Version")
    assert p.cuda_version == _q_value(text, "CUDA Version")
    assert f"{p.power_default_limit_w:.2f} W" == _q_value(text, "Default Power Limit")
    assert f"{p.power_min_limit_w:.2f} W" == _q_value(text, "Min Power Limit")
    assert f"{p.power_max_limit_w:.2f} W" == _q_value(text, "Max Power Limit")
    assert p.clock_sm_max_mhz == nvml["MaxClockSM"]
    assert p.clock_mem_mhz == nvml["ClockMem"]
    assert (p.fan_count == 0) == (_q_value(text, "Fan Speed") == "N/A")
    # T.Limit values are printed relative to the max operating temperature.
    current = int(_q_value(text, "GPU Current Temp").split()[0])
    assert f"{p.temp_max_operating_c - current} C" == _q_value(text, "GPU T.Limit Temp")
    assert f"{p.temp_max_operating_c - p.temp_shutdown_c} C" == _q_value(
        text, "GPU Shutdown T.Limit Temp"
    )
    assert f"{p.temp_max_operating_c - p.temp_slowdown_c} C" == _q_value(
        text, "GPU Slowdown T.Limit Temp"
    )
