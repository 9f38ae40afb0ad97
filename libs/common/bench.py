"""Benchmark of the per-node record codec (``NodeTopology.from_yaml`` / ``to_yaml``).

Every service reads every node's record on each change (the status-updater writes it), so the
CPU one record costs to parse and to write is a per-node cost at any scale. Two 8-GPU H100
records the way the status-updater writes them: every GPU held (device plugin and DRA holders,
usage with start times, banked energy), and a MIG one (all-balanced, every MIG device held, an
injected fault). Prints CPU time per record for the shared codec and, for comparison, for
PyYAML's pure-Python and libyaml (C) loader/dumper called directly. In-process, no cluster.

    uv run python libs/common/bench.py [--runs 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from fgo_common.config import load_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.topology import (
    HOLDER_DRA,
    Holder,
    MigConfigStatus,
    NodeTopology,
    PodUsage,
    UtilizationRange,
)

CONFIG = load_cluster_config(
    "migStrategy: mixed\n"
    "nodePools:\n"
    "  full: {gpus: [{type: H100, count: 8}]}\n"
    "  mig: {gpus: [{type: H100, count: 8}], mig: {config: all-balanced}}\n"
)


def _usage(ns: str, pod: str, i: int) -> PodUsage:
    return PodUsage(
        UtilizationRange(50, 90), 40960 + i, namespace=ns, pod=pod, since=1765000000.123 + i
    )


def records() -> dict[str, NodeTopology]:
    full = build_node_topology("bench-node-0001", CONFIG.pools["full"], CONFIG, kwok=True)
    for i, gpu in enumerate(full.gpus):
        uid = f"0b6f1f3c-5d0e-4a57-9d1e-{i:012d}"
        if i % 2:
            holder = Holder("team-a", f"train-{i}", "main", uid, HOLDER_DRA, f"team-a/claim-{i}")
        else:
            holder = Holder("team-b", f"infer-{i}", "server", uid, resource="nvidia.com/gpu")
        gpu.status.holders = [holder]
        gpu.status.usage[uid] = _usage(holder.namespace, holder.pod, i)
        gpu.status.energy_banked_j = 123456.789 + i
    mig = build_node_topology("bench-node-0002", CONFIG.pools["mig"], CONFIG, kwok=True)
    mig.mig_config = MigConfigStatus("all-balanced", "all-balanced", "success", 1765000000.5)
    for i, gpu in enumerate(mig.gpus):
        for j, dev in enumerate(gpu.mig_devices):
            uid = f"7c1d2e3f-0000-4000-8000-{i:06d}{j:06d}"
            dev.holders = [Holder("team-c", f"job-{i}-{j}", "main", uid, HOLDER_DRA, f"c/{j}")]
            dev.usage[uid] = _usage("team-c", f"job-{i}-{j}", j)
    mig.gpus[3].faults = [{"kind": "xid", "xid": 79, "injected": True, "message": "fell off"}]
    return {"8 GPUs, all held": full, "8 GPUs, MIG all-balanced, all held": mig}


def cpu_per_call_ms(fn: Callable[[], object], runs: int) -> dict[str, float]:
    fn()  # warm-up (imports, caches)
    samples = []
    for _ in range(runs):
        t0 = time.process_time_ns()
        fn()
        samples.append((time.process_time_ns() - t0) / 1e6)
    return {"p50_ms": statistics.median(samples), "mean_ms": statistics.fmean(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="calls per figure")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    c_loader: Any = getattr(yaml, "CSafeLoader", None)
    c_dumper: Any = getattr(yaml, "CSafeDumper", None)
    out: dict[str, Any] = {"libyaml": c_loader is not None, "runs": args.runs, "records": {}}
    print(
        f"record codec, CPU per record (p50 / mean over {args.runs} calls); libyaml present: "
        f"{c_loader is not None}"
    )
    for name, record in records().items():
        text = record.to_yaml()
        data = record.to_dict()
        cases: dict[str, Callable[[], object]] = {
            "NodeTopology.from_yaml": lambda t=text: NodeTopology.from_yaml(t),
            "NodeTopology.to_yaml": record.to_yaml,
            "pure-Python load+from_dict": lambda t=text: NodeTopology.from_dict(
                yaml.load(t, Loader=yaml.SafeLoader)
            ),
            "pure-Python dump": lambda d=data: yaml.dump(
                d, Dumper=yaml.SafeDumper, sort_keys=False, default_flow_style=False
            ),
        }
        if c_loader is not None and c_dumper is not None:
            cases["libyaml load+from_dict"] = lambda t=text: NodeTopology.from_dict(
                yaml.load(t, Loader=c_loader)  # noqa: S506 - a safe loader
            )
            cases["libyaml dump"] = lambda d=data: yaml.dump(
                d, Dumper=c_dumper, sort_keys=False, default_flow_style=False
            )
        figures = {case: cpu_per_call_ms(fn, args.runs) for case, fn in cases.items()}
        out["records"][name] = {"bytes": len(text.encode()), "cpu": figures}
        print(f"\n{name} ({len(text.encode())} bytes of YAML)")
        for case, fig in figures.items():
            print(f"  {case:<30} {fig['p50_ms']:7.2f} ms  {fig['mean_ms']:7.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
