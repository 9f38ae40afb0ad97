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
    sys.path.insert(0, str(HERE / "tests"))
    from fgo_common.nodestate import write_node_state
    from smi_fixtures import hgx_node

    write_node_state(directory, hgx_node())


def _measure(binary: Path, args: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([str(binary), *args], env=env, check=True, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
    return times


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
            times = sorted(_measure(binary, args, env, ns.runs))
            p50 = statistics.median(times)
            p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
            print(
                f"{name:<14} runs={ns.runs:<4} p50={p50:6.1f} ms  p95={p95:6.1f} ms  "
                f"(cpus={os.cpu_count()}, load={os.getloadavg()[0]:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
