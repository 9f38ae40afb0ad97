"""A steady, bounded load of GPU pod churn for the fault suite.

Pods come and go on the test's nodes the whole time faults are injected: device-plugin pods
(``nvidia.com/gpu: 1|2``, one with an init container needing more than the app) on the
device-plugin nodes, DRA pods (a ResourceClaimTemplate for one GPU, or two) on the DRA nodes.
Each node has a GPU budget and a pod is only created where its GPUs fit, so every pod can run
and no two paths (extended resource and DRA) ever compete for one node's GPUs — an
over-committed node would be a test artefact, not a bug. Creations are serialised (the steady
loop and an injected burst never size them from two lists at once) for the same reason.

The budget is recomputed from a list of the pods every step (not from what this generator
thinks it created): a create call that timed out during an apiserver outage may still have
created its pod. Everything the generator does is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

log = structlog.get_logger("faults.churn")

GPU = "nvidia.com/gpu"
TIMEOUT = 10
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
RUN_LABEL = "fgo.test/churn"
GPUS_ANNOTATION = "fgo.test/gpus"
EXPIRES_ANNOTATION = "fgo.test/expires"


def _why_pending(pod: dict[str, Any]) -> str:
    """The scheduler's or kubelet's last word on a pod that is not running (for the report)."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending":
        return ""
    node = pod["spec"].get("nodeName")
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("message"):
            return f", {condition['type']}: {condition['message'][:160]}"
    return f", on {node}" if node else ", not scheduled"


@dataclass
class ChurnStats:
    created: int = 0
    deleted: int = 0
    create_errors: int = 0
    delete_errors: int = 0
    list_errors: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class Settled:
    ok: bool
    pods: int
    detail: str = ""


def claim_templates() -> list[dict[str, Any]]:
    def template(name: str, count: int) -> dict[str, Any]:
        exactly: dict[str, Any] = {"deviceClassName": "gpu.nvidia.com"}
        if count > 1:
            exactly |= {"allocationMode": "ExactCount", "count": count}
        return {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaimTemplate",
            "metadata": {"name": name},
            "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}}},
        }

    return [template("gpu1", 1), template("gpu2", 2)]


class Churn:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        *,
        dp_nodes: dict[str, int],
        dra_nodes: dict[str, int],
        run: str,
        seed: int = 1,
        interval_s: float = 0.4,
        lifetime_s: tuple[float, float] = (4.0, 20.0),
        fill: float = 0.75,
    ) -> None:
        self.core: Any = client.CoreV1Api(api)
        self.resource: Any = client.ResourceV1Api(api)
        self.namespace = namespace
        self.dp_nodes = dict(dp_nodes)
        self.dra_nodes = dict(dra_nodes)
        self.run = run
        self.rng = random.Random(seed)
        self.interval_s = interval_s
        self.lifetime_s = lifetime_s
        self.fill = fill
        self.paused = asyncio.Event()
        self.stats = ChurnStats()
        self._seq = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One creator at a time: the loop and a burst each size their creations from their own
        # list of pods, so running both at once could over-commit a node (a pod the scheduler
        # rightly leaves Pending for good once the churn pauses, which is not a bug of ours).
        self._creating = asyncio.Lock()
        self.excluded: set[str] = set()  # nodes not to place new pods on (e.g. being deleted)

    async def setup(self) -> None:
        for body in claim_templates():
            with contextlib.suppress(ApiException):
                await self.resource.create_namespaced_resource_claim_template(
                    self.namespace, body, _request_timeout=TIMEOUT
                )

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="churn")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def pause(self) -> None:
        self.paused.set()

    def resume(self) -> None:
        self.paused.clear()

    # ------------------------------------------------------------------ pods

    async def list_pods(self) -> list[dict[str, Any]]:
        resp = await self.core.list_namespaced_pod(
            self.namespace,
            label_selector=f"{RUN_LABEL}={self.run}",
            _preload_content=False,
            _request_timeout=TIMEOUT,
        )
        try:
            items: list[dict[str, Any]] = json.loads(await resp.read())["items"]
        finally:
            resp.release()
        return items

    def _budget(self, pods: list[dict[str, Any]]) -> dict[str, int]:
        used = dict.fromkeys([*self.dp_nodes, *self.dra_nodes], 0)
        for pod in pods:
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            node = pod["spec"]["nodeSelector"]["kubernetes.io/hostname"]
            used[node] = used.get(node, 0) + int(pod["metadata"]["annotations"][GPUS_ANNOTATION])
        nodes = {**self.dp_nodes, **self.dra_nodes}
        return {n: int(nodes[n] * self.fill) - used.get(n, 0) for n in nodes}

    def _pod(self, node: str, kind: str) -> tuple[dict[str, Any], int]:
        self._seq += 1
        name = f"churn-{self._seq}-{kind}"
        expires = time.time() + self.rng.uniform(*self.lifetime_s)
        container: dict[str, Any] = {
            "name": "main",
            "image": "registry.k8s.io/pause:3.10",
            "resources": {},
        }
        spec: dict[str, Any] = {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [KWOK_TOLERATION],
            # Not 0: a 0 grace period deletes the object at once; with 1 the pod goes through
            # "being deleted" (deletionTimestamp) like a real one, which holders must survive.
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        }
        gpus = {"dp1": 1, "dp2": 2, "init": 2, "dra1": 1, "dra2": 2}[kind]
        if kind in ("dp1", "dp2"):
            container["resources"] = {"limits": {GPU: str(gpus)}}
        elif kind == "init":
            container["resources"] = {"limits": {GPU: "1"}}
            spec["initContainers"] = [
                {
                    "name": "warmup",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"limits": {GPU: "2"}},
                }
            ]
        else:
            template = "gpu1" if kind == "dra1" else "gpu2"
            spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": template}]
            container["resources"] = {"claims": [{"name": "gpu"}]}
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {RUN_LABEL: self.run},
                "annotations": {GPUS_ANNOTATION: str(gpus), EXPIRES_ANNOTATION: f"{expires:.1f}"},
            },
            "spec": spec,
        }
        return body, gpus

    async def create_one(self, pods: list[dict[str, Any]]) -> bool:
        budget = self._budget(pods)
        choices = []
        for node in self.dp_nodes:
            if node in self.excluded:
                continue
            # The init-container shape only on KWOK nodes: the test kubelet runs app containers.
            kinds = ["dp1", "dp2", "init"] if "kwok" in node else ["dp1", "dp2"]
            choices += [(node, k) for k in kinds if {"dp1": 1}.get(k, 2) <= budget[node]]
        for node in self.dra_nodes:
            if node in self.excluded:
                continue
            choices += [
                (node, k) for k in ("dra1", "dra2") if {"dra1": 1}.get(k, 2) <= budget[node]
            ]
        if not choices:
            return False
        node, kind = self.rng.choice(choices)
        body, _ = self._pod(node, kind)
        try:
            await self.core.create_namespaced_pod(self.namespace, body, _request_timeout=TIMEOUT)
        except Exception as exc:
            self.stats.create_errors += 1
            log.debug("churn.create_failed", error=repr(exc))
            return False
        self.stats.created += 1
        self.stats.kinds[kind] = self.stats.kinds.get(kind, 0) + 1
        pods.append(body | {"status": {"phase": "Pending"}})
        return True

    async def delete(self, pod: dict[str, Any]) -> None:
        try:
            await self.core.delete_namespaced_pod(
                pod["metadata"]["name"], self.namespace, _request_timeout=TIMEOUT
            )
            self.stats.deleted += 1
        except ApiException as exc:
            if exc.status != 404:
                self.stats.delete_errors += 1
        except Exception:
            self.stats.delete_errors += 1

    async def burst(self, count: int) -> int:
        """Delete the oldest pods and create up to ``count`` new ones back to back (as far as
        the budget allows once the deleted ones are gone); returns creations + deletions."""
        async with self._creating:
            return await self._burst(count)

    async def _burst(self, count: int) -> int:
        pods = await self.list_pods()
        oldest = sorted(
            (p for p in pods if not p["metadata"].get("deletionTimestamp")),
            key=lambda p: p["metadata"]["creationTimestamp"],
        )[: count // 2]
        for pod in oldest:
            await self.delete(pod)
        made = len(oldest)
        for _ in range(count):
            if not await self.create_one(pods):
                await asyncio.sleep(0.3)  # wait for deleted pods to go, then try again
                pods = await self.list_pods()
                made += int(await self.create_one(pods))
            else:
                made += 1
        return made

    async def _step(self) -> None:
        async with self._creating:
            await self._step_locked()

    async def _step_locked(self) -> None:
        try:
            pods = await self.list_pods()
        except Exception:
            self.stats.list_errors += 1
            return
        now = time.time()
        expired = [
            p
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and float(p["metadata"]["annotations"][EXPIRES_ANNOTATION]) < now
        ]
        for pod in expired[:3]:
            await self.delete(pod)
        await self.create_one(pods)

    async def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.paused.is_set():
                await self._step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)

    async def settle(self, timeout_s: float) -> Settled:
        """With the generator paused: wait until every pod runs and none is being deleted."""
        deadline = time.monotonic() + timeout_s
        detail = ""
        while True:
            try:
                pods = await self.list_pods()
                waiting = [
                    f"{p['metadata']['name']}({(p.get('status') or {}).get('phase')}"
                    f"{', deleting' if p['metadata'].get('deletionTimestamp') else ''}"
                    f"{_why_pending(p)})"
                    for p in pods
                    if p["metadata"].get("deletionTimestamp")
                    or (p.get("status") or {}).get("phase") != "Running"
                ]
                if not waiting:
                    return Settled(True, len(pods))
                detail = f"{len(waiting)} pod(s) not settled: {', '.join(waiting[:8])}"
            except Exception as exc:
                detail = f"cannot list pods: {exc!r}"
            if time.monotonic() > deadline:
                return Settled(False, -1, detail)
            await asyncio.sleep(0.5)

    async def delete_all(self) -> None:
        with contextlib.suppress(Exception):
            await self.core.delete_collection_namespaced_pod(
                self.namespace, label_selector=f"{RUN_LABEL}={self.run}", _request_timeout=30
            )
