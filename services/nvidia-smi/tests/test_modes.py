"""Behaviour beyond the single-H100 capture: many GPUs, MIG, processes, visibility, -i, loops,
agreement with the telemetry model, and every query field on every kind of GPU."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fgo_common.telemetry import profile_for, sample_gpu
from fgo_common.topology import (
    HOLDER_DRA,
    GpuStatus,
    Holder,
    NodeTopology,
    PodUsage,
    UtilizationRange,
)
from fgo_nvidia_smi import clock
from fgo_nvidia_smi.fields import APP_FIELDS, GPU_FIELDS
from smi_fixtures import LONG_NAME, h100_capture_node, hgx_node, k80_node, long_name_node
from smi_testlib import CAPTURE_TIME, REFERENCE, Runner

HELP_FIELD = re.compile(r'^"([A-Za-z0-9_.]+)"(?: or "([A-Za-z0-9_.]+)")?$')


def _help_names(name: str) -> list[tuple[str, ...]]:
    out = []
    for line in (REFERENCE / name).read_text().splitlines():
        match = HELP_FIELD.match(line)
        if match:
            out.append(tuple(n for n in match.groups() if n))
    return out


def test_every_help_field_is_queryable_and_no_others() -> None:
    listed = _help_names("smi_help_query_gpu.txt")
    ours = [tuple(dict.fromkeys(f.names)) for f in GPU_FIELDS]
    assert sorted(ours) == sorted(tuple(dict.fromkeys(n)) for n in listed)
    apps = _help_names("smi_help_query_apps.txt")
    assert sorted(f.names for f in APP_FIELDS) == sorted(apps)


@pytest.mark.parametrize("node_factory", [h100_capture_node, hgx_node, k80_node, long_name_node])
def test_all_fields_on_every_gpu_kind(smi: Runner, node_factory: object) -> None:
    node = node_factory()  # type: ignore[operator]
    names = [f.names[-1] for f in GPU_FIELDS]  # aliases work as well as canonical names
    result = smi(f"--query-gpu={','.join(names)}", "--format=csv", node=node)
    assert result.code == 0, result.out
    lines = result.out.splitlines()
    assert len(lines) == 1 + len(node.gpus)
    assert lines[0].split(", ") == [f.header for f in GPU_FIELDS]
    for line in lines[1:]:
        cells = line.split(", ")
        assert len(cells) == len(GPU_FIELDS)
        assert all(cells), line


def test_eight_gpu_table_with_mig_and_processes(smi: Runner) -> None:
    result = smi(node=hgx_node(), HOSTNAME="train-0")
    assert result.code == 0
    lines = result.out.split("\n")
    assert all(len(line) == 91 for line in lines[1:] if line.strip()), "a row lost its width"
    assert [line[2:5] for line in lines if re.match(r"\| +\d  NVIDIA", line)] == [
        f"  {i}" for i in range(8)
    ]
    assert "| MIG devices:" in result.out
    mig_rows = [line for line in lines if re.match(r"\|  7 +\d+ +\d+ +\d+  \|", line)]
    assert len(mig_rows) == 2  # 3g.40gb (GI 1) and 1g.10gb (GI 7)
    assert "|                   On |" in result.out  # ECC column of the MIG GPU
    procs = [line for line in lines if re.match(r"\| +\d +(N/A|\d+) +(N/A|\d+) +\d+ +C ", line)]
    assert len(procs) == 3  # train-0 on GPUs 1 and 2 (one PID), infer-0 on MIG GI 1
    pids = {line.split()[4] for line in procs[:2]}
    assert len(pids) == 1
    assert "30000MiB" in procs[0] and "12000MiB" in procs[2]


def test_long_product_name_is_truncated_like_the_driver(smi: Runner) -> None:
    result = smi(node=long_name_node())
    row = next(line for line in result.out.split("\n") if line.startswith("|   0  NVIDIA"))
    assert row.startswith("|   0  NVIDIA RTX 6000 Ada Gene...    On  |")
    assert smi("-L", node=long_name_node()).out.startswith(f"GPU 0: {LONG_NAME} (UUID: GPU-")


def test_visible_devices_select_and_renumber(smi: Runner) -> None:
    node = hgx_node()
    third = node.gpus[3]
    result = smi("-L", node=node, NVIDIA_VISIBLE_DEVICES=third.id)
    assert result.out == f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {third.id})\n"
    table = smi(node=node, NVIDIA_VISIBLE_DEVICES=third.id).out
    assert third.bus_id in table and node.gpus[0].bus_id not in table
    both = smi("-L", node=node, NVIDIA_VISIBLE_DEVICES=f"{node.gpus[5].id},{node.gpus[2].id}")
    assert both.out.splitlines() == [
        f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {node.gpus[2].id})",
        f"GPU 1: NVIDIA H100 80GB HBM3 (UUID: {node.gpus[5].id})",
    ]
    assert smi("-L", node=node, NVIDIA_VISIBLE_DEVICES="1,4").out.count("GPU ") == 2
    assert smi("-L", node=node, NVIDIA_VISIBLE_DEVICES="all").out.count("GPU ") == 8
    none = smi(node=node, NVIDIA_VISIBLE_DEVICES="none")
    assert (none.out, none.code) == ("No devices were found\n", 6)
    # FGO_VISIBLE_DEVICES (the device plugin's alternative name) takes precedence.
    fgo = smi("-L", node=node, NVIDIA_VISIBLE_DEVICES="all", FGO_VISIBLE_DEVICES="0")
    assert fgo.out.count("GPU ") == 1


def test_visible_mig_device_shows_its_parent_and_only_itself(smi: Runner) -> None:
    node = hgx_node()
    mig = node.gpus[7].mig_devices[1]
    listing = smi("-L", node=node, NVIDIA_VISIBLE_DEVICES=mig.uuid).out
    assert listing.splitlines() == [
        f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {node.gpus[7].id})",
        f"  MIG 1g.10gb      Device  1: (UUID: {mig.uuid})",
    ]


def test_select_by_index_uuid_and_bus_id(smi: Runner) -> None:
    node = hgx_node()
    for ident in (
        "4",
        node.gpus[4].id,
        node.gpus[4].id.lower(),
        node.gpus[4].bus_id,
        node.gpus[4].bus_id[4:],
    ):
        result = smi(
            "-i", ident, "--query-gpu=index,pci.bus_id", "--format=csv,noheader", node=node
        )
        assert result.out == f"4, {node.gpus[4].bus_id}\n", ident
    many = smi("-i", "0,2", "--query-gpu=index,count", "--format=csv,noheader", node=node)
    assert many.out == "0, 8\n2, 8\n"  # count: GPUs in the system, not the selection
    assert (
        "Attached GPUs                                          : 8\nGPU 00000000:5D"
        in smi("-q", "-i", "3", node=node).out
    )
    for bad in ("8", "GPU-nope", "abc", "00000000:99:00.0"):
        result = smi("-i", bad, node=node)
        assert (result.out, result.code) == ("No devices were found\n", 6), bad


def test_values_agree_with_the_telemetry_model(smi: Runner) -> None:
    node = hgx_node()
    result = smi(
        "--query-gpu=index,utilization.gpu,power.draw,temperature.gpu,memory.used,clocks.sm",
        "--format=csv,noheader,nounits",
        node=node,
        FGO_SEED="7",
    )
    for gpu, line in zip(node.gpus, result.out.splitlines(), strict=True):
        sample = sample_gpu(gpu, profile_for(gpu), CAPTURE_TIME, seed=7)
        index, util, power, temp, used, sm = line.split(", ")
        expected_util = "[N/A]" if gpu.mig_enabled else str(sample.gpu_util)
        assert (util, power, temp) == (
            expected_util,
            f"{sample.power_w:.2f}",
            str(sample.gpu_temp_c),
        ), index
        assert (int(used), int(sm)) == (sample.fb_used_mib, sample.sm_clock_mhz)
    busy = result.out.splitlines()[1].split(", ")
    assert int(busy[1]) >= 80  # the training pod drives GPU 1 to 80-100 %


def test_query_sections(smi: Runner) -> None:
    result = smi("-q", "-d", "MEMORY,TEMPERATURE")
    assert result.code == 0
    assert "    FB Memory Usage" in result.out and "    Temperature" in result.out
    assert "Product Name" not in result.out and "    Clocks\n" not in result.out
    clocks = smi("-q", "-d", "SUPPORTED_CLOCKS").out
    assert "    Supported Clocks" in clocks and "            Graphics" in clocks
    bad = smi("-q", "-d", "BOGUS")
    assert bad.code == 255 and bad.out.startswith("Invalid combination of input arguments.")


def test_processes_in_q_and_xml(smi: Runner) -> None:
    node = hgx_node()
    text = smi("-q", "-i", "1", node=node).out
    assert re.search(r"\n        Process ID +: \d+\n            Type +: C\n", text)
    assert re.search(r"\n            Used GPU Memory +: 30000 MiB\n", text)
    root = ET.fromstring(smi("-q", "-x", node=node).out)
    infos = root.findall("./gpu/processes/process_info")
    assert len(infos) == 3
    assert {i.findtext("used_memory") for i in infos} == {"30000 MiB", "12000 MiB"}
    mig = root.findall("./gpu/mig_devices/mig_device")
    assert [m.findtext("gpu_instance_id") for m in mig] == ["1", "7"]


def test_compute_apps_query(smi: Runner) -> None:
    node = hgx_node()
    result = smi(
        "--query-compute-apps=gpu_uuid,pid,process_name,used_memory", "--format=csv", node=node
    )
    lines = result.out.splitlines()
    assert lines[0] == "gpu_uuid, pid, process_name, used_gpu_memory [MiB]"
    assert len(lines) == 4
    assert lines[1].startswith(node.gpus[1].id) and lines[1].endswith("30000 MiB")
    idle = smi("--query-compute-apps=pid", "--format=csv,noheader")
    assert (idle.out, idle.code) == ("", 0)
    bad = smi("--query-compute-apps=bogus", "--format=csv")
    assert (bad.out, bad.code) == ('Field "bogus" is not a valid field to query.\n\n', 2)


def test_topology_links(smi: Runner) -> None:
    hgx = smi("topo", "-m", node=hgx_node()).out.split("\n")
    assert hgx[1].split("\t")[1:9] == [" X ", *["NV18"] * 7]
    k80 = smi("topo", "-m", node=k80_node(4)).out.split("\n")
    assert k80[1].split("\t")[1:5] == [" X ", "PIX", "SYS", "SYS"]


def test_mig_instance_tables(smi: Runner) -> None:
    node = hgx_node()
    lgi = smi("mig", "-lgi", node=node).out.splitlines()
    assert lgi[5] == "|   7  MIG 1g.10gb           19        7          0:1     |"
    assert lgi[7] == "|   7  MIG 3g.40gb            9        1          4:4     |"
    lci = smi("mig", "-lci", node=node).out.splitlines()
    assert lci[6] == "|   7      7       MIG 1g.10gb          0         0          0:1     |"
    lgip = smi("mig", "-lgip", "-i", "7", node=node).out
    # 3g.40gb at 4:4 and 1g.10gb at 0:1 leave three 1g.10gb slots (1, 2, 3) of seven.
    assert "|   7  MIG 1g.10gb         19     3/7 " in lgip
    assert "|   7  MIG 4g.40gb          5     0/1 " in lgip
    assert smi("mig", "-lgip", node=k80_node()).out == "No MIG-supported devices found.\n"


def test_loops_repeat_until_interrupted(smi: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []

    class Stop(Exception):
        pass

    def fake_sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) >= 2:
            raise Stop

    monkeypatch.setattr(clock, "sleep", fake_sleep)
    with pytest.raises(Stop):
        smi("--query-gpu=index", "--format=csv", "-lms", "250")
    assert calls == [0.25, 0.25]
    calls.clear()
    with pytest.raises(Stop):
        smi("-l", "2")
    assert calls == [2.0, 2.0]
    calls.clear()
    monkeypatch.setattr(clock, "sleep", calls.append)
    dmon = smi("dmon", "-c", "3", "-d", "2")
    assert dmon.out.count("\n") == 2 + 3 and calls == [2, 2]


def test_pmon_and_dmon_selection(smi: Runner) -> None:
    node = hgx_node()
    pmon = smi("pmon", "-c", "1", node=node).out.splitlines()
    # Header as the r5xx driver prints it (labels one column right of the data, trailing blank).
    assert pmon[:2] == [
        "# gpu         pid   type     sm    mem    enc    dec    jpg    ofa    command ",
        "# Idx           #    C/G      %      %      %      %      %      %    name ",
    ]
    assert (
        pmon[2]
        == "    0          -     -      -      -      -      -      -      -    -" + " " * 14
    )
    busy = pmon[3]
    assert re.fullmatch(
        r"    1 +\d+     C +\d+ +\d+      -      -      -      -    python {9}", busy
    )
    assert len(busy) == len(pmon[2])
    mem = smi("pmon", "-c", "1", "-s", "um", node=node).out.splitlines()
    assert mem[0].endswith("ofa     fb   ccpm    command ")
    assert "  30000      0    python" in mem[3]
    dmon = smi("dmon", "-c", "1", "-s", "m", node=node).out.splitlines()
    assert dmon[0] == "# gpu     fb   bar1   ccpm "
    assert smi("dmon", "-s", "z").code == 255
    assert smi("pmon", "-s", "x").code == 255


def test_version_and_permission_errors(smi: Runner) -> None:
    version = smi("--version").out.splitlines()
    assert version == [
        "NVIDIA-SMI version  : 580.159.04",
        "NVML version        : 580.159",
        "DRIVER version      : 580.159.04",
        "CUDA Version        : 13.0",
    ]
    pm = smi("-pm", "1")
    assert pm.code == 4
    assert pm.out == (
        "Unable to set persistence mode for GPU 00000000:00:06.0: Insufficient "
        "Permissions\nTerminating early due to previous errors.\n"
    )


def test_unsupported_but_real_options_say_so(smi: Runner) -> None:
    assert smi("-B").out == smi("--list-excluded-gpus").out == "No excluded devices found.\n"
    for args in (
        ["nvlink", "-s"],
        ["--query-retired-pages=address", "--format=csv"],
        ["mig", "-cgi", "9"],
    ):
        result = smi(*args)
        assert result.code == 3 and "not simulated" in result.err and result.out == "", args


def test_output_to_file(smi: Runner, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    result = smi("--query-gpu=name", "--format=csv,noheader", "-f", str(target))
    assert (result.out, result.code) == ("", 0)
    assert target.read_text() == "NVIDIA H100 80GB HBM3\n"


def test_k80_header_uses_the_node_driver(smi: Runner) -> None:
    out = smi(node=k80_node()).out
    assert (
        "| NVIDIA-SMI 470.256.02             Driver Version: 470.256.02     CUDA Version: 11.4"
        in out
    )
    assert "|   0  Tesla K80                      On  |" in out


def test_injected_faults_show_as_the_driver_reports_them(smi: Runner) -> None:
    node = h100_capture_node()
    node.gpus[0].faults = [
        {"kind": "ecc", "sbeVolatile": 5, "dbeVolatile": 2},
        {"kind": "remappedRows", "uncorrectable": 1},
        {"kind": "thermal"},
    ]
    table = smi(node=node).out
    assert "|   00000000:00:06.0 Off |                    2 |" in table
    csv = smi(
        "--query-gpu=ecc.errors.uncorrected.volatile.total,ecc.errors.corrected.volatile.dram,"
        "ecc.errors.uncorrected.aggregate.device_memory,remapped_rows.uncorrectable,"
        "clocks_event_reasons.hw_thermal_slowdown,clocks_event_reasons.hw_power_brake_slowdown",
        "--format=csv,noheader",
        node=node,
    ).out
    assert csv == "2, 5, 2, 1, Active, Not Active\n"
    q = smi("-q", "-d", "ECC,PERFORMANCE,ROW_REMAPPER", node=node).out
    assert re.search(r"Volatile\n(.*\n){3}.*DRAM Correctable +: 5\n.*DRAM Uncorrectable +: 2\n", q)
    assert re.search(r"HW Slowdown +: Active\n +HW Thermal Slowdown +: Active\n", q)
    assert re.search(r"Uncorrectable Error +: 1\n", q)


def test_dmon_all_groups_with_date_and_time(smi: Runner) -> None:
    node = h100_capture_node()
    node.gpus[0].faults = [{"kind": "ecc", "sbeVolatile": 3}, {"kind": "thermal"}]
    lines = smi("dmon", "-c", "1", "-s", "pucvmet", "-o", "DT", node=node).out.splitlines()
    # Column order and the date/time prefix as the r5xx driver prints them.
    assert lines[0] == (
        "#Date        Time         gpu    pwr  gtemp  mtemp     sm    mem    enc    dec    jpg"
        "    ofa   mclk   pclk  pviol  tviol     fb   bar1   ccpm  sbecc  dbecc    pci  rxpci"
        "  txpci "
    )
    assert lines[1].startswith("#YYYYMMDD    HH:MM:SS     Idx      W")
    assert re.match(r" 2026\d{4}    \d\d:\d\d:\d\d       0 ", lines[2])
    values = lines[2].split()[3:]  # after date, time and the GPU index
    assert values[11:13] == ["0", "1"]  # pviol, tviol: thermal slowdown injected
    assert values[16:18] == ["3", "0"]  # sbecc, dbecc
    assert [len(line) for line in lines] == [len(lines[0])] * 3


def test_display_sections_add_sample_summaries(smi: Runner) -> None:
    node = hgx_node()
    util = smi("-q", "-d", "UTILIZATION", "-i", "1", node=node).out
    block = re.search(
        r"    GPU Utilization Samples\n        Duration +: ([\d.]+) sec\n"
        r"        Number of Samples +: (\d+)\n        Max +: (\d+) %\n        Min +: (\d+) %\n"
        r"        Avg +: (\d+) %\n",
        util,
    )
    assert block, util
    assert 80 <= int(block.group(4)) <= int(block.group(3)) <= 100  # the pod's 80-100 % range
    assert "    Power Samples\n" in smi("-q", "-d", "POWER", node=node).out
    full = smi("-q", node=node).out
    assert "Utilization Samples" not in full and "Power Samples" not in full
    assert "Clock Samples" not in full and "Clock Samples" in smi("-q", "-d", "CLOCK").out


def test_reservation_pods_are_not_processes(smi: Runner) -> None:
    from fgo_common.topology import HOLDER_RESERVATION, Holder, PodUsage

    node = h100_capture_node()
    status = node.gpus[0].status
    status.holders = [
        Holder("runai-reservation", "reserve-0", "c", pod_uid="uid-r", kind=HOLDER_RESERVATION),
        Holder("team", "frac-0", "c", pod_uid="uid-f"),
    ]
    status.usage = {"uid-r": PodUsage(fb_used_mib=0), "uid-f": PodUsage(fb_used_mib=4000)}
    out = smi("--query-compute-apps=used_memory", "--format=csv,noheader", node=node).out
    assert out == "4000 MiB\n"


def test_fractional_pod_sees_its_share_of_memory(smi: Runner) -> None:
    fields = "--query-gpu=memory.total,memory.reserved,memory.used,memory.free"
    whole = smi(fields, "--format=csv,noheader,nounits").out
    assert whole == "81559, 480, 0, 81079\n"
    half = smi(fields, "--format=csv,noheader,nounits", RUNAI_NUM_OF_GPUS="0.5").out
    assert half == "40779, 240, 0, 40539\n"
    for ignored in ("2", "abc", "0"):
        assert smi(fields, "--format=csv,noheader,nounits", RUNAI_NUM_OF_GPUS=ignored).out == whole


def test_start_up_imports_stay_lean() -> None:
    """Every call pays for what main imports: no Kubernetes client, YAML, pathlib (3.11 drags
    in urllib/ipaddress), asyncio or the OpenSSL-backed modules."""
    import subprocess
    import sys

    code = (
        "import sys; from fgo_nvidia_smi.main import run; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    banned = {
        "kubernetes_asyncio",
        "yaml",
        "pathlib",
        "asyncio",
        "ssl",
        "aiohttp",
        "structlog",
        "prometheus_client",
        "tempfile",
        "signal",
        "urllib",
    }
    assert loaded & banned == set()


def _mps_node(strategy: str) -> NodeTopology:
    """GPU 0 of the capture node shared by two DRA pods with ``strategy`` (docs/sharing.md)."""
    node = h100_capture_node()
    pods = [("client-a", "uid-a", 9000), ("client-b", "uid-b", 7000)]
    node.gpus[0].status = GpuStatus(
        holders=[
            Holder("default", pod, "main", pod_uid=uid, kind=HOLDER_DRA,
                   claim="default/shared", sharing=strategy)
            for pod, uid, _ in pods
        ],
        usage={
            uid: PodUsage(UtilizationRange(30, 40), fb, namespace="default", pod=pod)
            for pod, uid, fb in pods
        },
    )  # fmt: skip
    return node


def test_mps_sharers_show_exclusive_process_mode_the_server_and_m_plus_c_clients(
    smi: Runner,
) -> None:
    result = smi(node=_mps_node("MPS"))
    assert result.code == 0, result.out
    lines = result.out.split("\n")
    assert all(len(line) == 91 for line in lines[1:] if line.strip()), "a row lost its width"
    assert "E. Process |" in result.out
    procs = [line for line in lines if re.match(r"\|    0   N/A  N/A +\d+ ", line)]
    kinds = sorted((line.split()[5], line.split()[6]) for line in procs)
    assert kinds == [("C", "nvidia-cuda-mps-server"), ("M+C", "python"), ("M+C", "python")]
    assert {"9000MiB", "7000MiB"} <= {line.split()[7] for line in procs}
    query = smi("--query-gpu=compute_mode", "--format=csv,noheader", node=_mps_node("MPS"))
    assert query.out.strip() == "Exclusive_Process"
    full = smi("-q", "-d", "COMPUTE", node=_mps_node("MPS"))
    assert re.search(r"Compute Mode\s+: Exclusive_Process", full.out), full.out


def test_time_sliced_sharers_keep_default_mode_and_compute_processes(smi: Runner) -> None:
    result = smi(node=_mps_node("TimeSlicing"))
    assert result.code == 0, result.out
    assert "E. Process" not in result.out and "nvidia-cuda-mps-server" not in result.out
    procs = [line for line in result.out.split("\n") if re.match(r"\|    0   N/A  N/A", line)]
    assert [line.split()[5] for line in procs] == ["C", "C"]
    query = smi("--query-gpu=compute_mode", "--format=csv,noheader", node=_mps_node("TimeSlicing"))
    assert query.out.strip() == "Default"
