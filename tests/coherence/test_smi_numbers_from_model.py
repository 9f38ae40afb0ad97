"""Every number nvidia-smi prints that moves comes from the telemetry model (design principle 3).

nvidia-smi runs in-process with its time pinned (``FGO_SMI_TIME``) on a node with idle, loaded,
faulty, MIG and fan-cooled GPUs. Three checks:

* each telemetry field of ``--query-gpu`` and ``-q -x`` equals what
  :func:`fgo_common.telemetry.sample_gpu` gives for the same GPU and time;
* every other field prints the same for a GPU whether it is idle or loaded and faulty, now or an
  hour later: a value that moves without being in the model's list is a number nvidia-smi made
  up itself, and fails here until it comes from the model;
* where the exporter has the metric, its value for the same GPU and time is nvidia-smi's.
"""

from __future__ import annotations

import io
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from fgo_common.identity import gpu_uuid, mig_uuid, pci_bus_id
from fgo_common.names import DCGM_NAMES
from fgo_common.nodestate import write_node_state
from fgo_common.telemetry import (
    GpuSample,
    process_memory_mib,
    profile_for,
    sample_gpu,
    sample_mig_device,
)
from fgo_common.topology import (
    GpuRecord,
    GpuStatus,
    Holder,
    MigDevice,
    NodeTopology,
    PodUsage,
    UtilizationRange,
)
from fgo_nvidia_smi.fields import GPU_FIELDS
from fgo_nvidia_smi.main import run
from fgo_status_exporter.dcgm import DcgmCollector, ExporterOptions, ServedNode
from prometheus_client.parser import text_string_to_metric_families

T0 = 1_795_720_212.0  # the reference capture's time stamp
TIMES = (T0, T0 + 3_600.0)
SEED = 7
NA = "[N/A]"  # as --query-gpu prints it; the reports print "N/A"
XML_NA = "N/A"
H100 = ("NVIDIA H100 80GB HBM3", "h100-80gb-hbm3", 81559)
A10G = ("NVIDIA A10G", "a10g", 23028)  # actively cooled: it reports a fan speed


def _holding(pod: str, low: int, high: int, fb_mib: int, since: float) -> GpuStatus:
    uid = f"uid-{pod}"
    return GpuStatus(
        holders=[Holder("default", pod, "main", pod_uid=uid)],
        usage={
            uid: PodUsage(
                UtilizationRange(low, high), fb_mib, namespace="default", pod=pod, since=since
            )
        },
    )


def _node(name: str, product: tuple[str, str, int], count: int, *, busy: bool) -> NodeTopology:
    """``count`` GPUs; with ``busy`` GPU 0 runs near its cap, GPU 1 a medium load with thermal,
    ECC and PCIe-replay faults, and on H100s GPU 2 is in MIG mode with a loaded instance. The
    same node without ``busy`` has the same GPUs (UUIDs, bus ids) idle and healthy."""
    title, profile, memory = product
    gpus = []
    for i in range(count):
        gpu = GpuRecord(
            id=gpu_uuid(name, i),
            index=i,
            product=title,
            memory_mib=memory,
            profile=profile,
            bus_id=pci_bus_id(i),
        )
        if profile.startswith("h100") and i == 2:
            gpu.mig_enabled = True
            gpu.mig_devices = [
                MigDevice(mig_uuid(gpu.id, 1, 0), "3g.40gb", 1, 0, 9, 2, 4, 4, 40448, 60),
                MigDevice(mig_uuid(gpu.id, 7, 0), "1g.10gb", 7, 0, 19, 0, 0, 1, 9984, 16),
            ]
        if busy and i == 0:
            gpu.status = _holding("train", 90, 100, memory, since=T0 - 7_200)
        if busy and i == 1:
            gpu.status = _holding("infer", 30, 60, memory // 4, since=T0 - 600)
            gpu.faults = [
                {"kind": "thermal", "since": T0 - 300},
                {"kind": "ecc", "sbeVolatile": 3, "dbeVolatile": 1},
                {"kind": "pcieReplay", "count": 12},
                {"kind": "xid", "code": 79, "since": T0 - 60},
            ]
        if busy and gpu.mig_enabled:
            device = gpu.mig_devices[0]
            device.usage = {
                "uid-mig": PodUsage(UtilizationRange(50, 80), 20_000, pod="mig", since=T0 - 60)
            }
            device.holders = [Holder("default", "mig", "main", pod_uid="uid-mig")]
        gpus.append(gpu)
    return NodeTopology(
        node_name=name,
        pool="default",
        gpu_product=title,
        gpu_memory_mib=memory,
        profile=profile,
        driver_version="580.159.04",
        cuda_version="13.0",
        gpus=gpus,
    )


NODES = (("hgx", H100, 4), ("g5", A10G, 2))


def _smi(node: NodeTopology, t: float, *args: str) -> str:
    with tempfile.TemporaryDirectory() as state:
        write_node_state(Path(state), node)
        out, err = io.StringIO(), io.StringIO()
        env = {
            "FGO_STATE_DIR": state,
            "FGO_SMI_TIME": str(t),
            "FGO_SEED": str(SEED),
            "HOSTNAME": "test-pod",
            "TZ": "UTC",
        }
        code = run(list(args), out, err, env)
    assert code == 0, err.getvalue()
    return out.getvalue()


def _samples(node: NodeTopology, t: float) -> list[GpuSample]:
    return [sample_gpu(g, profile_for(g), t, seed=SEED) for g in node.gpus]


def _watts(value: float) -> str:
    return f"{value:.2f}"


def _mig_na(value: Callable[[GpuSample], object]) -> Callable[[GpuSample, bool], str]:
    return lambda s, mig: NA if mig else str(value(s))


# --query-gpu fields that are telemetry: (sample, GPU in MIG mode) -> what nvidia-smi prints.
QUERY_MODEL: dict[str, Callable[[GpuSample, bool], str]] = {
    "fan.speed": lambda s, mig: NA if s.fan_speed_percent is None else str(s.fan_speed_percent),
    "pstate": lambda s, mig: f"P{s.pstate}",
    "clocks_event_reasons.active": lambda s, mig: f"0x{s.clocks_event_reasons:016X}",
    "memory.total": lambda s, mig: str(s.fb_total_mib),
    "memory.reserved": lambda s, mig: str(s.fb_reserved_mib),
    "memory.used": lambda s, mig: str(s.fb_used_mib),
    "memory.free": lambda s, mig: str(s.fb_free_mib),
    "utilization.gpu": _mig_na(lambda s: s.gpu_util),
    "utilization.memory": _mig_na(lambda s: s.mem_copy_util),
    "utilization.encoder": _mig_na(lambda s: s.encoder_util),
    "utilization.decoder": _mig_na(lambda s: s.decoder_util),
    "temperature.gpu": lambda s, mig: str(s.gpu_temp_c),
    "temperature.gpu.tlimit": lambda s, mig: str(s.tlimit_margin_c),
    "power.draw": lambda s, mig: _watts(s.power_w),
    "power.draw.average": lambda s, mig: _watts(s.power_w),
    "power.draw.instant": lambda s, mig: _watts(s.power_w),
    "clocks.current.graphics": lambda s, mig: str(s.sm_clock_mhz),
    "clocks.current.sm": lambda s, mig: str(s.sm_clock_mhz),
    "clocks.current.memory": lambda s, mig: str(s.mem_clock_mhz),
    "clocks.current.video": lambda s, mig: str(s.video_clock_mhz),
    "clocks_event_reasons_counters.sw_power_cap": lambda s, mig: str(s.sw_power_cap_ns // 1000),
    "clocks_event_reasons_counters.hw_thermal_slowdown": lambda s, mig: str(
        s.thermal_violation_ns // 1000
    ),
    "clocks_event_reasons_counters.hw_power_brake_slowdown": lambda s, mig: str(
        s.power_brake_ns // 1000
    ),
    "ecc.errors.corrected.volatile.device_memory": lambda s, mig: str(s.ecc_sbe_volatile),
    "ecc.errors.uncorrected.volatile.device_memory": lambda s, mig: str(s.ecc_dbe_volatile),
    "ecc.errors.corrected.aggregate.device_memory": lambda s, mig: str(s.ecc_sbe_aggregate),
    "ecc.errors.uncorrected.aggregate.device_memory": lambda s, mig: str(s.ecc_dbe_aggregate),
    "remapped_rows.correctable": lambda s, mig: str(s.remapped_rows_correctable),
    "remapped_rows.uncorrectable": lambda s, mig: str(s.remapped_rows_uncorrectable),
}
# Fields that follow the model through another field (boolean views of the reason bits, the
# totals of the ECC counters above, the memory temperature's fixed offset from the GPU's, the
# clock the wall time says): checked only by not being listed as model-free.
QUERY_DERIVED = {
    "timestamp",
    "temperature.memory",
    "ecc.errors.corrected.volatile.dram",
    "ecc.errors.corrected.volatile.total",
    "ecc.errors.corrected.aggregate.dram",
    "ecc.errors.corrected.aggregate.total",
    "ecc.errors.uncorrected.volatile.dram",
    "ecc.errors.uncorrected.volatile.total",
    "ecc.errors.uncorrected.aggregate.dram",
    "ecc.errors.uncorrected.aggregate.total",
    "utilization.jpeg",
    "utilization.ofa",
} | {f.names[0] for f in GPU_FIELDS if f.names[0].startswith("clocks_event_reasons.")}


def _query(node: NodeTopology, t: float) -> list[dict[str, str]]:
    names = [f.names[0] for f in GPU_FIELDS]
    out = _smi(node, t, f"--query-gpu={','.join(names)}", "--format=csv,noheader,nounits")
    return [dict(zip(names, row.split(", "), strict=True)) for row in out.splitlines()]


@pytest.mark.parametrize(("name", "product", "count"), NODES)
def test_query_gpu_telemetry_is_the_models(
    name: str, product: tuple[str, str, int], count: int
) -> None:
    node = _node(name, product, count, busy=True)
    for t in TIMES:
        for gpu, row, sample in zip(node.gpus, _query(node, t), _samples(node, t), strict=True):
            for field, expected in QUERY_MODEL.items():
                got = row[field]
                want = expected(sample, gpu.mig_enabled)
                assert got == want, f"{gpu.id} {field} at {t}: printed {got}, model {want}"


@pytest.mark.parametrize(("name", "product", "count"), NODES)
def test_query_gpu_fields_outside_the_model_do_not_move(
    name: str, product: tuple[str, str, int], count: int
) -> None:
    idle = _node(name, product, count, busy=False)
    busy = _node(name, product, count, busy=True)
    baseline = _query(idle, TIMES[0])
    for node in (idle, busy):
        for t in TIMES:
            for before, now in zip(baseline, _query(node, t), strict=True):
                moved = {
                    field
                    for field in now
                    if now[field] != before[field]
                    and field not in QUERY_MODEL
                    and field not in QUERY_DERIVED
                }
                assert not moved, f"printed without the model, yet they move: {sorted(moved)}"


def _leaves(element: ET.Element, path: str = "") -> dict[str, str]:
    """Every leaf of ``element`` by its path (repeated tags numbered)."""
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    for child in element:
        seen[child.tag] = seen.get(child.tag, 0) + 1
        key = f"{path}/{child.tag}" + (f"[{seen[child.tag]}]" if seen[child.tag] > 1 else "")
        if len(child):
            out.update(_leaves(child, key))
        else:
            out[key] = (child.text or "").strip()
    return out


_COUNTERS = "/clocks_event_reasons_counters/clocks_event_reasons_counters"
# -q -x leaves that are telemetry (paths under <gpu>): sample -> printed text.
XML_MODEL: dict[str, Callable[[GpuSample], str]] = {
    "/fan_speed": lambda s: XML_NA if s.fan_speed_percent is None else f"{s.fan_speed_percent} %",
    "/temperature/gpu_temp": lambda s: f"{s.gpu_temp_c} C",
    "/temperature/gpu_temp_tlimit": lambda s: f"{s.tlimit_margin_c} C",
    "/gpu_power_readings/average_power_draw": lambda s: f"{s.power_w:.2f} W",
    "/gpu_power_readings/instant_power_draw": lambda s: f"{s.power_w:.2f} W",
    "/gpu_memory_power_readings/average_power_draw": lambda s: (
        XML_NA if s.memory_power_w is None else f"{s.memory_power_w:.2f} W"
    ),
    "/clocks/graphics_clock": lambda s: f"{s.sm_clock_mhz} MHz",
    "/clocks/sm_clock": lambda s: f"{s.sm_clock_mhz} MHz",
    "/clocks/mem_clock": lambda s: f"{s.mem_clock_mhz} MHz",
    "/clocks/video_clock": lambda s: f"{s.video_clock_mhz} MHz",
    "/fb_memory_usage/used": lambda s: f"{s.fb_used_mib} MiB",
    "/fb_memory_usage/free": lambda s: f"{s.fb_free_mib} MiB",
    "/bar1_memory_usage/used": lambda s: f"{s.bar1_used_mib} MiB",
    "/pci/replay_counter": lambda s: str(s.pcie_replay_count),
    "/pci/tx_util": lambda s: f"{s.pcie_tx_bytes_per_s // 1000} KB/s",
    "/pci/rx_util": lambda s: f"{s.pcie_rx_bytes_per_s // 1000} KB/s",
    f"{_COUNTERS}_sw_power_cap": lambda s: f"{s.sw_power_cap_ns // 1000} us",
    f"{_COUNTERS}_hw_therm_slowdown": lambda s: f"{s.thermal_violation_ns // 1000} us",
    f"{_COUNTERS}_hw_power_brake": lambda s: f"{s.power_brake_ns // 1000} us",
}
# Leaves that follow the model through other leaves (reason flags, ECC and row-remap counts,
# the memory temperature, the BAR1 free space, the performance state, utilisation, the MIG
# instances and processes, which are checked on their own below).
XML_DERIVED_PREFIXES = (
    "/timestamp",
    "/performance_state",
    "/clocks_event_reasons/",
    "/ecc_errors/",
    "/remapped_rows/",
    "/temperature/memory_temp",
    "/bar1_memory_usage/free",
    "/utilization/",
    "/gpu_power_readings/power_state",
    "/gpu_memory_power_readings/power_state",
    "/mig_devices/",
    "/processes/",
)


def _xml(node: NodeTopology, t: float) -> list[dict[str, str]]:
    root = ET.fromstring(_smi(node, t, "-q", "-x"))
    return [_leaves(gpu) for gpu in root.findall("gpu")]


def test_xml_report_telemetry_is_the_models() -> None:
    node = _node("hgx", H100, 4, busy=True)
    for t in TIMES:
        for gpu, leaves, sample in zip(node.gpus, _xml(node, t), _samples(node, t), strict=True):
            for path, expected in XML_MODEL.items():
                assert leaves[path] == expected(sample), f"{gpu.id} {path} at {t}"
            profile = profile_for(gpu)
            procs = process_memory_mib(gpu, profile)
            if gpu.mig_enabled:
                procs = {}
                for device in gpu.mig_devices:
                    mig = sample_mig_device(gpu, device, profile, t, seed=SEED)
                    assert f"{mig.fb_used_mib} MiB" in {
                        v for k, v in leaves.items() if k.endswith("fb_memory_usage/used")
                    }
                    procs.update(process_memory_mib(gpu, profile, device))
            printed = sorted(v for k, v in leaves.items() if k.endswith("/used_memory"))
            assert printed == sorted(f"{mib} MiB" for mib in procs.values()), gpu.id


@pytest.mark.parametrize(("name", "product", "count"), NODES)
def test_xml_leaves_outside_the_model_do_not_move(
    name: str, product: tuple[str, str, int], count: int
) -> None:
    idle = _node(name, product, count, busy=False)
    busy = _node(name, product, count, busy=True)
    baseline = _xml(idle, TIMES[0])
    for node in (idle, busy):
        for t in TIMES:
            for before, now in zip(baseline, _xml(node, t), strict=True):
                moved = {
                    path
                    for path in now
                    if now[path] != before.get(path)
                    and path not in XML_MODEL
                    and not path.startswith(XML_DERIVED_PREFIXES)
                }
                assert not moved, f"printed without the model, yet they move: {sorted(moved)}"


# Exporter family -> the --query-gpu field that prints the same reading.
EXPORTER_TO_QUERY = {
    "DCGM_FI_DEV_GPU_TEMP": "temperature.gpu",
    "DCGM_FI_DEV_MEMORY_TEMP": "temperature.memory",
    "DCGM_FI_DEV_POWER_USAGE": "power.draw",
    "DCGM_FI_DEV_SM_CLOCK": "clocks.current.sm",
    "DCGM_FI_DEV_MEM_CLOCK": "clocks.current.memory",
    "DCGM_FI_DEV_GPU_UTIL": "utilization.gpu",
    "DCGM_FI_DEV_MEM_COPY_UTIL": "utilization.memory",
    "DCGM_FI_DEV_ENC_UTIL": "utilization.encoder",
    "DCGM_FI_DEV_DEC_UTIL": "utilization.decoder",
    "DCGM_FI_DEV_FB_USED": "memory.used",
    "DCGM_FI_DEV_FB_FREE": "memory.free",
    "DCGM_FI_DEV_FB_TOTAL": "memory.total",
    "DCGM_FI_DEV_FB_RESERVED": "memory.reserved",
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": "power.limit",
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": "clocks_event_reasons.active",
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": "ecc.errors.corrected.volatile.total",
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": "ecc.errors.uncorrected.volatile.total",
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": "ecc.errors.corrected.aggregate.total",
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": "ecc.errors.uncorrected.aggregate.total",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": "remapped_rows.correctable",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": "remapped_rows.uncorrectable",
}


def _as_number(text: str) -> float:
    return float(int(text, 16)) if text.startswith("0x") else float(text)


@pytest.mark.parametrize(("name", "product", "count"), NODES)
def test_the_exporter_reports_what_nvidia_smi_prints(
    name: str, product: tuple[str, str, int], count: int
) -> None:
    node = _node(name, product, count, busy=True)
    extras = tuple(f for f in EXPORTER_TO_QUERY if f not in {c.name for c in DCGM_NAMES.counters})
    options = ExporterOptions(names=DCGM_NAMES, extra_metrics=extras, seed=SEED)
    collector = DcgmCollector(options)
    for t in TIMES:
        exported: dict[str, dict[str, float]] = {}
        text = collector.scrape_text([ServedNode(node, node.node_name)], t)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if "GPU_I_ID" not in sample.labels:  # whole GPUs: what --query-gpu lists
                    exported.setdefault(family.name, {})[sample.labels["UUID"]] = sample.value
        compared = 0
        for gpu, row in zip(node.gpus, _query(node, t), strict=True):
            for family, field in EXPORTER_TO_QUERY.items():
                value = exported.get(family, {}).get(gpu.id)
                if value is None or row[field] == NA:
                    continue  # not exported for this GPU (MIG: per instance), or N/A here
                printed = _as_number(row[field])
                if family == "DCGM_FI_DEV_POWER_USAGE":
                    assert abs(printed - value) <= 0.005, f"{gpu.id} {family} at {t}"
                else:
                    assert printed == value, f"{gpu.id} {family} at {t}: {printed} vs {value}"
                compared += 1
        assert compared >= len(EXPORTER_TO_QUERY)  # the comparison really ran
