"""A minimal kubelet for one non-KWOK node, built on the kubelet-side test peers.

The fault suite needs nodes where our node plugins (device-plugin node mode, dra-plugin) do
their real job, so that killing them, or restarting "the kubelet" under them, is tested against
pods that actually use their devices. KWOK does not run pods on such nodes, so this does what
the kubelet would, through the real wire protocols:

* keeps the Node Ready (status conditions + a Lease in ``kube-node-lease``) and publishes the
  device plugin's devices as ``nvidia.com/gpu`` capacity/allocatable (the kubelet's device
  manager does the same from ListAndWatch);
* for each pod bound to the node: prepares its ResourceClaims (``NodePrepareResources`` through
  the DRA peer) and/or allocates its ``nvidia.com/gpu`` (``GetPreferredAllocation`` +
  ``Allocate`` through the device plugin peer, then records the choice in the pod resources
  peer, which the device plugin reads to annotate the pod), then marks the pod Running;
* for each pod being deleted or finished: unprepares its claims, frees its devices and removes
  the pod object (grace period 0), as the kubelet does after the containers stopped.

Simplifications (documented in docs/reliability.md): pods are polled (0.5 s) instead of watched;
a pod whose devices are not available (plugin down) waits instead of failing admission; no
containers run, so nothing reads the CDI files or the Allocate environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from fgo_testkit.kubelet import DevicePluginKubeletPeer, DraKubeletPeer, claim
from fgo_testkit.kubelet.podresources import PodResourcesKubeletPeer
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

log = structlog.get_logger("faults.kubelet")

GPU = "nvidia.com/gpu"
DRIVER = "gpu.nvidia.com"
TIMEOUT = 10  # seconds per API call: an outage must not hang the loop


def now_rfc3339(micro: bool = False) -> str:
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ"
    return dt.datetime.now(dt.UTC).strftime(fmt)


async def raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    resp = await call(*args, _preload_content=False, _request_timeout=TIMEOUT, **kwargs)
    try:
        body: dict[str, Any] = json.loads(await resp.read())
        return body
    finally:
        resp.release()


@dataclass
class RunningPod:
    uid: str
    namespace: str
    name: str
    devices: dict[str, list[str]] = field(default_factory=dict)  # container -> device IDs
    claims: dict[str, str] = field(default_factory=dict)  # claim UID -> "<ns>/<name>"


@dataclass
class KubeletStats:
    started: int = 0
    stopped: int = 0
    prepare_errors: int = 0
    allocate_errors: int = 0
    api_errors: int = 0
    last_api_error: str = ""


class MiniKubelet:
    def __init__(
        self,
        api: client.ApiClient,
        node: str,
        root: Path,
        *,
        labels: dict[str, str],
        device_plugin: bool,
        dra: bool,
    ) -> None:
        self.api = api
        self.core: Any = client.CoreV1Api(api)
        self.resource: Any = client.ResourceV1Api(api)
        self.coordination: Any = client.CoordinationV1Api(api)
        self.node = node
        self.labels = labels
        self.root = root
        self.dp_dir = root / "dp"
        self.podresources_socket = root / "pr" / "kubelet.sock"
        self.registry_dir = root / "reg"
        self.plugins_dir = root / "plugins"
        self.dp: DevicePluginKubeletPeer | None = None
        self.podresources: PodResourcesKubeletPeer | None = None
        self.dra: DraKubeletPeer | None = None
        self.with_dp = device_plugin
        self.with_dra = dra
        self.running: dict[str, RunningPod] = {}
        self.stats = KubeletStats()
        # Awaited after a pod's claims were prepared and before the pod is marked Running (the
        # window "DRA plugin killed between prepare and the pod start" needs).
        self.before_start: Callable[[RunningPod], Awaitable[None]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._reported: set[tuple[str, str]] = set()
        self._started_uids: set[str] = set()
        self.errors: list[str] = []  # first report of each (pod, kind) problem

    def _problem(self, pod: str, kind: str, error: str) -> None:
        """Log a start problem once per pod (the sync loop retries every 0.5 s)."""
        if (pod, kind) not in self._reported:
            self._reported.add((pod, kind))
            self.errors.append(f"{pod}: {kind}: {error[:300]}")
            log.info("kubelet.start_problem", pod=pod, kind=kind, error=error[:300])

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for d in (self.dp_dir, self.podresources_socket.parent, self.registry_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self.with_dp:
            self.podresources = PodResourcesKubeletPeer(self.podresources_socket)
            await self.podresources.start()
            self.dp = DevicePluginKubeletPeer(self.dp_dir)
            await self.dp.start()
        if self.with_dra:
            self.dra = DraKubeletPeer(self.registry_dir, retry_interval_seconds=0.5)
            await self.dra.start()
        await self._create_node()
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name=f"kubelet-heartbeat-{self.node}"),
            asyncio.create_task(self._pods(), name=f"kubelet-pods-{self.node}"),
        ]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in (self.dp, self.podresources, self.dra):
            if peer is not None:
                with contextlib.suppress(Exception):
                    await peer.stop()

    async def restart_device_plugin_side(self) -> None:
        """Kubelet restart as the device plugin sees it: kubelet.sock and every plugin socket
        vanish, a new kubelet.sock appears; plugins must register again."""
        assert self.dp is not None
        await self.dp.restart(downtime_seconds=1.0)

    async def restart_dra_side(self) -> None:
        """Kubelet restart as a DRA plugin sees it: registrations forgotten, sockets rescanned."""
        assert self.dra is not None
        await self.dra.restart(downtime_seconds=1.0)

    # ------------------------------------------------------------------ node

    async def _create_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    **self.labels,
                },
            },
        }
        try:
            await self.core.create_node(body, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status != 409:
                raise
        await self._publish_status()

    def _gpu_counts(self) -> tuple[int, int] | None:
        if self.dp is None:
            return None
        connection = self.dp.plugins.get(GPU)
        if connection is None or connection.stream_closed.is_set():
            # The kubelet keeps the capacity of a plugin that went away until its grace period
            # ends, with allocatable 0 meanwhile; we keep the last published numbers.
            return None
        devices = connection.devices
        return len(devices), sum(1 for d in devices if d.health == "Healthy")

    async def _publish_status(self) -> None:
        now = now_rfc3339()
        status: dict[str, Any] = {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "fault-suite kubelet is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        }
        base = {"cpu": "32", "memory": "128Gi", "pods": "110"}
        counts = self._gpu_counts()
        status["capacity"] = dict(base)
        status["allocatable"] = dict(base)
        if counts is not None:
            status["capacity"][GPU] = str(counts[0])
            status["allocatable"][GPU] = str(counts[1])
        await self.core.patch_node_status(self.node, {"status": status}, _request_timeout=TIMEOUT)

    async def _renew_lease(self) -> None:
        renew = now_rfc3339(micro=True)
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.node,
                "leaseDurationSeconds": 40,
                "renewTime": renew,
            },
        }
        try:
            await self.coordination.patch_namespaced_lease(
                self.node,
                "kube-node-lease",
                {"spec": {"holderIdentity": self.node, "renewTime": renew}},
                _request_timeout=TIMEOUT,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            await self.coordination.create_namespaced_lease(
                "kube-node-lease", body, _request_timeout=TIMEOUT
            )

    async def _heartbeat(self) -> None:
        while not self._stop.is_set():
            try:
                await self._renew_lease()
                await self._publish_status()
            except ApiException as exc:
                if exc.status == 404:  # the node was deleted by a fault: come back like a kubelet
                    with contextlib.suppress(Exception):
                        await self._create_node()
                self.stats.api_errors += 1
                self.stats.last_api_error = f"heartbeat: {exc.status} {exc.reason} {exc.body!r}"[
                    :500
                ]
            except Exception as exc:  # the apiserver is down during a fault: keep trying
                self.stats.api_errors += 1
                self.stats.last_api_error = f"heartbeat: {exc!r}"[:500]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 3.0)

    # ------------------------------------------------------------------ pods

    async def _pods(self) -> None:
        while not self._stop.is_set():
            try:
                body = await raw(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=f"spec.nodeName={self.node}",
                )
                await self._sync(body["items"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.api_errors += 1
                self.stats.last_api_error = f"pods: {exc!r}"[:500]
                log.debug("kubelet.sync_failed", node=self.node, error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.5)

    async def _sync(self, pods: list[dict[str, Any]]) -> None:
        seen = set()
        for pod in pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            uid = meta["uid"]
            seen.add(uid)
            finished = status.get("phase") in ("Succeeded", "Failed")
            if meta.get("deletionTimestamp") or finished:
                if uid in self.running:
                    await self._teardown(self.running[uid])
                if meta.get("deletionTimestamp") and uid not in self.running:
                    with contextlib.suppress(ApiException):
                        await self.core.delete_namespaced_pod(
                            meta["name"],
                            meta["namespace"],
                            grace_period_seconds=0,
                            body={"preconditions": {"uid": uid}, "gracePeriodSeconds": 0},
                            _request_timeout=TIMEOUT,
                        )
                continue
            if uid not in self.running and status.get("phase") == "Pending":
                await self._start(pod)
        for uid in list(self.running):
            if uid not in seen:  # force-deleted while we were not looking
                await self._teardown(self.running[uid])

    def _claims_of(self, pod: dict[str, Any]) -> list[str] | None:
        """Claim names of the pod, or None while a template's claim is not created yet."""
        generated = {
            s.get("name"): s.get("resourceClaimName")
            for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []
        }
        names = []
        for ref in pod["spec"].get("resourceClaims") or []:
            name = ref.get("resourceClaimName") or generated.get(ref["name"])
            if not name:
                return None
            names.append(name)
        return names

    def _in_use(self) -> set[str]:
        return {i for p in self.running.values() for ids in p.devices.values() for i in ids}

    async def _start(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        entry = RunningPod(meta["uid"], ns, name)
        names = self._claims_of(pod)
        if names is None:
            return
        if names:
            if self.dra is None:
                return
            try:
                plugin = self.dra.plugin(DRIVER)
            except Exception:
                return  # the DRA plugin is not registered right now: try again later
            for claim_name in names:
                obj = await raw(self.resource.read_namespaced_resource_claim, claim_name, ns)
                if not (obj.get("status") or {}).get("allocation"):
                    return
                uid = obj["metadata"]["uid"]
                try:
                    response = await plugin.prepare([claim(uid, claim_name, ns)])
                except Exception as exc:
                    self.stats.prepare_errors += 1
                    self._problem(f"{ns}/{name}", "prepare failed", repr(exc))
                    return
                result = response.claims[uid]
                if result.error:
                    self.stats.prepare_errors += 1
                    self._problem(f"{ns}/{name}", "prepare error", result.error)
                    return
                entry.claims[uid] = f"{ns}/{claim_name}"
        for container in pod["spec"]["containers"]:
            limits = (container.get("resources") or {}).get("limits") or {}
            count = int(limits.get(GPU, 0))
            if not count:
                continue
            if self.dp is None or self.podresources is None:
                return
            try:
                plugin_dp = self.dp.plugin(GPU)
                free = [i for i in plugin_dp.healthy_ids() if i not in self._in_use()]
                taken = {i for ids in entry.devices.values() for i in ids}
                free = [i for i in free if i not in taken]
                if len(free) < count:
                    return
                chosen = await plugin_dp.get_preferred_allocation(free, count)
                await plugin_dp.allocate(chosen)
            except Exception as exc:
                self.stats.allocate_errors += 1
                self._problem(f"{ns}/{name}", "allocate failed", repr(exc))
                return
            entry.devices[container["name"]] = chosen
        for cname, ids in entry.devices.items():
            assert self.podresources is not None
            self.podresources.assign(ns, name, cname, GPU, ids)
        self.running[entry.uid] = entry
        if self.before_start is not None:
            hook, self.before_start = self.before_start, None
            await hook(entry)
        await self._mark_running(pod)
        if entry.uid in self._started_uids:
            self._problem(f"{ns}/{name}", "started twice", "the test kubelet started a pod again")
        self._started_uids.add(entry.uid)
        self.stats.started += 1

    async def _mark_running(self, pod: dict[str, Any]) -> None:
        now = now_rfc3339()
        conditions = [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
        ]
        containers = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
            for c in pod["spec"]["containers"]
        ]
        body = {
            "status": {
                "phase": "Running",
                "startTime": now,
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "conditions": conditions,
                "containerStatuses": containers,
            }
        }
        meta = pod["metadata"]
        await self.core.patch_namespaced_pod_status(
            meta["name"], meta["namespace"], body, _request_timeout=TIMEOUT
        )

    async def _teardown(self, entry: RunningPod) -> None:
        others = {uid for p in self.running.values() if p.uid != entry.uid for uid in p.claims}
        for uid, key in entry.claims.items():
            if uid in others or self.dra is None:
                continue  # a claim shared with another pod here stays prepared
            ns, name = key.split("/", 1)
            try:
                await self.dra.plugin(DRIVER).unprepare([claim(uid, name, ns)])
            except Exception as exc:
                # The kubelet retries unprepare until it succeeds; so do we (next sync).
                log.info("kubelet.unprepare_failed", claim=key, error=repr(exc))
                return
        if self.podresources is not None:
            self.podresources.remove_pod(entry.namespace, entry.name)
        self.running.pop(entry.uid, None)
        self.stats.stopped += 1

    def prepared_claims(self) -> set[str]:
        return {uid for p in self.running.values() for uid in p.claims}
