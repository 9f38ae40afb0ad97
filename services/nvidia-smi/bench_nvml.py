"""Cost of the fake libnvidia-ml.so.1 (docs/nvml.md): nvmlInit + one full device query, cold
(the library runs the packaged nvidia-smi for a snapshot), cold with the node agents'
nvml-node.snap present (no exec), and warm (the per-container cache file answers); the node
agent's CPU per refresh of nvml-node.snap; and the CPU share of a 1 Hz polling loop, against
the 8-GPU H100 test node.

    uv run python services/nvidia-smi/bench_nvml.py [--runs 20] [--poll-seconds 60]
        [--binary PATH]

Builds the bundle (build.sh) unless --binary is given or it exists, and the library. Every
number is measured inside the client process (pynvml from nvidia-ml-py) after its imports:
wall milliseconds and CPU milliseconds of the process and its children (the snapshot exec).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_BINARY = ROOT / "build" / "nvidia-smi" / "dist" / "nvidia-smi" / "nvidia-smi"

# One client process: init + full query of every device, or a polling loop; prints JSON.
CLIENT = r"""
import json, os, resource, sys, time
import pynvml as n

def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime) * 1000

def query():
    for i in range(n.nvmlDeviceGetCount()):
        h = n.nvmlDeviceGetHandleByIndex(i)
        n.nvmlDeviceGetName(h); n.nvmlDeviceGetUUID(h); n.nvmlDeviceGetPciInfo(h)
        n.nvmlDeviceGetMemoryInfo(h); n.nvmlDeviceGetTemperature(h, 0)
        n.nvmlDeviceGetPowerUsage(h); n.nvmlDeviceGetClockInfo(h, 1)
        n.nvmlDeviceGetComputeRunningProcesses(h)
        try:
            n.nvmlDeviceGetUtilizationRates(h)
        except n.NVMLError_NotSupported:
            pass

mode, seconds = sys.argv[1], float(sys.argv[2])
t0, c0 = time.perf_counter(), cpu()
n.nvmlInit()
query()
once = {"wall_ms": (time.perf_counter() - t0) * 1000, "cpu_ms": cpu() - c0}
if mode == "poll":
    t1, c1 = time.perf_counter(), cpu()
    deadline = t1 + seconds
    polls = 0
    while time.perf_counter() < deadline:
        query()
        polls += 1
        time.sleep(1.0)
    wall = time.perf_counter() - t1
    once.update(polls=polls, poll_wall_s=wall, poll_cpu_ms=cpu() - c1)
print(json.dumps(once))
"""


def _write_state(directory: Path) -> None:
    import importlib

    from fgo_common.nodestate import write_node_state

    sys.path.insert(0, str(HERE / "tests"))
    fixtures = importlib.import_module("smi_fixtures")  # the tests' 8-GPU HGX node
    write_node_state(directory, fixtures.hgx_node())


def _client(env: dict[str, str], mode: str, seconds: float = 0.0) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, mode, str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


NODE_FRAMES = 60  # fgo_common.nvmlnode.DEFAULT_FRAMES


def _node_snapshot(binary: Path, state_dir: Path) -> float:
    """One refresh as the agent does it (the bundle's node mode + atomic write); CPU ms."""
    import resource

    from fgo_common.nvmlnode import SNAPSHOT_FLAG, write_nvml_node_file

    def cpu() -> float:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        s = resource.getrusage(resource.RUSAGE_SELF)
        return (c.ru_utime + c.ru_stime + s.ru_utime + s.ru_stime) * 1000

    before = cpu()
    env = {"PATH": "/usr/bin:/bin", "FGO_STATE_DIR": str(state_dir), "FGO_SEED": "0"}
    out = subprocess.run(
        [str(binary), SNAPSHOT_FLAG, str(NODE_FRAMES)], env=env, capture_output=True, check=True
    ).stdout
    write_nvml_node_file(str(state_dir), out)
    return cpu() - before


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--poll-seconds", type=float, default=60.0)
    parser.add_argument("--binary", type=Path, default=None)
    args = parser.parse_args()
    binary = args.binary or DEFAULT_BINARY
    if args.binary is None and not binary.is_file():
        subprocess.run([str(HERE / "build.sh")], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        lib_dir = tmp_path / "lib"
        subprocess.run([str(HERE / "nvml" / "build.sh"), str(lib_dir)], check=True)
        _write_state(tmp_path / "state")
        cache = tmp_path / "cache"
        cache.mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LD_LIBRARY_PATH": str(lib_dir),
            "FGO_STATE_DIR": str(tmp_path / "state"),
            "FGO_NVML_SMI": str(binary),
            "FGO_NVML_CACHE_DIR": str(cache),
        }
        cold, warm, cold_file = [], [], []
        for _ in range(args.runs):
            for stale in cache.iterdir():
                stale.unlink()
            cold.append(_client(env, "once"))
            warm.append(_client(env, "once"))
        # The node agents' file (fgo_common.nvmlnode): what one refresh costs the agent, then
        # cold clients (no cache file) that find it.
        state_dir = tmp_path / "state"
        writes = []
        for _ in range(max(3, args.runs // 4)):
            writes.append(_node_snapshot(binary, state_dir))
        print(
            f"node agent: one nvml-node.snap refresh ({NODE_FRAMES} frames, 8 GPUs, "
            f"{(state_dir / 'nvml-node.snap').stat().st_size // 1024} KiB): CPU p50 "
            f"{statistics.median(writes):.0f} ms p95 {_pct(writes, 0.95):.0f} ms; every "
            f"{NODE_FRAMES * 5} s = {3600 / (NODE_FRAMES * 5):.0f} refreshes/h = "
            f"{statistics.median(writes) * 3600 / (NODE_FRAMES * 5) / 1000:.1f} s CPU per hour "
            f"({statistics.median(writes) / (NODE_FRAMES * 5) / 10:.3f} % of one core) plus one "
            "refresh per record change"
        )
        for _ in range(args.runs):
            for stale in cache.iterdir():
                stale.unlink()
            cold_file.append(_client(env, "once"))
        for name, rows in (
            ("cold (exec nvidia-smi)", cold),
            ("warm (cache file)", warm),
            ("cold (node agents' nvml-node.snap)", cold_file),
        ):
            wall = [r["wall_ms"] for r in rows]
            cpu = [r["cpu_ms"] for r in rows]
            print(
                f"nvmlInit + full query of 8 GPUs, {name}: wall p50 {statistics.median(wall):.1f}"
                f" ms p95 {_pct(wall, 0.95):.1f} ms; CPU p50 {statistics.median(cpu):.1f} ms"
                f" p95 {_pct(cpu, 0.95):.1f} ms ({len(rows)} runs)"
            )
        if args.poll_seconds > 0:
            for stale in cache.iterdir():
                stale.unlink()
            poll = _client(env, "poll", args.poll_seconds)
            share = poll["poll_cpu_ms"] / 1000 / poll["poll_wall_s"] * 100
            print(
                f"1 Hz polling (full query of 8 GPUs), node agents' file: {poll['polls']:.0f} "
                f"polls in {poll['poll_wall_s']:.0f} s, CPU {poll['poll_cpu_ms']:.0f} ms = "
                f"{share:.2f} % of one core"
            )
        (state_dir / "nvml-node.snap").unlink()
        for frames in ("12", "3") if args.poll_seconds > 0 else ():
            for stale in cache.iterdir():
                stale.unlink()
            poll = _client(dict(env, FGO_NVML_FRAMES=frames), "poll", args.poll_seconds)
            share = poll["poll_cpu_ms"] / 1000 / poll["poll_wall_s"] * 100
            print(
                f"1 Hz polling (full query of 8 GPUs), {frames} frames per snapshot "
                f"(a new exec every {int(frames) * 10} s): {poll['polls']:.0f} polls in "
                f"{poll['poll_wall_s']:.0f} s, CPU {poll['poll_cpu_ms']:.0f} ms = {share:.2f} %"
                " of one core"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
