"""`make bench`: run the scenarios, print figures as they come, write results.json, report.md
and plots under bench-results/<timestamp>/ (copied to bench-results/latest/).

Each scenario runs under its own time budget; one that runs out or fails keeps what it measured
(status ``partial``/``failed``) and the run goes on with the next.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import machine, results
from bench.env import BenchConfig, BenchEnv
from bench.procmon import Sampler
from bench.scenarios.context import RunContext

# Run order: nvidia-smi needs no cluster (and a quiet machine); bring-up leaves the nodes the
# later scenarios use; footprint's idle phase comes before churn; footprint is summarised last.
ORDER = ("nvidia-smi", "components", "bringup", "exporter", "footprint", "churn", "scheduler")
MODULES = {
    "nvidia-smi": "bench.scenarios.nvidia_smi",
    "components": "bench.scenarios.components",
    "bringup": "bench.scenarios.bringup",
    "exporter": "bench.scenarios.exporter",
    "footprint": "bench.scenarios.footprint",
    "churn": "bench.scenarios.churn",
    "scheduler": "bench.scenarios.scheduler",
}
MAX_SERIES_POINTS = 600


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", ",").split(",") if x]


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    d = BenchConfig()
    p.add_argument(
        "--nodes",
        type=_int_list,
        default=d.nodes,
        help="bring-up sizes, comma-separated (default 100,500,1000); the largest "
        "is kept for the other scenarios",
    )
    p.add_argument("--pods", type=int, default=d.pods, help="churn: pods per path")
    p.add_argument(
        "--rate",
        type=float,
        default=d.churn_rate,
        help="churn: create/delete pods at this many per second (0 = all at once)",
    )
    p.add_argument(
        "--sched-pods", type=int, default=d.sched_pods, help="scheduler throughput: pods per path"
    )
    p.add_argument("--scrapes", type=int, default=d.scrapes, help="exporter: scrapes")
    p.add_argument("--smi-runs", type=int, default=d.smi_runs, help="nvidia-smi: runs per command")
    p.add_argument(
        "--idle", type=float, default=d.idle_seconds, help="footprint: seconds of idle measurement"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=d.scenario_timeout_s,
        help="time budget of each scenario in seconds (bring-up: per size)",
    )
    p.add_argument(
        "--bringup-timeout",
        type=float,
        default=d.bringup_timeout_s,
        help="bring-up: seconds to wait for one size to be fully advertised",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(ORDER),
        help=f"comma-separated subset of: {', '.join(ORDER)}",
    )
    p.add_argument("--gpus-per-node", type=int, default=d.gpus_per_node)
    p.add_argument("--gpu-type", default=d.gpu_type)
    p.add_argument(
        "--no-dra",
        dest="dra",
        action="store_false",
        help="leave the KWOK DRA plugin off (no ResourceSlices, no DRA paths)",
    )
    p.add_argument(
        "--components",
        choices=("standalone", "all"),
        default=d.components,
        help="which services/*/bench.py to run: the standalone ones, or also those that "
        "start their own control plane",
    )
    p.add_argument(
        "--grant-missing-rbac",
        action="store_true",
        help="add the bench-only RBAC the chart is known to lack (bench/env.py "
        "BENCH_RBAC_PATCHES) so the paths behind it can be measured; off by default",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=d.replicas,
        help="replicas of each central service (> 1: leader election; standbys are measured "
        "as <deployment>-1)",
    )
    p.add_argument("--state-dir", type=Path, default=d.state_dir)
    p.add_argument("--out", type=Path, default=d.out_dir)
    p.add_argument(
        "--keep-cluster",
        action="store_true",
        help="leave the bench cluster and services running afterwards",
    )
    a = p.parse_args(argv)
    wanted = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in MODULES]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    if not a.nodes or min(a.nodes) < 1:
        p.error("--nodes needs at least one positive size")
    if not 1 <= a.replicas <= 5:
        p.error("--replicas must be between 1 and 5 (the chart's range)")
    return BenchConfig(
        nodes=sorted(set(a.nodes)),
        gpus_per_node=a.gpus_per_node,
        gpu_type=a.gpu_type,
        pods=a.pods,
        churn_rate=a.rate,
        sched_pods=a.sched_pods,
        scrapes=max(a.scrapes, 1),
        smi_runs=a.smi_runs,
        idle_seconds=a.idle,
        scenario_timeout_s=a.timeout,
        bringup_timeout_s=a.bringup_timeout,
        scenarios=[s for s in ORDER if s in wanted],
        components=a.components,
        grant_missing_rbac=a.grant_missing_rbac,
        replicas=a.replicas,
        state_dir=a.state_dir,
        out_dir=a.out,
        keep_cluster=a.keep_cluster,
        dra=a.dra,
    )


def budget(name: str, config: BenchConfig) -> float:
    if name == "bringup":
        # Each size: its wait budget, node creation, and the teardown before the next size.
        return len(config.nodes) * (config.bringup_timeout_s + 240.0)
    if name == "footprint":
        return config.idle_seconds + 60.0
    if name == "nvidia-smi":
        return min(config.scenario_timeout_s, 300.0)
    if name == "components":
        return 6 * min(config.scenario_timeout_s, 600.0) + 60.0
    return config.scenario_timeout_s


def downsample(points: list[list[float]], limit: int = MAX_SERIES_POINTS) -> list[list[float]]:
    if len(points) <= limit:
        return points
    step = len(points) / limit
    return [points[int(i * step)] for i in range(limit)]


class Runner:
    def __init__(self, config: BenchConfig, repo: Path) -> None:
        self.config = config
        self.repo = repo
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%SZ")
        self.out_dir = (repo / config.out_dir / stamp).resolve()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        config.out_dir = self.out_dir
        self.sampler = Sampler()
        self.ctx = RunContext(config, repo, self.out_dir, self.sampler)
        self.started = time.time()
        self.machine = machine.describe(repo)
        self.scenarios: list[results.ScenarioResult] = []
        self.extra: dict[str, Any] = {}

    def document(self) -> dict[str, Any]:
        footprint: dict[str, Any] = {
            "series": {k: downsample(v) for k, v in self.sampler.series().items()},
            "phase_spans": [list(s) for s in self.sampler.phase_spans()],
            "groups": {name: t.group for name, t in self.sampler.tracked.items()},
        }
        return {
            "schema": results.SCHEMA,
            "started_at": self.started,
            "finished_at": time.time(),
            "machine": self.machine,
            "config": self.config.to_dict(),
            "scenarios": [s.to_dict() for s in self.scenarios],
            "footprint": footprint,
            **self.extra,
        }

    def save(self) -> Path:
        path = self.out_dir / "results.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.document(), indent=1, default=str))
        tmp.replace(path)
        return path

    async def run_one(self, name: str, module: ModuleType) -> results.ScenarioResult:
        result = results.ScenarioResult(name, module.TITLE)
        self.scenarios.append(result)
        if module.NEEDS_CLUSTER and self.ctx.env is None:
            result.finish("skipped", "the local cluster did not start")
            return result
        limit = budget(name, self.config)
        result.say(f"--- {module.TITLE} (budget {limit:.0f}s)")
        try:
            await asyncio.wait_for(module.run(self.ctx, result), limit)
            result.finish("ok")
        except TimeoutError:
            result.note(f"stopped by its time budget of {limit:.0f}s; figures are partial")
            result.finish("partial", f"time budget of {limit:.0f}s exceeded")
        except Exception as exc:
            detail = "".join(traceback.format_exception(exc)[-6:])
            result.say(f"FAILED: {exc!r}\n{detail}")
            result.finish("partial" if result.figures else "failed", f"{exc!r}")
        self.save()
        return result

    async def main(self) -> int:
        stop = asyncio.Event()
        sampler_task = asyncio.get_running_loop().create_task(self.sampler.run(stop))
        env: BenchEnv | None = None
        try:
            mods = {n: importlib.import_module(MODULES[n]) for n in self.config.scenarios}
            # Scenarios that need no cluster first, while the machine is quiet.
            for name in self.config.scenarios:
                if not mods[name].NEEDS_CLUSTER:
                    await self.run_one(name, mods[name])
            if any(m.NEEDS_CLUSTER for m in mods.values()):
                env = BenchEnv(self.config, self.repo, self.sampler)
                try:
                    await env.start()
                    self.ctx.env = env
                    self.extra["services"] = {
                        w.workload.name: {
                            "module": w.workload.module,
                            "service_account": w.workload.service_account,
                            "log": str(w.log),
                        }
                        for w in env.workloads
                    }
                except Exception as exc:
                    print(f"[env] cluster/services failed to start: {exc!r}", file=sys.stderr)
                    self.extra["env_error"] = repr(exc)
            for name in self.config.scenarios:
                if mods[name].NEEDS_CLUSTER:
                    await self.run_one(name, mods[name])
            if env is not None and self.ctx.env is not None:
                self.extra["services_alive_at_end"] = env.alive_services()
                await self._save_service_metrics(env)
            footprint = next((s for s in self.scenarios if s.name == "footprint"), None)
            if footprint is not None and footprint.status != "skipped":
                mods["footprint"].finalize(self.ctx, footprint)
        finally:
            stop.set()
            await sampler_task
            self.machine["load_average_at_end"] = list(os.getloadavg())
            self.save()
            if env is not None:
                await env.stop()
        self.publish()
        return 0

    async def _save_service_metrics(self, env: BenchEnv) -> None:
        """Each service's own /metrics at the end, kept next to the results for reference."""
        import aiohttp

        folder = self.out_dir / "service-metrics"
        folder.mkdir(exist_ok=True)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for w in env.workloads:
                url = env.health_url(w.workload.name)
                if url is None:
                    continue
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with session.get(f"{url}/metrics") as resp:
                        (folder / f"{w.workload.name}.txt").write_text(await resp.text())

    def publish(self) -> None:
        from bench import report

        doc = json.loads((self.out_dir / "results.json").read_text())
        problems = results.validate(doc)
        if problems:
            print(
                "[bench] results.json does not match its schema:\n  " + "\n  ".join(problems),
                file=sys.stderr,
            )
        report.write(doc, self.out_dir)
        latest = self.out_dir.parent / "latest"
        if latest.is_symlink() or latest.is_file():
            latest.unlink()
        elif latest.exists():
            shutil.rmtree(latest)
        shutil.copytree(self.out_dir, latest)
        print(f"[bench] report: {self.out_dir / 'report.md'} (copy in {latest})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from fgo_common.runtime.logging import configure_logging
    from fgo_localcluster.tools import find_repo_root

    config = parse_args(argv)
    # The harness's own watches log through structlog; their debug chatter is not figures.
    configure_logging("bench", "WARNING")
    repo = find_repo_root() or Path.cwd()
    runner = Runner(config, repo)
    print(f"[bench] writing to {runner.out_dir}", file=sys.stderr)
    return asyncio.run(runner.main())


if __name__ == "__main__":
    sys.exit(main())
