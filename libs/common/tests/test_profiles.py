"""Built-in GPU profiles: sane values, lookups, and the H100 MIG table against the real capture."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from fgo_common.profiles import (
    BUILTIN_CATALOG,
    GpuProfile,
    MigProfile,
    ProfileCatalog,
    UnknownProfileError,
    normalise_product,
)
from fgo_common.profiles._data import BUILTIN_PROFILES
from fgo_common.profiles.data._helpers import CI_PROFILE_FOR_SLICES, sourced
from fgo_common.profiles.mig_layout import (
    MigLayout,
    MigLayoutError,
    MigRequest,
    compute_slice_count,
    layout_names,
    memory_slice_count,
    named_layout,
    named_layouts,
    plan_layout,
    smallest_layout_name,
)

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


# ---------------------------------------------------------------------------------------------
# Every built-in profile is sane and sourced.

# NVML architecture -> (allowed compute capabilities, FP32 cores per SM).
ARCHITECTURES: dict[str, tuple[set[tuple[int, int]], dict[tuple[int, int], int]]] = {
    "kepler": ({(3, 0), (3, 5), (3, 7)}, {(3, 7): 192}),
    "turing": ({(7, 5)}, {(7, 5): 64}),
    "ampere": ({(8, 0), (8, 6), (8, 7)}, {(8, 0): 64, (8, 6): 128}),
    "ada lovelace": ({(8, 9)}, {(8, 9): 128}),
    "hopper": ({(9, 0)}, {(9, 0): 128}),
    "blackwell": ({(10, 0), (10, 3), (12, 0)}, {(10, 0): 128, (10, 3): 128}),
}


def gfd_family(cc: tuple[int, int]) -> str:
    """GPU Feature Discovery's nvidia.com/gpu.family rule (peers-and-standards.md 3.1)."""
    major, minor = cc
    if major == 7:
        return "volta" if minor < 5 else "turing"
    if major == 8:
        return "ada-lovelace" if minor == 9 else "ampere"
    return {3: "kepler", 5: "maxwell", 6: "pascal", 9: "hopper", 10: "blackwell"}[major]


def profile_ids(profile: GpuProfile) -> str:
    return profile.key


@pytest.fixture(params=BUILTIN_PROFILES, ids=profile_ids)
def gpu(request: pytest.FixtureRequest) -> GpuProfile:
    assert isinstance(request.param, GpuProfile)
    return request.param


def test_expected_builtin_set() -> None:
    assert {p.name for p in BUILTIN_PROFILES} == {
        "Tesla K80",
        "Tesla T4",
        "NVIDIA L4",
        "NVIDIA A10G",
        "NVIDIA L40S",
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA A100-SXM4-80GB",
        "NVIDIA H100 80GB HBM3",
        "NVIDIA H200",
        "NVIDIA B200",
        "NVIDIA GB200",
        "NVIDIA GB300",
    }
    assert len({p.key for p in BUILTIN_PROFILES}) == len(BUILTIN_PROFILES)


def test_memory_and_bar1(gpu: GpuProfile) -> None:
    assert gpu.memory_mib > 0
    assert 0 <= gpu.memory_reserved_mib < gpu.memory_mib * 0.05
    assert gpu.bar1_mib > 0
    assert gpu.memory_bus_width_bits % 64 == 0


def test_power_limits_ordered(gpu: GpuProfile) -> None:
    assert 0 < gpu.power_min_limit_w <= gpu.power_default_limit_w <= gpu.power_max_limit_w
    assert 0 < gpu.power_idle_w < gpu.power_default_limit_w


def test_clocks_ordered(gpu: GpuProfile) -> None:
    assert 0 < gpu.clock_sm_idle_mhz <= gpu.clock_sm_base_mhz < gpu.clock_sm_max_mhz
    assert gpu.clock_mem_mhz > 0
    assert 0 < gpu.clock_video_max_mhz <= gpu.clock_sm_max_mhz


def test_temperatures_ordered(gpu: GpuProfile) -> None:
    assert 0 < gpu.temp_idle_c < gpu.temp_max_load_c <= gpu.temp_max_operating_c
    assert gpu.temp_max_operating_c <= gpu.temp_slowdown_c < gpu.temp_shutdown_c
    assert abs(gpu.memory_temp_offset_c) <= 10


def test_architecture_matches_compute_capability(gpu: GpuProfile) -> None:
    allowed, cores_per_sm = ARCHITECTURES[gpu.architecture]
    assert gpu.compute_capability in allowed
    assert gpu.family == gfd_family(gpu.compute_capability)
    assert gpu.cuda_cores == gpu.sm_count * cores_per_sm[gpu.compute_capability]


def test_pci_identity(gpu: GpuProfile) -> None:
    assert gpu.pci_device_id & 0xFFFF == 0x10DE
    assert gpu.pci_subsystem_id & 0xFFFF == 0x10DE
    assert 3 <= gpu.pcie_generation <= 6
    assert gpu.pcie_link_width == 16


def test_strings_look_like_nvidia_smi(gpu: GpuProfile) -> None:
    assert re.fullmatch(r"[0-9A-F]{2}(\.[0-9A-F]{2}){4}", gpu.vbios_version)
    assert re.fullmatch(r"\d{3}-\w{5}-\w{4}-\w{3}", gpu.board_part_number)
    assert re.fullmatch(r"\d{3}\.\d+\.\d+", gpu.driver_version)
    assert re.fullmatch(r"\d+\.\d", gpu.cuda_version)
    assert gpu.brand in {"Tesla", "NVIDIA"}
    assert gpu.fan_count >= 0
    assert (gpu.nvlink_links == 0) == (gpu.nvlink_version == 0)


def test_every_value_has_a_source(gpu: GpuProfile) -> None:
    optional = {"gpu_part_number", "inforom_image_version"}
    for field in dataclasses.fields(gpu):
        if field.name in {"key", "aliases", "sources"}:
            continue
        if field.name in optional and getattr(gpu, field.name) == "N/A":
            continue
        assert gpu.sources.get(field.name, "").strip(), f"{gpu.key}.{field.name} has no source"
    assert set(gpu.sources) <= {f.name for f in dataclasses.fields(gpu)}


def test_sourced_rejects_a_field_with_two_sources() -> None:
    with pytest.raises(ValueError, match="two sources"):
        sourced(("a b", "x"), ("b", "y"))


def test_mig_capability_matches_generation(gpu: GpuProfile) -> None:
    expected = gpu.compute_capability in {(8, 0), (9, 0), (10, 0), (10, 3)}
    assert gpu.mig_capable == expected
    assert gpu.mig_max_gpu_instances == (7 if expected else 0)


# ---------------------------------------------------------------------------------------------
# MIG tables.

MIG_GPUS = [p for p in BUILTIN_PROFILES if p.mig_capable]


@pytest.fixture(params=MIG_GPUS, ids=profile_ids)
def mig_gpu(request: pytest.FixtureRequest) -> GpuProfile:
    assert isinstance(request.param, GpuProfile)
    return request.param


def test_mig_table_is_consistent(mig_gpu: GpuProfile) -> None:
    table = mig_gpu.mig_profiles
    assert len({m.name for m in table}) == len(table)
    assert len({m.gi_profile_id for m in table}) == len(table)
    assert len({m.nvml_profile_index for m in table}) == len(table)
    for m in table:
        compute = int(m.name.split("g.", 1)[0])
        assert compute == m.compute_slices, m.name
        assert m.ci_profile_id == CI_PROFILE_FOR_SLICES[m.compute_slices]
        assert all(p.size == m.memory_slices for p in m.placements), m.name
        assert len(m.placements) >= m.max_instances
        assert m.max_instances * m.memory_slices <= 8
        assert 0 < m.memory_mib < mig_gpu.memory_mib
        assert 0 < m.sm_count <= mig_gpu.sm_count
        assert m.copy_engines >= 1
    # 1g profiles come before bigger ones, as `nvidia-smi mig -lgip` lists them.
    assert [m.compute_slices for m in table] == sorted(m.compute_slices for m in table)
    full = table[-1]
    assert (full.compute_slices, full.memory_slices, full.gi_profile_id) == (7, 8, 0)
    # More memory slices never means less memory; more compute slices never fewer SMs.
    for a in table:
        for b in table:
            if a.memory_slices < b.memory_slices:
                assert a.memory_mib < b.memory_mib, (a.name, b.name)
            if a.compute_slices < b.compute_slices:
                assert a.sm_count < b.sm_count, (a.name, b.name)


def test_mig_names_round_memory_like_nvidia(mig_gpu: GpuProfile) -> None:
    """Profile names carry a nominal size close to the real MIG memory."""
    for m in mig_gpu.mig_profiles:
        nominal = int(m.name.split(".", 1)[1].split("gb", 1)[0])
        assert abs(nominal - m.memory_mib / 1024) <= nominal * 0.15, m.name


def test_reference_mig_faker_gi_ids() -> None:
    """upstream-reference.md 3.10: the GI profile ids the reference's mig-faker uses."""
    a100 = BUILTIN_CATALOG.get("A100-40GB")
    for name, gi in {
        "1g.5gb": 19,
        "1g.5gb+me": 20,
        "1g.10gb": 15,
        "2g.10gb": 14,
        "3g.20gb": 9,
        "4g.20gb": 5,
        "7g.40gb": 0,
    }.items():
        assert a100.mig_profile(name).gi_profile_id == gi
    for key in ("a100-80gb", "h100"):
        gpu = BUILTIN_CATALOG.get(key)
        for name, gi in {
            "1g.10gb": 19,
            "1g.10gb+me": 20,
            "1g.20gb": 15,
            "2g.20gb": 14,
            "3g.40gb": 9,
            "4g.40gb": 5,
            "7g.80gb": 0,
        }.items():
            assert gpu.mig_profile(name).gi_profile_id == gi


def test_h100_placements_follow_the_mig_user_guide() -> None:
    starts = {m.name: [p.start for p in m.placements] for m in h100().mig_profiles}
    assert starts == {
        "1g.10gb": [0, 1, 2, 3, 4, 5, 6],
        "1g.10gb+me": [0, 1, 2, 3, 4, 5, 6],
        "1g.20gb": [0, 2, 4, 6],
        "2g.20gb": [0, 2, 4],
        "3g.40gb": [0, 4],
        "4g.40gb": [0],
        "7g.80gb": [0],
    }


def test_mig_profile_lookup_by_resource_suffix() -> None:
    profile = h100().mig_profile("1g.10gb.me")
    assert isinstance(profile, MigProfile)
    assert profile.name == "1g.10gb+me"
    with pytest.raises(KeyError, match="allowed"):
        h100().mig_profile("1g.5gb")
    with pytest.raises(KeyError, match="not MIG-capable"):
        BUILTIN_CATALOG.get("L4").mig_profile("1g.10gb")


# ---------------------------------------------------------------------------------------------
# Catalog lookups.


def gfd_product_label(name: str) -> str:
    """GFD's nvidia.com/gpu.product sanitisation (peers-and-standards.md 3.1)."""
    kept = re.sub(r"[^A-Za-z0-9\-_. ]", "", name)
    return re.sub(r"\s+", "-", kept.strip())


def test_every_key_name_alias_and_gfd_label_resolves(gpu: GpuProfile) -> None:
    for spelling in (
        gpu.key,
        gpu.name,
        *gpu.aliases,
        gfd_product_label(gpu.name),
        gpu.name.lower(),
        gpu.name.upper(),
    ):
        assert BUILTIN_CATALOG.get(spelling) is gpu, spelling


def test_no_two_profiles_share_a_spelling() -> None:
    owners: dict[str, str] = {}
    for gpu in BUILTIN_PROFILES:
        for spelling in {normalise_product(s) for s in (gpu.key, gpu.name, *gpu.aliases)}:
            assert owners.setdefault(spelling, gpu.key) == gpu.key, spelling


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("H100", "h100-80gb-hbm3"),
        ("h100", "h100-80gb-hbm3"),
        ("NVIDIA-H100-80GB-HBM3", "h100-80gb-hbm3"),
        ("A100", "a100-40gb"),
        ("A100-40GB", "a100-40gb"),
        ("a100-80gb", "a100-80gb"),
        ("T4", "t4"),
        ("Tesla-T4", "t4"),
        ("L40S", "l40s"),
        ("B200", "b200"),
        ("GB200", "gb200"),
        ("Tesla-K80", "k80"),
        ("NVIDIA GB200 NVL", "gb200"),
        ("NVIDIA GB300", "gb300"),
        ("NVIDIA GB300 NVL", "gb300"),  # the reference profile's device_defaults.name
        ("NVIDIA-GB300", "gb300"),  # the GFD product label
        ("NVIDIA T4", "t4"),
        # The reference chart's profile keys (upstream-reference.md 1.4).
        ("a100", "a100-40gb"),
        ("b200", "b200"),
        ("gb200", "gb200"),
        ("gb300", "gb300"),
        ("l40s", "l40s"),
        ("t4", "t4"),
        ("l4", "l4"),
        ("a10g", "a10g"),
        ("h200", "h200"),
    ],
)
def test_user_spellings(spelling: str, key: str) -> None:
    assert BUILTIN_CATALOG.get(spelling).key == key


def test_unknown_name_lists_known_keys() -> None:
    with pytest.raises(UnknownProfileError, match="h100-80gb-hbm3"):
        BUILTIN_CATALOG.get("RTX 4090")
    assert BUILTIN_CATALOG.find("RTX 4090") is None


def test_custom_profile_overrides_by_alias() -> None:
    custom = dataclasses.replace(h100(), key="my-h100", aliases=("H100",), memory_mib=81920)
    catalog = BUILTIN_CATALOG.with_custom({"my-h100": custom})
    assert catalog.get("H100").memory_mib == 81920
    assert BUILTIN_CATALOG.get("H100").memory_mib == 81559
    assert isinstance(catalog, ProfileCatalog)


# ---------------------------------------------------------------------------------------------
# MIG layouts.


def gis(layout: MigLayout) -> list[tuple[str, int, str]]:
    return [(i.name, i.gi_id, f"{i.placement.start}:{i.placement.size}") for i in layout.instances]


def assert_physically_valid(gpu: GpuProfile, layout: MigLayout) -> None:
    used: set[int] = set()
    for inst in layout.instances:
        slices = set(inst.memory_slices)
        assert not used & slices, gis(layout)
        used |= slices
        assert inst.placement in inst.profile.placements
        assert inst.ci_id == 0
    assert layout.memory_slices_used <= memory_slice_count(gpu)
    assert layout.compute_slices_used <= compute_slice_count(gpu)
    assert len({i.gi_id for i in layout.instances}) == len(layout.instances)
    assert [i.gi_id for i in layout.instances] == sorted(i.gi_id for i in layout.instances)


def test_a100_all_1g_matches_nvidia_smi_lgi() -> None:
    """GPU operator docs: all-1g.5gb on A100 shows GIs 7..13 at placements 0:1..6:1."""
    layout = named_layout(BUILTIN_CATALOG.get("A100-40GB"), "all-1g.5gb")
    assert gis(layout) == [("1g.5gb", 7 + s, f"{s}:1") for s in range(7)]


def test_mixed_layout_matches_mig_user_guide_example() -> None:
    """MIG user guide: `-cgi 19,14,5` gives 1g at 6:1 (GI 13), 2g at 4:2 (GI 5), 4g at 0:4 (GI 1)."""
    layout = plan_layout(BUILTIN_CATALOG.get("A100-40GB"), ["1g.5gb", "2g.10gb", "4g.20gb"])
    assert gis(layout) == [("4g.20gb", 1, "0:4"), ("2g.10gb", 5, "4:2"), ("1g.5gb", 13, "6:1")]


@pytest.mark.parametrize(
    ("requests", "expected"),
    [
        # Public H100 transcripts of `-cgi 3g.40gb,3g.40gb` and `-cgi 3g.40gb,4g.40gb`.
        (["3g.40gb", "3g.40gb"], [("3g.40gb", 1, "4:4"), ("3g.40gb", 2, "0:4")]),
        (["3g.40gb", "4g.40gb"], [("3g.40gb", 1, "4:4"), ("4g.40gb", 2, "0:4")]),
        (["7g.80gb"], [("7g.80gb", 0, "0:8")]),
        (
            [("1g.20gb", 0), ("1g.20gb", 2), ("2g.20gb", 4), ("1g.10gb", 6)],
            [
                ("1g.20gb", 3, "0:2"),
                ("1g.20gb", 4, "2:2"),
                ("2g.20gb", 5, "4:2"),
                ("1g.10gb", 13, "6:1"),
            ],
        ),
        (
            [MigRequest("MIG 1g.10gb+me"), MigRequest("nvidia.com/mig-2g.20gb", 0)],
            [("2g.20gb", 3, "0:2"), ("1g.10gb+me", 13, "6:1")],
        ),
    ],
)
def test_valid_h100_layouts(
    requests: list[str | tuple[str, int] | MigRequest], expected: list[tuple[str, int, str]]
) -> None:
    layout = plan_layout(h100(), requests)
    assert layout.mig_enabled
    assert gis(layout) == expected
    assert_physically_valid(h100(), layout)


@pytest.mark.parametrize(
    ("key", "layout_name", "count", "memory_mib", "sms"),
    [
        ("h100", "all-balanced", 4, 2 * 9984 + 20096 + 40448, 2 * 16 + 32 + 60),
        ("a100-40gb", "all-balanced", 4, 2 * 4864 + 9856 + 19968, 2 * 14 + 28 + 42),
        ("a100-80gb", "all-1g.20gb", 4, 4 * 19968, 4 * 14),
        ("h200", "all-2g.35gb", 3, 3 * 33280, 3 * 32),
        ("b200", "all-7g.180gb", 1, 182016, 148),
        ("gb200", "all-1g.23gb", 7, 7 * 23296, 7 * 18),
        ("gb300", "all-1g.35gb", 7, 7 * 34816, 7 * 18),
        ("gb300", "all-balanced", 4, 2 * 34816 + 70144 + 140800, 2 * 18 + 36 + 66),
        ("a100-40gb", "all-1g.10gb", 4, 4 * 9856, 4 * 14),
    ],
)
def test_named_layouts(key: str, layout_name: str, count: int, memory_mib: int, sms: int) -> None:
    gpu = BUILTIN_CATALOG.get(key)
    layout = named_layout(gpu, layout_name)
    assert len(layout.instances) == count
    assert sum(i.memory_mib for i in layout.instances) == memory_mib
    assert sum(i.sm_count for i in layout.instances) == sms
    assert_physically_valid(gpu, layout)


def test_every_all_profile_layout_fits(mig_gpu: GpuProfile) -> None:
    """mig-parted's all-<profile> uses the profile's full instance count; it must fit."""
    for name in layout_names(mig_gpu):
        layout = named_layout(mig_gpu, name)
        assert_physically_valid(mig_gpu, layout)
    assert "all-balanced" in layout_names(mig_gpu)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a100-40gb", "all-1g.5gb"),
        ("a100-80gb", "all-1g.10gb"),
        ("h100", "all-1g.10gb"),
        ("h200", "all-1g.18gb"),
        ("b200", "all-1g.23gb"),
        ("gb200", "all-1g.23gb"),
    ],
)
def test_smallest_layout_name(key: str, expected: str) -> None:
    gpu = BUILTIN_CATALOG.get(key)
    assert smallest_layout_name(gpu) == expected
    assert len(named_layout(gpu, expected).instances) == 7


def test_disabled_and_enabled_layouts() -> None:
    for gpu in BUILTIN_PROFILES:
        disabled = named_layout(gpu, "all-disabled")
        assert (disabled.mig_enabled, disabled.instances) == (False, ())
    enabled = named_layout(h100(), "all-enabled")
    assert (enabled.mig_enabled, enabled.instances) == (True, ())
    per_gpu = named_layouts(h100(), "all-balanced", 8)
    assert len(per_gpu) == 8
    assert all(layout == per_gpu[0] for layout in per_gpu)


@pytest.mark.parametrize(
    ("key", "requests", "reason", "message"),
    [
        ("l4", ["1g.10gb"], "not-mig-capable", "NVIDIA L4 is not MIG-capable"),
        ("t4", [], "not-mig-capable", "not MIG-capable"),
        ("h100", ["1g.5gb"], "unknown-profile", "has no MIG profile '1g.5gb'"),
        ("a100-40gb", ["1g.10gb+me"], "unknown-profile", "allowed: 1g.5gb"),
        ("h100", ["1g.10gb"] * 8, "too-many-instances", "8 x 1g.10gb"),
        ("h100", ["1g.10gb+me", "1g.10gb+me"], "too-many-instances", "at most 1"),
        ("h100", ["3g.40gb", "3g.40gb", "1g.10gb"], "too-many-slices", "9 memory"),
        ("b200", ["7g.180gb", "1g.23gb"], "too-many-slices", "has 8 memory and 7 compute"),
        ("h100", [("2g.20gb", 1)], "invalid-placement", "valid starts: 0, 2, 4"),
        ("h200", [("4g.71gb", 4)], "invalid-placement", "valid starts: 0"),
        ("h100", [("2g.20gb", 0), ("1g.10gb", 1)], "overlap", "1g.10gb at 1:1 overlaps"),
        ("gb200", [("1g.23gb", 1), ("1g.23gb", 5), "3g.93gb"], "no-fit", "no placement"),
    ],
)
def test_invalid_layouts(
    key: str, requests: list[str | tuple[str, int]], reason: str, message: str
) -> None:
    with pytest.raises(MigLayoutError, match=re.escape(message)) as caught:
        plan_layout(BUILTIN_CATALOG.get(key), requests)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("key", "name", "reason"),
    [
        ("h100", "all-1g.5gb", "unknown-layout"),
        ("a100-40gb", "all-1g.23gb", "unknown-layout"),
        ("l40s", "all-balanced", "not-mig-capable"),
        ("a10g", "all-enabled", "not-mig-capable"),
    ],
)
def test_invalid_named_layouts(key: str, name: str, reason: str) -> None:
    with pytest.raises(MigLayoutError) as caught:
        named_layout(BUILTIN_CATALOG.get(key), name)
    assert caught.value.reason == reason


def test_balanced_needs_a_mig_parted_entry() -> None:
    custom = dataclasses.replace(h100(), key="h100-custom", pci_device_id=0x12345678)
    assert "all-balanced" not in layout_names(custom)
    with pytest.raises(MigLayoutError, match="no entry"):
        named_layout(custom, "all-balanced")


def test_docs_table_matches_the_data() -> None:
    """docs/profiles.md is generated from the data; this catches edits that forget the docs."""
    docs = (Path(__file__).resolve().parents[3] / "docs" / "profiles.md").read_text()
    for gpu in BUILTIN_PROFILES:
        row = next(line for line in docs.splitlines() if line.startswith(f"| `{gpu.key}` |"))
        assert f"| {gpu.name} |" in row
        assert f"| {gpu.memory_mib} ({gpu.memory_reserved_mib}) |" in row
        assert f"0x{gpu.pci_device_id:08X}" in row
        assert f"| {gpu.driver_version} / {gpu.cuda_version} |" in row
        for m in gpu.mig_profiles:
            assert f"| {m.name} | {m.gi_profile_id} | {m.ci_profile_id} | " in docs
            assert f"| {m.memory_mib} ({m.memory_mib / 1024:.2f}) |" in docs
