"""A batch of benchmark pods followed from creation to deletion through every view of them:
the pod itself (scheduled, Running, gone), the topology records (status-updater) and the
exporter's metrics (status-exporter), each stamped when first seen (bench.observe).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import aiohttp
import yaml
from fgo_common.topology import NODE_TOPOLOGY_LABEL, TOPOLOGY_DATA_KEY, NodeTopology

from bench.env import NAMESPACE, OPERATOR_NAMESPACE, BenchEnv
from bench.observe import FirstSeen, Watch, is_deleted, wait_until
from bench.workload import RUN_LABEL

Obj = dict[str, Any]
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_POD_LABEL = re.compile(r'[{,]pod="([^"]*)"')

# A wait gives up when no pod reached a new state for this long.
STALL_S = 60.0
# Leaving a view is only expected of pods that were in it.
PRECONDITION = {"out_topology": "in_topology", "out_metrics": "in_metrics"}
STATES = (
    "sent",
    "scheduled",
    "running",
    "in_topology",
    "in_metrics",
    "delete_sent",
    "gone",
    "out_topology",
    "out_metrics",
)


def topology_holders(text: str, namespace: str = NAMESPACE) -> set[str]:
    """Names of the pods of ``namespace`` holding a GPU (or MIG device) in a topology record."""
    topo = NodeTopology.from_dict(yaml.load(text, Loader=_LOADER))  # noqa: S506 - safe loader
    out: set[str] = set()
    for gpu in topo.gpus:
        holders = list(gpu.status.holders)
        for mig in gpu.mig_devices:
            holders.extend(mig.holders)
        out.update(h.pod for h in holders if h.namespace == namespace)
    return out


def first_family_pods(text: str) -> set[str]:
    """Pod label values in the first metric family of an exposition (every GPU series of a
    dcgm-exporter family carries the pod labels, so one family is enough and cheap)."""
    start = text.find("\n", text.find("# TYPE")) + 1 if "# TYPE" in text else 0
    end = text.find("# HELP", start)
    block = text[start:] if end < 0 else text[start:end]
    return {p for p in _POD_LABEL.findall(block) if p}


class PodBatch:
    """Follows the pods named ``names`` (label ``RUN_LABEL=run``)."""

    def __init__(
        self,
        env: BenchEnv,
        run: str,
        names: list[str],
        *,
        topology: bool = True,
        metrics: bool = True,
    ) -> None:
        self.env = env
        self.run = run
        self.names = set(names)
        self.first = FirstSeen()
        self.follow_topology = topology
        self.follow_metrics = metrics and env.exporter_url is not None
        self._cm_holders: dict[str, set[str]] = {}
        self._metric_pods: set[str] = set()
        self._watches: list[Watch] = []
        self._stop = asyncio.Event()
        self._scraper: asyncio.Task[None] | None = None
        self.scrape_seconds: list[float] = []
        self.scrape_errors = 0

    # ----------------------------------------------------------------- feeds

    def on_pod(self, event: str, obj: Obj, t: float) -> None:
        name = obj["metadata"]["name"]
        if name not in self.names:
            return
        if is_deleted(event):
            self.first.stamp("gone", name, t)
            return
        if (obj.get("spec") or {}).get("nodeName"):
            self.first.stamp("scheduled", name, t)
        if (obj.get("status") or {}).get("phase") == "Running":
            self.first.stamp("running", name, t)

    def on_configmap(self, event: str, obj: Obj, t: float) -> None:
        key = obj["metadata"]["name"]
        before = self._cm_holders.get(key, set())
        text = (obj.get("data") or {}).get(TOPOLOGY_DATA_KEY) or ""
        now: set[str] = set()
        if not is_deleted(event) and text:
            try:
                now = topology_holders(text) & self.names
            except Exception:
                now = before
        self._cm_holders[key] = now
        for pod in now - before:
            self.first.stamp("in_topology", pod, t)
        for pod in before - now:
            if not any(pod in h for h in self._cm_holders.values()):
                self.first.stamp("out_topology", pod, t)

    def on_scrape(self, pods: set[str], t: float) -> None:
        now = pods & self.names
        for pod in now - self._metric_pods:
            self.first.stamp("in_metrics", pod, t)
        for pod in self._metric_pods - now:
            self.first.stamp("out_metrics", pod, t)
        self._metric_pods = now

    async def _scrape_loop(self) -> None:
        assert self.env.exporter_url is not None
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    async with session.get(self.env.exporter_url) as resp:
                        text = await resp.text()
                    ended = time.monotonic()
                    self.scrape_seconds.append(ended - started)
                    self.on_scrape(first_family_pods(text), ended)
                except (aiohttp.ClientError, TimeoutError):
                    self.scrape_errors += 1
                    await asyncio.sleep(1.0)
                # Leave the exporter (and the 2 cores) some air between scrapes.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.25)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        from kubernetes_asyncio import client

        core = client.CoreV1Api(self.env.api)
        self._watches.append(
            await Watch(
                core.list_namespaced_pod,
                f"pods-{self.run}",
                self.on_pod,
                namespace=NAMESPACE,
                label_selector=f"{RUN_LABEL}={self.run}",
            ).start()
        )
        if self.follow_topology:
            self._watches.append(
                await Watch(
                    core.list_namespaced_config_map,
                    f"topology-{self.run}",
                    self.on_configmap,
                    namespace=OPERATOR_NAMESPACE,
                    label_selector=f"{NODE_TOPOLOGY_LABEL}=true",
                ).start()
            )
        if self.follow_metrics:
            self._scraper = asyncio.get_running_loop().create_task(self._scrape_loop())

    async def stop(self) -> None:
        self._stop.set()
        if self._scraper is not None:
            self._scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._scraper
        for w in self._watches:
            await w.stop()

    # ----------------------------------------------------------------- queries

    def count(self, state: str) -> int:
        return self.first.count(state, self.names)

    def expected(self, state: str) -> int:
        """How many pods can reach ``state``: leaving a view needs having been in it."""
        before = PRECONDITION.get(state)
        return self.count(before) if before else len(self.names)

    async def wait(
        self,
        states: list[str],
        timeout_s: float,
        label: str,
        say: Any = None,
        stall_s: float = STALL_S,
    ) -> bool:
        """Until every pod reached every state in ``states`` (progress every 5 s); gives up
        early when nothing moved for ``stall_s`` (a broken path should not eat the budget)."""
        t0 = time.monotonic()
        last_print = 0.0
        progress = -1
        moved = t0

        def check() -> bool:
            nonlocal last_print, progress, moved
            now = time.monotonic()
            counts = [self.count(s) for s in states]
            wanted = [self.expected(s) for s in states]
            if sum(counts) != progress:
                progress, moved = sum(counts), now
            if say is not None and now - last_print >= 5.0:
                last_print = now
                say(
                    f"{label} t={now - t0:.0f}s "
                    + " ".join(
                        f"{s}={c}/{w}" for s, c, w in zip(states, counts, wanted, strict=True)
                    )
                )
            return counts == wanted or now - moved > stall_s

        await wait_until(check, timeout_s, 0.1)
        done = all(self.count(s) == self.expected(s) for s in states)
        if not done and say is not None:
            stalled = time.monotonic() - moved > stall_s
            say(
                f"{label}: gave up after {time.monotonic() - t0:.0f}s ("
                + ("no progress for " + f"{stall_s:.0f}s" if stalled else "time budget")
                + "): "
                + " ".join(f"{s}={self.count(s)}/{self.expected(s)}" for s in states)
            )
        return done

    def latencies(self, start: str, end: str) -> list[float]:
        a, b = self.first.get(start), self.first.get(end)
        return [b[k] - a[k] for k in a.keys() & b.keys() if k in self.names]

    def span(self, start_state: str, end_state: str) -> float | None:
        """From the first ``start_state`` stamp to the last ``end_state`` stamp, if all got it."""
        a, b = self.first.get(start_state), self.first.get(end_state)
        reached = [b[k] for k in self.names if k in b]
        if not a or not reached or len(reached) < self.expected(end_state):
            return None
        return max(reached) - min(a.values())
