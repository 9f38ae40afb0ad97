"""The fake libnvidia-ml.so.1 seen through real NVML clients (pynvml from nvidia-ml-py, gpustat)
agrees with our nvidia-smi for the same node state, visible devices and time: count, names,
UUIDs, memory, utilisation, processes; MIG handles; a lost GPU; no state -> no driver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fgo_common.identity import gpu_uuid
from nvml_testlib import (
    PATH_MODE,
    PINNED,
    build_library,
    have_cc,
    nvml_env,
    run_nvml,
    run_python,
    smi_csv,
    state,
)
from smi_fixtures import hgx_node, k80_node

pytestmark = pytest.mark.skipif(not have_cc(), reason="no C compiler to build libnvidia-ml.so.1")

# Every test runs for both of the library's paths (nvml_testlib.PATH_MODE); those about the exec
# itself (what nvidia-smi's absence, its cache or its output does) only for the exec path.
EXEC_ONLY = {
    "test_no_nvidia_smi_to_ask_is_a_node_without_driver",
    "test_cache_serves_the_next_process_and_follows_state_changes",
    "test_malformed_snapshot_never_crashes",
    "test_library_source_is_warning_free",
}


@pytest.fixture(autouse=True, params=["exec", "file"])
def path_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "file" and request.function.__name__ in EXEC_ONLY:
        pytest.skip("about the exec path")
    PATH_MODE["mode"] = request.param
    yield request.param
    PATH_MODE["mode"] = "exec"


MIB = 1024 * 1024

DEVICES = """
import json, pynvml as n
n.nvmlInit()
out = {"driver": n.nvmlSystemGetDriverVersion(), "cuda": n.nvmlSystemGetCudaDriverVersion(),
       "gpus": []}
for i in range(n.nvmlDeviceGetCount()):
    h = n.nvmlDeviceGetHandleByIndex(i)
    mem = n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
    try:
        rates = n.nvmlDeviceGetUtilizationRates(h)
        util, mem_util = str(rates.gpu), str(rates.memory)
    except n.NVMLError_NotSupported:  # a GPU in MIG mode
        util = mem_util = "[N/A]"
    out["gpus"].append({
        "index": n.nvmlDeviceGetIndex(h),
        "name": n.nvmlDeviceGetName(h),
        "uuid": n.nvmlDeviceGetUUID(h),
        "serial": n.nvmlDeviceGetSerial(h),
        "bus": n.nvmlDeviceGetPciInfo(h).busId,
        "total": mem.total, "used": mem.used, "free": mem.free, "reserved": mem.reserved,
        "util": util, "mem_util": mem_util,
        "temp": n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
        "power": n.nvmlDeviceGetPowerUsage(h),
        "limit": n.nvmlDeviceGetEnforcedPowerLimit(h),
        "sm": n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
        "pstate": n.nvmlDeviceGetPerformanceState(h),
        "procs": [[p.pid, p.usedGpuMemory] for p in n.nvmlDeviceGetComputeRunningProcesses(h)],
    })
n.nvmlShutdown()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nvml-lib")
    build_library(out)
    return out


def _env(lib_dir: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    return nvml_env(lib_dir, cache, **extra)


def _compare(lib_dir: Path, tmp_path: Path, **extra: str) -> dict[str, object]:
    directory = state(tmp_path, hgx_node())
    env = _env(lib_dir, tmp_path, **extra)
    got = run_python(directory, env, DEVICES)
    assert isinstance(got, dict)
    rows = smi_csv(
        directory,
        env,
        "--query-gpu=index,name,uuid,serial,pci.bus_id,memory.total,memory.used,memory.free,"
        "memory.reserved,utilization.gpu,utilization.memory,temperature.gpu,power.draw,"
        "enforced.power.limit,clocks.sm,pstate,driver_version",
    )
    gpus = got["gpus"]
    assert len(gpus) == len(rows)
    for gpu, row in zip(gpus, rows, strict=True):
        assert str(gpu["index"]) == row["index"]
        assert gpu["name"] == row["name"]
        assert gpu["uuid"] == row["uuid"]
        assert gpu["serial"] == row["serial"]
        assert gpu["bus"] == row["pci.bus_id"]
        assert gpu["total"] // MIB == int(row["memory.total"])
        assert gpu["used"] // MIB == int(row["memory.used"])
        assert gpu["free"] // MIB == int(row["memory.free"])
        assert gpu["reserved"] // MIB == int(row["memory.reserved"])
        assert gpu["util"] == row["utilization.gpu"]
        assert gpu["mem_util"] == row["utilization.memory"]
        assert str(gpu["temp"]) == row["temperature.gpu"]
        assert gpu["power"] / 1000 == pytest.approx(float(row["power.draw"]), abs=0.006)
        assert gpu["limit"] / 1000 == pytest.approx(float(row["enforced.power.limit"]))
        assert str(gpu["sm"]) == row["clocks.sm"]
        assert f"P{gpu['pstate']}" == row["pstate"]
        assert got["driver"] == row["driver_version"]
    apps = smi_csv(directory, env, "--query-compute-apps=gpu_uuid,pid,used_memory")
    by_gpu: dict[str, list[list[int]]] = {}
    for app in apps:
        by_gpu.setdefault(app["gpu_uuid"], []).append(
            [int(app["pid"]), int(app["used_memory"]) * MIB]
        )
    for gpu in gpus:
        assert sorted(gpu["procs"]) == sorted(by_gpu.get(gpu["uuid"], [])), gpu["uuid"]
    return got


def test_pynvml_sees_what_nvidia_smi_prints(lib_dir: Path, tmp_path: Path) -> None:
    got = _compare(lib_dir, tmp_path)
    gpus = got["gpus"]
    assert isinstance(gpus, list) and len(gpus) == 8
    assert got["cuda"] == 13000
    assert any(g["procs"] for g in gpus) and any(g["util"] == "100" for g in gpus)
    assert gpus[7]["util"] == "[N/A]"


def test_visible_devices_are_honoured_as_nvidia_smi_does(lib_dir: Path, tmp_path: Path) -> None:
    wanted = f"{gpu_uuid('node-a', 2)},{gpu_uuid('node-a', 5)}"
    got = _compare(lib_dir, tmp_path, NVIDIA_VISIBLE_DEVICES=wanted)
    gpus = got["gpus"]
    assert isinstance(gpus, list)
    assert [g["uuid"] for g in gpus] == [gpu_uuid("node-a", 2), gpu_uuid("node-a", 5)]
    assert [g["index"] for g in gpus] == [0, 1]  # renumbered, as in the container


def test_none_visible_means_no_devices(lib_dir: Path, tmp_path: Path) -> None:
    directory = state(tmp_path, hgx_node())
    env = _env(lib_dir, tmp_path, NVIDIA_VISIBLE_DEVICES="none")
    got = run_python(directory, env, DEVICES)
    assert isinstance(got, dict) and got["gpus"] == []
    smi = run_nvml(directory, env, ["nvidia-smi", "-L"], check=False)
    assert smi.returncode == 6 and smi.stdout == "No devices were found\n"


MIG = """
import json, pynvml as n
v = lambda x: getattr(x, "value", x)
n.nvmlInit()
h = n.nvmlDeviceGetHandleByIndex(7)
out = {"mode": n.nvmlDeviceGetMigMode(h), "max": n.nvmlDeviceGetMaxMigDeviceCount(h),
       "migs": []}
for i in range(out["max"]):
    try:
        m = n.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
    except n.NVMLError_NotFound:
        continue
    parent = n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m)
    mem = n.nvmlDeviceGetMemoryInfo(m)
    try:
        n.nvmlDeviceGetUtilizationRates(m)
        util = "supported"
    except n.NVMLError_NotSupported:
        util = "not supported"
    out["migs"].append({
        "uuid": n.nvmlDeviceGetUUID(m), "name": n.nvmlDeviceGetName(m),
        "is_mig": v(n.nvmlDeviceIsMigDeviceHandle(m)),
        "gi": v(n.nvmlDeviceGetGpuInstanceId(m)), "ci": v(n.nvmlDeviceGetComputeInstanceId(m)),
        "parent": n.nvmlDeviceGetUUID(parent), "total": mem.total, "used": mem.used,
        "util": util,
        "procs": [[p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId]
                  for p in n.nvmlDeviceGetComputeRunningProcesses(m)],
        "by_uuid": n.nvmlDeviceGetName(n.nvmlDeviceGetHandleByUUID(n.nvmlDeviceGetUUID(m))),
    })
out["gpu0"] = n.nvmlDeviceGetMigMode(n.nvmlDeviceGetHandleByIndex(0))
print(json.dumps(out))
"""


def test_mig_handles(lib_dir: Path, tmp_path: Path) -> None:
    node = hgx_node()
    directory = state(tmp_path, node)
    env = _env(lib_dir, tmp_path)
    got = run_python(directory, env, MIG)
    assert isinstance(got, dict)
    assert got["mode"] == [1, 1]
    assert got["max"] == 7
    gpu = node.gpus[7]
    ordered = sorted(gpu.mig_devices, key=lambda m: (m.gi_id, m.ci_id))
    migs = got["migs"]
    assert [m["uuid"] for m in migs] == [m.uuid for m in ordered]
    assert [(m["gi"], m["ci"]) for m in migs] == [(m.gi_id, m.ci_id) for m in ordered]
    assert migs[0]["name"] == "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    assert all(m["is_mig"] == 1 and m["parent"] == gpu.id for m in migs)
    assert all(m["by_uuid"] == m["name"] for m in migs)
    assert all(m["util"] == "not supported" for m in migs)
    # The busy instance's process, with its GPU/compute instance ids, as nvidia-smi lists it.
    apps = smi_csv(directory, env, "--query-compute-apps=gpu_uuid,pid,used_memory")
    mig_apps = [a for a in apps if a["gpu_uuid"] == gpu.id]
    assert [[p[0], p[1]] for p in migs[0]["procs"]] == [
        [int(a["pid"]), int(a["used_memory"]) * MIB] for a in mig_apps
    ]
    assert migs[0]["procs"][0][2:] == [1, 0]
    assert migs[1]["procs"] == []
    assert got["gpu0"] == [0, 0]  # MIG-capable, MIG disabled


def test_mig_mode_is_not_supported_where_the_product_has_no_mig(
    lib_dir: Path, tmp_path: Path
) -> None:
    code = """
import json, pynvml as n
n.nvmlInit()
h = n.nvmlDeviceGetHandleByIndex(0)
out = []
for call in (lambda: n.nvmlDeviceGetMigMode(h), lambda: n.nvmlDeviceGetMaxMigDeviceCount(h),
             lambda: n.nvmlDeviceGetMigDeviceHandleByIndex(h, 0)):
    try:
        call()
        out.append("ok")
    except n.NVMLError as e:
        out.append(str(e))
print(json.dumps(out))
"""
    got = run_python(state(tmp_path, k80_node()), _env(lib_dir, tmp_path), code)
    assert got == ["Not Supported"] * 3


LOST = """
import json, pynvml as n
n.nvmlInit()
out = {"count": n.nvmlDeviceGetCount(), "handles": []}
for i in range(out["count"]):
    try:
        h = n.nvmlDeviceGetHandleByIndex(i)
        out["handles"].append(n.nvmlDeviceGetUUID(h))
    except n.NVMLError_GpuIsLost as e:
        out["handles"].append("lost: " + str(e))
print(json.dumps(out))
"""


def test_lost_gpu_returns_gpu_is_lost(lib_dir: Path, tmp_path: Path) -> None:
    node = hgx_node()
    node.gpus[3].faults = [{"kind": "lost", "since": float(PINNED) - 5}]
    directory = state(tmp_path, node)
    got = run_python(directory, _env(lib_dir, tmp_path), LOST)
    assert isinstance(got, dict)
    assert got["count"] == 8  # still enumerated, as the real driver does
    handles = got["handles"]
    assert handles[3] == "lost: GPU is lost"
    assert [h for i, h in enumerate(handles) if i != 3] == [
        g.id for i, g in enumerate(node.gpus) if i != 3
    ]
    # nvidia-smi fails the same way for the same state and time.
    smi = run_nvml(directory, _env(lib_dir, tmp_path), ["nvidia-smi", "-L"], check=False)
    assert smi.returncode == 15 and "GPU is lost" in smi.stdout


INIT = """
import json, pynvml as n
try:
    n.nvmlInit()
    print(json.dumps("ok"))
except n.NVMLError as e:
    print(json.dumps([e.value, str(e)]))
"""


@pytest.mark.parametrize("content", [None, b"{not json", b"", b"\x00\xff\xfe"])
def test_missing_or_corrupt_state_is_a_node_without_driver(
    lib_dir: Path, tmp_path: Path, content: bytes | None
) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    if content is not None:
        (directory / "topology.json").write_bytes(content)
    got = run_python(directory, _env(lib_dir, tmp_path), INIT)
    assert got == [9, "Driver Not Loaded"]


def test_no_nvidia_smi_to_ask_is_a_node_without_driver(lib_dir: Path, tmp_path: Path) -> None:
    directory = state(tmp_path, hgx_node())
    env = _env(lib_dir, tmp_path, FGO_NVML_SMI=str(tmp_path / "missing"))
    assert run_python(directory, env, INIT) == [9, "Driver Not Loaded"]


def test_cache_serves_the_next_process_and_follows_state_changes(
    lib_dir: Path, tmp_path: Path
) -> None:
    directory = state(tmp_path, hgx_node())
    env = _env(lib_dir, tmp_path)
    count = "import json, pynvml as n; n.nvmlInit(); print(json.dumps(n.nvmlDeviceGetCount()))"
    assert run_python(directory, env, count) == 8
    # Same state, same bucket: the cache answers, nvidia-smi is not run again.
    broken = dict(env, FGO_NVML_SMI="/bin/false")
    assert run_python(directory, broken, count) == 8
    # The node agent replaced the record: the cache is stale and nvidia-smi runs again.
    state(tmp_path, k80_node(3))
    assert run_python(directory, env, count) == 3
    assert run_python(directory, broken, count) == 3


def test_gpustat_lists_the_same_gpus(lib_dir: Path, tmp_path: Path) -> None:
    import json
    import sys

    directory = state(tmp_path, hgx_node())
    env = _env(lib_dir, tmp_path)
    result = run_nvml(directory, env, [sys.executable, "-m", "gpustat", "--json"])
    report = json.loads(result.stdout)
    rows = smi_csv(directory, env, "--query-gpu=uuid,name,memory.used,memory.total")
    got = [(g["uuid"], g["name"], g["memory.used"], g["memory.total"]) for g in report["gpus"]]
    want = [(r["uuid"], r["name"], int(r["memory.used"]), int(r["memory.total"])) for r in rows]
    assert got == want


def test_library_source_is_warning_free(tmp_path: Path) -> None:
    # build.sh does not use -Werror (an older compiler in an image build must not fail on a new
    # warning); the tests do.
    import subprocess

    from nvml_testlib import NVML_DIR

    flags = ["-fsyntax-only", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"]
    result = subprocess.run(
        ["cc", *flags, str(NVML_DIR / "fakenvml.c")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


ECC = """
import json, pynvml as n
n.nvmlInit()
out = []
for i in range(n.nvmlDeviceGetCount()):
    h = n.nvmlDeviceGetHandleByIndex(i)
    out.append([n.nvmlDeviceGetTotalEccErrors(h, kind, scope) for kind in (0, 1) for scope in (0, 1)])
print(json.dumps(out))
"""


def test_ecc_errors_match_nvidia_smi(lib_dir: Path, tmp_path: Path) -> None:
    node = hgx_node()
    node.gpus[4].faults = [
        {
            "kind": "ecc",
            "sbeVolatile": 3,
            "dbeVolatile": 1,
            "sbeAggregate": 12,
            "dbeAggregate": 2,
            "since": float(PINNED) - 30,
        }
    ]
    directory = state(tmp_path, node)
    env = _env(lib_dir, tmp_path)
    got = run_python(directory, env, ECC)
    fields = [
        f"ecc.errors.{kind}.{scope}.total"
        for kind in ("corrected", "uncorrected")
        for scope in ("volatile", "aggregate")
    ]
    rows = smi_csv(directory, env, "--query-gpu=" + ",".join(fields))
    assert got == [[int(r[f]) for f in fields] for r in rows]
    assert isinstance(got, list) and got[4] != [0, 0, 0, 0]


NVITOP = """
import json
from nvitop import Device
out = []
for d in Device.all():
    out.append([d.uuid(), d.name(), d.bus_id(), d.memory_used() // 2**20,
                d.gpu_utilization(), [p.pid for p in d.processes().values()],
                [m.uuid() for m in d.mig_devices()] if d.is_mig_mode_enabled() else []])
print(json.dumps(out))
"""


def test_nvitop_sees_what_nvidia_smi_prints(lib_dir: Path, tmp_path: Path) -> None:
    node = hgx_node()
    directory = state(tmp_path, node)
    env = _env(lib_dir, tmp_path)
    got = run_python(directory, env, NVITOP)
    rows = smi_csv(directory, env, "--query-gpu=uuid,name,pci.bus_id,memory.used,utilization.gpu")
    assert isinstance(got, list) and len(got) == len(rows) == 8
    for gpu, row in zip(got, rows, strict=True):
        assert gpu[:4] == [row["uuid"], row["name"], row["pci.bus_id"], int(row["memory.used"])]
        assert str(gpu[4]) == row["utilization.gpu"] or row["utilization.gpu"] == "[N/A]"
    apps = smi_csv(directory, env, "--query-compute-apps=gpu_uuid,pid")
    for gpu in got:
        assert sorted(gpu[5]) == sorted(int(a["pid"]) for a in apps if a["gpu_uuid"] == gpu[0])
    ordered = sorted(node.gpus[7].mig_devices, key=lambda m: (m.gi_id, m.ci_id))
    assert got[7][6] == [m.uuid for m in ordered]


GOOD_HEAD = "FGO-NVML\t1\nT\t1767225900.0\t10.0\t1\nD\t580.159.04\t13000\nF\t0\t176722590\n"
MALFORMED = [
    "",  # nothing
    "garbage\n",
    GOOD_HEAD,  # no end marker: truncated
    "FGO-NVML\t2\n" + GOOD_HEAD[11:] + "E\n",  # another format version
    GOOD_HEAD.replace("D\t580.159.04\t13000\n", "") + "E\n",  # no driver line
    GOOD_HEAD.replace("F\t0\t176722590\n", "") + "E\n",  # no frame
    GOOD_HEAD + "G\t0\tGPU-x\n" + "P\t1\t2\t3\t4\tp\n" + "M\t0\n" + "E\n",  # short records
    GOOD_HEAD + "P\t1\t2\t3\t4\tp\n" + "M\t0\tMIG-x\tn\t1\t0\t1\t1\t1\t1\t1\n" + "E\n",  # orphans
    GOOD_HEAD + "G" + "\t9" * 60 + "\n" + "P\t" + "x" * 10000 + "\n" + "E\n",  # odd sizes
    GOOD_HEAD + "F\t1\n" + "E\n",  # frame line without bucket
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_snapshot_never_crashes(lib_dir: Path, tmp_path: Path, text: str) -> None:
    fake = tmp_path / "fake-smi"
    payload = tmp_path / "payload"
    payload.write_text(text)
    fake.write_text(f"#!/bin/sh\ncat {payload}\n")
    fake.chmod(0o755)
    directory = state(tmp_path, hgx_node())
    env = _env(lib_dir, tmp_path, FGO_NVML_SMI=str(fake), FGO_NVML_CACHE_DIR="")
    code = """
import json, pynvml as n
try:
    n.nvmlInit()
except n.NVMLError as e:
    print(json.dumps(["init", str(e)]))
    raise SystemExit
out = []
for i in range(n.nvmlDeviceGetCount()):
    try:
        h = n.nvmlDeviceGetHandleByIndex(i)
        out.append([n.nvmlDeviceGetUUID(h), n.nvmlDeviceGetName(h),
                    len(n.nvmlDeviceGetComputeRunningProcesses(h))])
    except n.NVMLError as e:
        out.append(str(e))
print(json.dumps(["ok", out]))
"""
    got = run_python(directory, env, code)
    assert isinstance(got, list)
    assert got[0] in ("init", "ok")
    if got[0] == "init":
        assert got[1] == "Driver Not Loaded"
