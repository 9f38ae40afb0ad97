"""The fake kubelet podresources socket and sysfs NUMA tree of one node (node mode).

Topology-aware agents (KAI's node agent, NFD's topology-updater) ask the kubelet's
``PodResourcesLister`` v1 which devices, CPU ids and memory each container got, and read the
NUMA layout from ``/sys/devices/system/node``. For a node with simulated GPUs the real kubelet
knows nothing of our GPUs' zones, so this serves the same API on a socket of its own
(``POD_RESOURCES_SOCKET``, never the kubelet's) and writes the sysfs files under ``SYSFS_ROOT``,
answering from the node's record, its pool's ``numa`` block, the Node and the node's pods
(followed with list+watch). Answers are built per request from the current caches.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import structlog
from fgo_common.config import ClusterConfig, ConfigError, load_cluster_config
from fgo_common.kube.watch import DELETED, SYNCED, Reflector
from fgo_common.profiles.custom import PROFILES_DATA_KEY, CustomProfileError, custom_catalog
from fgo_common.topology import TOPOLOGY_DATA_KEY, NodeTopology
from fgo_kubelet_api import podresources_v1 as podres
from prometheus_client import CollectorRegistry, Counter, Histogram

from fgo_status_exporter.podresources import (
    CpuAssigner,
    NodeAnswers,
    NumaLayout,
    PodResourcesError,
    not_found_message,
    numa_layout,
    sysfs_files,
)

log = structlog.get_logger(__name__)

# Our tree under SYSFS_ROOT (stands for /sys): removed and rewritten as a whole.
SYSFS_OWNED = ("devices/system/node", "devices/system/cpu")


def kubelet_socket_shadowed(socket_path: str) -> bool:
    """Whether ``socket_path`` is (or resolves to) the real kubelet's podresources socket."""
    real = os.path.realpath(podres.POD_RESOURCES_SOCKET)
    return os.path.realpath(socket_path) == real or os.path.normpath(socket_path) == real


class NodeState:
    """What the answers are built from: the cluster config, the Node, its pods, its record."""

    def __init__(self, node_name: str, records: Mapping[str, NodeTopology]) -> None:
        self.node_name = node_name
        self.records = records
        self.config: ClusterConfig | None = None
        self.config_error = ""
        self.node: dict[str, Any] | None = None
        self.pods: dict[str, dict[str, Any]] = {}
        self.cpus = CpuAssigner()

    def on_config(self, cm: dict[str, Any] | None) -> None:
        if cm is None:
            # Like the status-updater: the last valid config stays in force.
            self.config_error = "" if self.config else "the cluster topology ConfigMap is absent"
            return
        data = cm.get("data") or {}
        text = data.get(TOPOLOGY_DATA_KEY)
        try:
            if text is None:
                raise ConfigError(TOPOLOGY_DATA_KEY, "the ConfigMap has no such data key")
            config = load_cluster_config(text, custom_catalog(data.get(PROFILES_DATA_KEY)))
        except (ConfigError, CustomProfileError) as exc:
            log.warning("podresources.config_rejected", error=str(exc)[:300])
            if self.config is None:
                self.config_error = f"the cluster topology config is invalid: {exc}"
            return
        self.config = config
        self.config_error = ""

    def layout(self) -> tuple[NodeTopology, NumaLayout | None]:
        """The node's record and NUMA layout (None: its pool has no ``numa`` block)."""
        record = self.records.get(self.node_name)
        if record is None:
            raise PodResourcesError(
                f"no topology record for node {self.node_name} yet (the status-updater writes "
                "it once the node is in a GPU pool)"
            )
        if self.config is None:
            raise PodResourcesError(
                self.config_error or "the cluster topology config has not been read yet"
            )
        pool = self.config.pools.get(record.pool)
        if pool is None or pool.numa is None:
            return record, None
        allocatable = ((self.node or {}).get("status") or {}).get("allocatable") or {}
        return record, numa_layout(pool.name, pool.numa, allocatable)

    def answers(self) -> NodeAnswers:
        record, layout = self.layout()
        return NodeAnswers(record, layout, list(self.pods.values()), self.cpus)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "fgo_status_exporter_podresources_requests",
            "podresources v1 calls answered, by method and gRPC code.",
            ["method", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "fgo_status_exporter_podresources_seconds",
            "Time to build a podresources answer.",
            ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=registry,
        )


class _Lister(podres.pb2_grpc.PodResourcesListerServicer):
    def __init__(self, state: NodeState, metrics: _Metrics) -> None:
        self.state = state
        self.metrics = metrics

    async def _answers(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> NodeAnswers:
        try:
            return self.state.answers()
        except PodResourcesError as exc:
            self.metrics.requests.labels(method, "FAILED_PRECONDITION").inc()
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise  # not reached: abort raises

    async def List(  # noqa: N802 - gRPC method name
        self,
        request: podres.pb2.ListPodResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> podres.pb2.ListPodResourcesResponse:
        start = time.perf_counter()
        response = (await self._answers("List", context)).list_response()
        self.metrics.seconds.labels("List").observe(time.perf_counter() - start)
        self.metrics.requests.labels("List", "OK").inc()
        return response

    async def GetAllocatableResources(  # noqa: N802 - gRPC method name
        self,
        request: podres.pb2.AllocatableResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> podres.pb2.AllocatableResourcesResponse:
        start = time.perf_counter()
        response = (await self._answers("GetAllocatableResources", context)).allocatable_response()
        self.metrics.seconds.labels("GetAllocatableResources").observe(time.perf_counter() - start)
        self.metrics.requests.labels("GetAllocatableResources", "OK").inc()
        return response

    async def Get(  # noqa: N802 - gRPC method name
        self,
        request: podres.pb2.GetPodResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> podres.pb2.GetPodResourcesResponse:
        start = time.perf_counter()
        answers = await self._answers("Get", context)
        response = answers.get_response(request.pod_namespace, request.pod_name)
        self.metrics.seconds.labels("Get").observe(time.perf_counter() - start)
        if response is None:
            # The kubelet returns a plain Go error here, which gRPC sends as code UNKNOWN.
            self.metrics.requests.labels("Get", "UNKNOWN").inc()
            await context.abort(
                grpc.StatusCode.UNKNOWN, not_found_message(request.pod_name, request.pod_namespace)
            )
        self.metrics.requests.labels("Get", "OK").inc()
        return response


def _remove_socket(path: Path) -> None:
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


async def serve_socket(
    state: NodeState, socket_path: str, registry: CollectorRegistry, stop: asyncio.Event
) -> None:
    """Serve ``PodResourcesLister`` v1 on ``socket_path`` until ``stop``."""
    if kubelet_socket_shadowed(socket_path):
        raise RuntimeError(f"POD_RESOURCES_SOCKET={socket_path} is the kubelet's own socket")
    path = Path(socket_path)
    if not path.is_absolute():
        raise RuntimeError(f"POD_RESOURCES_SOCKET={socket_path}: must be an absolute path")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_socket(path)  # a stale socket of a previous run
    server = grpc.aio.server()
    podres.pb2_grpc.add_PodResourcesListerServicer_to_server(
        _Lister(state, _Metrics(registry)), server
    )
    server.add_insecure_port(f"unix:{path}")  # absolute (settings check)
    await server.start()
    log.info("podresources.serving", socket=str(path))
    try:
        await stop.wait()
    finally:
        await server.stop(grace=1.0)
        _remove_socket(path)


# --- sysfs ----------------------------------------------------------------------------------------


def _write_atomic(path: Path, content: str) -> None:
    """Temp file, fsync, rename: a reader sees the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    tmp.chmod(0o444)
    tmp.replace(path)


def sync_sysfs(root: Path, files: Mapping[str, str]) -> tuple[int, int]:
    """Make our part of ``root`` (:data:`SYSFS_OWNED`) hold exactly ``files``. Returns (files
    written, paths removed)."""
    written = removed = 0
    for rel, content in files.items():
        path = root / rel
        try:
            if path.read_text() == content:
                continue
        except OSError:
            pass
        _write_atomic(path, content)
        written += 1
    wanted = {root / rel for rel in files}
    for owned in SYSFS_OWNED:
        top = root / owned
        if not top.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(top, topdown=False):
            here = Path(dirpath)
            for name in filenames:
                if here / name not in wanted:
                    (here / name).unlink(missing_ok=True)
                    removed += 1
            for name in dirnames:
                child = here / name
                if child.is_dir() and not any(child.iterdir()):
                    shutil.rmtree(child, ignore_errors=True)
                    removed += 1
    return written, removed


class PodResourcesAgent:
    """Follows the cluster config, the Node and its pods; serves the socket; keeps sysfs."""

    def __init__(
        self,
        api: Any,
        *,
        node_name: str,
        namespace: str,
        config_name: str,
        records: Mapping[str, NodeTopology],
        socket_path: str,
        sysfs_root: str,
        registry: CollectorRegistry,
    ) -> None:
        self.api = api
        self.state = NodeState(node_name, records)
        self.namespace = namespace
        self.config_name = config_name
        self.socket_path = socket_path
        self.sysfs_root = sysfs_root
        self.registry = registry
        self.changed = asyncio.Event()
        self._last_files: dict[str, str] | None = None

    def mark(self, _node: str = "") -> None:
        self.changed.set()

    async def _follow(self, reflector: Reflector, stop: asyncio.Event, kind: str) -> None:
        async for event in reflector.events(stop):
            if event.type == SYNCED:
                self.changed.set()
                continue
            meta = event.obj.get("metadata") or {}
            if kind == "config":
                self.state.on_config(None if event.type == DELETED else event.obj)
            elif kind == "node":
                self.state.node = None if event.type == DELETED else event.obj
            else:
                key = str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")
                if event.type == DELETED:
                    self.state.pods.pop(key, None)
                else:
                    self.state.pods[key] = event.obj
            self.changed.set()

    def sysfs_once(self) -> None:
        """Rewrite the sysfs tree if the layout changed; a layout that cannot be built leaves
        the last good tree (and logs why)."""
        if not self.sysfs_root:
            return
        try:
            _, layout = self.state.layout()
        except PodResourcesError as exc:
            log.warning("sysfs.no_layout", error=str(exc)[:300])
            return
        files = sysfs_files(layout) if layout is not None else {}
        if files == self._last_files:
            return
        try:
            written, removed = sync_sysfs(Path(self.sysfs_root), files)
        except OSError as exc:
            log.warning("sysfs.write_failed", directory=self.sysfs_root, error=str(exc)[:300])
            return
        self._last_files = files
        log.info("sysfs.synced", directory=self.sysfs_root, written=written, removed=removed,
                 zones=0 if layout is None else layout.zones)  # fmt: skip

    async def _keep_sysfs(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.changed.clear()
            await asyncio.to_thread(self.sysfs_once)
            waiter = asyncio.ensure_future(self.changed.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        from kubernetes_asyncio.client import CoreV1Api

        core = CoreV1Api(self.api)
        node = self.state.node_name
        config = Reflector(
            core.list_namespaced_config_map,
            name="cluster-topology",
            namespace=self.namespace,
            field_selector=f"metadata.name={self.config_name}",
        )
        nodes = Reflector(core.list_node, name="own-node", field_selector=f"metadata.name={node}")
        pods = Reflector(
            core.list_pod_for_all_namespaces,
            name="node-pods",
            field_selector=f"spec.nodeName={node}",
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow(config, stop, "config"))
            tg.create_task(self._follow(nodes, stop, "node"))
            tg.create_task(self._follow(pods, stop, "pods"))
            tg.create_task(self._keep_sysfs(stop))
            if self.socket_path:
                tg.create_task(serve_socket(self.state, self.socket_path, self.registry, stop))


__all__ = [
    "NodeState",
    "PodResourcesAgent",
    "kubelet_socket_shadowed",
    "serve_socket",
    "sync_sysfs",
]
