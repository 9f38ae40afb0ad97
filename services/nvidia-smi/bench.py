"""Wall time per invocation of the packaged nvidia-smi (p50/p95), for the default table and a CSV
query, against a simulated 8-GPU H100 node state.

    uv run python services/nvidia-smi/bench.py [--runs 50] [--binary PATH]

Builds the bundle first (build.sh) unless --binary is given. Prints one line per case.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_BINARY = ROOT / "build" / "nvidia-smi" / "dist" / "nvidia-smi" / "nvidia-smi"

CASES = {
    "default table": [],
    "csv query": [
        "--query-gpu=index,name,uuid,memory.used,utilization.gpu,power.draw",
        "--format=csv,noheader,nounits",
    ],
}


def _write_state(directory: Path) -> None:
    import importlib

    from fgo_common.nodestate import write_node_state

    sys.path.insert(0, str(HERE / "tests"))
    fixtures = importlib.import_module("smi_fixtures")  # the tests' 8-GPU HGX node
    write_node_state(directory, fixtures.hgx_node())


def _measure(
    binary: Path, args: list[str], env: dict[str, str], runs: int
) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) milliseconds per run. CPU time is the steadier number on a
    machine shared with other work; wall time is what a user waits."""
    wall, cpu = [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen([str(binary), *args], env=env, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((usage.ru_utime + usage.ru_stime) * 1000)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{binary} {args} exited {proc.returncode}")
    return sorted(wall), sorted(cpu)


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--binary", type=Path, default=None)
    ns = parser.parse_args()
    binary = ns.binary
    if binary is None:
        subprocess.run([str(HERE / "build.sh")], check=True, stdout=subprocess.DEVNULL)
        binary = DEFAULT_BINARY
    with tempfile.TemporaryDirectory() as tmp:
        _write_state(Path(tmp))
        env = {"PATH": "/usr/bin:/bin", "FGO_STATE_DIR": tmp, "HOME": tmp}
        for name, args in CASES.items():
            _measure(binary, args, env, 3)  # warm the page cache
            wall, cpu = _measure(binary, args, env, ns.runs)
            print(
                f"{name:<14} runs={ns.runs:<4} wall p50={statistics.median(wall):6.1f} ms "
                f"p95={_pct(wall, 0.95):6.1f} ms | cpu p50={statistics.median(cpu):6.1f} ms "
                f"p95={_pct(cpu, 0.95):6.1f} ms  (cpus={os.cpu_count()}, "
                f"load={os.getloadavg()[0]:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
