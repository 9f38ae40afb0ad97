"""Entry point of the status-exporter: dcgm-exporter metrics and GFD labels from topology records.

Tasks (supervised by the common runner): ``topology-watch`` keeps the store equal to the topology
ConfigMaps and marks changed nodes for labelling; ``metrics-server`` serves ``/metrics`` in
dcgm-exporter's format, computed at scrape time; ``labeler`` patches node labels;
``label-resync`` periodically re-reads served nodes so hand-edited labels are repaired.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import structlog
from fgo_common.annotations import KWOK_NODE, KWOK_NODE_VALUE
from fgo_common.kube.leader import elected_client
from fgo_common.kube.watch import DELETED, SYNCED, Reflector, object_key
from fgo_common.names import DCGM_EXPORTER
from fgo_common.runtime.entry import service_main
from fgo_common.runtime.health import serve_app
from fgo_common.runtime.logging import configure_logging
from fgo_common.runtime.runner import (
    ServiceContext,
    TaskFactory,
    run_tasks,
    split_leader_tasks,
)
from fgo_common.runtime.workqueue import WorkQueueMetrics
from fgo_common.telemetry import BUCKET_SECONDS
from fgo_common.topology import NODE_TOPOLOGY_LABEL, node_topology_configmap_name
from prometheus_client import CollectorRegistry, Gauge

from fgo_status_exporter.dcgm import DcgmCollector, ExporterOptions, ServedNode, reference_hostname
from fgo_status_exporter.gfd import GfdLabeler
from fgo_status_exporter.labeler import (
    NodeLabeler,
    desired_labels_fn,
    kube_node_access,
    orphaned_nodes,
)
from fgo_status_exporter.runai_proc import proc_files, sync_tree
from fgo_status_exporter.server import ScrapeStats, build_metrics_app
from fgo_status_exporter.settings import MODE_KWOK, MODE_NODE, Settings
from fgo_status_exporter.store import Parsed, TopologyStore

COMPONENT = "status-exporter"
log = structlog.get_logger(__name__)


def exporter_options(settings: Settings) -> ExporterOptions:
    return ExporterOptions(
        names=DCGM_EXPORTER[settings.dcgm_version],
        hostname_label=settings.hostname_label,
        no_hostname=settings.no_hostname,
        idle_pod_labels=settings.empty_pod_labels,
        replace_blanks_in_model_name=settings.replace_blanks_in_model_name,
        pod_uid_label=settings.pod_uid_label,
        extra_metrics=settings.extra_metric_names,
        seed=settings.telemetry_seed,
        clock_events_window_ms=settings.clock_events_window_ms,
        collect_interval_ms=settings.collect_interval_ms,
        xid_count_window_ms=settings.xid_count_window_ms,
    )


def hostname_for(settings: Settings, node_name: str) -> str:
    if settings.mode == MODE_NODE and settings.reference_hostname:
        return reference_hostname(node_name)
    return node_name


def accepts(settings: Settings) -> Any:
    def accept(parsed: Parsed) -> bool:
        if settings.mode == MODE_KWOK:
            return parsed.kwok
        return parsed.node_name == settings.node_name

    return accept


def serves_node(settings: Settings, node: dict[str, Any]) -> bool:
    """Whether ``node`` (a Node object) is one this exporter labels."""
    meta = node.get("metadata") or {}
    if settings.mode == MODE_KWOK:
        return (meta.get("annotations") or {}).get(KWOK_NODE) == KWOK_NODE_VALUE
    return meta.get("name") == settings.node_name


class Exporter:
    """The service's pieces, wired to one API client."""

    def __init__(self, settings: Settings, api: Any, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.api = api
        self.registry = registry
        self.store = TopologyStore(accept=accepts(settings))
        self.collector = DcgmCollector(exporter_options(settings))
        self.gfd = GfdLabeler()
        read, patch = kube_node_access(api)
        self.labeler = NodeLabeler(
            desired=desired_labels_fn(self.store.nodes, self.gfd.labels),
            read_node=read,
            patch_node=patch,
            workers=settings.label_workers,
            metrics=WorkQueueMetrics(registry, "fgo_status_exporter"),
        )
        if settings.gfd_labels:
            self.store.recreated.append(self.labeler.forget)
            self.store.listeners.append(self.labeler.mark)
        self.stats = ScrapeStats(registry)
        self._background: set[asyncio.Task[None]] = set()
        self.synced = asyncio.Event()
        self._records_changed = asyncio.Event()
        self.store.listeners.append(lambda _node: self._records_changed.set())
        served = Gauge(
            "fgo_status_exporter_served_nodes", "Nodes whose GPUs are exported.", registry=registry
        )
        served.set_function(lambda: len(self.store.nodes))
        patches = Gauge(
            "fgo_status_exporter_label_patches",
            "Node label patches sent since start.",
            registry=registry,
        )
        patches.set_function(lambda: self.labeler.patches)

    def served_nodes(self) -> list[ServedNode]:
        return [
            ServedNode(topology, hostname_for(self.settings, name))
            for name, topology in sorted(self.store.nodes.items())
        ]

    def served_node(self, name: str) -> ServedNode | None:
        topology = self.store.nodes.get(name)
        return None if topology is None else ServedNode(topology, hostname_for(self.settings, name))

    def served_names(self) -> list[str]:
        return list(self.store.nodes)

    async def check_orphans(self) -> None:
        """Mark nodes still carrying our labels although no record says they are ours."""
        if not self.settings.gfd_labels:
            return
        try:
            orphans = await orphaned_nodes(
                self.api, lambda n: serves_node(self.settings, n), set(self.store.nodes)
            )
        except Exception as exc:
            log.warning("labels.orphan_check_failed", error=str(exc)[:300])
            return
        for name in orphans:
            log.info("labels.orphan", node=name)
            self.labeler.mark(name)

    async def watch_topology(self, ctx: ServiceContext) -> None:
        from kubernetes_asyncio.client import CoreV1Api

        s = self.settings
        selector: dict[str, Any] = {
            "namespace": s.namespace,
            "label_selector": f"{NODE_TOPOLOGY_LABEL}=true",
        }
        if s.mode == MODE_NODE:
            name = node_topology_configmap_name(s.topology_cm_name, s.node_name)
            selector["field_selector"] = f"metadata.name={name}"
        reflector = Reflector(
            CoreV1Api(self.api).list_namespaced_config_map, name="topology-configmaps", **selector
        )
        ctx.readiness.require("topology-synced")

        async def consume() -> None:
            async for event in reflector.events(ctx.stop):
                if event.type == SYNCED:
                    ctx.readiness.set("topology-synced")
                    self.synced.set()
                    log.info("topology.synced", nodes=len(self.store.nodes))
                    task = asyncio.get_running_loop().create_task(self.check_orphans())
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                    continue
                key = object_key(event.obj)
                if event.type == DELETED:
                    self.store.delete(key)
                else:
                    self.store.apply(key, event.obj, s.topology_cm_name)

        await ctx.until_stopped(consume())

    async def serve_metrics(self, ctx: ServiceContext) -> None:
        per_node = self.settings.mode == MODE_KWOK
        app = build_metrics_app(
            self.collector,
            self.served_nodes,
            stats=self.stats,
            served_node=self.served_node if per_node else None,
            served_names=self.served_names if per_node else None,
        )
        # All interfaces: Prometheus scrapes the pod IP.
        await serve_app(app, "0.0.0.0", self.settings.metrics_port, ctx.stop)  # noqa: S104

    async def write_runai_proc(self, ctx: ServiceContext) -> None:
        """Run:ai's per-pod files (RUNAI_PROC_DIR, node mode): after the first sync, at every
        telemetry bucket and on every record change."""
        root = self.settings.runai_proc_dir
        if not root or self.settings.mode != MODE_NODE:
            await ctx.stop.wait()
            return
        await ctx.until_stopped(self.synced.wait())
        log.info("runai_proc.writing", directory=root)
        seed = self.settings.telemetry_seed
        while not ctx.stop.is_set():
            self._records_changed.clear()
            now = time.time()
            files: dict[str, str] = {}
            for topology in list(self.store.nodes.values()):
                files.update(proc_files(topology, now, seed=seed))
            try:
                written, removed = await asyncio.to_thread(sync_tree, Path(root), files)
            except OSError as exc:
                log.warning("runai_proc.write_failed", directory=root, error=str(exc)[:300])
            else:
                if written or removed:
                    log.debug("runai_proc.synced", files=len(files), written=written,
                              removed=removed)  # fmt: skip
            next_bucket = (math.floor(now / BUCKET_SECONDS) + 1) * BUCKET_SECONDS
            wait = max(0.05, next_bucket - time.time())
            changed = asyncio.ensure_future(self._records_changed.wait())
            try:
                await ctx.until_stopped(asyncio.wait_for(changed, wait))
            except TimeoutError:
                pass
            finally:
                changed.cancel()

    async def serve_pod_resources(self, ctx: ServiceContext) -> None:
        """The fake kubelet podresources socket and the sysfs NUMA tree (node mode, when
        POD_RESOURCES_SOCKET or SYSFS_ROOT is set)."""
        s = self.settings
        if s.mode != MODE_NODE or not (s.pod_resources_socket or s.sysfs_root):
            await ctx.stop.wait()
            return
        # Imported here: gRPC costs ~15 MiB of RSS, which the KWOK exporter and node agents
        # without a podresources socket should not carry.
        from fgo_status_exporter.podresources_server import PodResourcesAgent

        agent = PodResourcesAgent(
            self.api,
            node_name=s.node_name,
            namespace=s.namespace,
            config_name=s.topology_cm_name,
            records=self.store.nodes,
            socket_path=s.pod_resources_socket,
            sysfs_root=s.sysfs_root,
            registry=self.registry,
        )
        self.store.listeners.append(agent.mark)
        await ctx.until_stopped(agent.run(ctx.stop))

    async def run_labeler(self, ctx: ServiceContext) -> None:
        if self.synced.is_set():
            # Leading again (leader election): another replica may have written meanwhile.
            self.labeler.forget_all()
            for name in list(self.store.nodes):
                self.labeler.mark(name)
        await self.labeler.run(ctx.stop)

    async def resync_labels(self, ctx: ServiceContext) -> None:
        period = self.settings.label_resync_seconds
        if period <= 0 or not self.settings.gfd_labels:
            await ctx.stop.wait()
            return
        while not await ctx.sleep(period):
            self.labeler.forget_all()
            for name in list(self.store.nodes):
                self.labeler.mark(name)
            await self.check_orphans()


async def amain(settings: Settings, ctx: ServiceContext | None = None) -> int:
    ctx = ctx or ServiceContext(name=COMPONENT)
    lease = "nvidia-dcgm-exporter-kwok"
    async with elected_client(settings.kubeconfig or None, settings, lease, ctx) as (api, elector):
        exporter = Exporter(settings, api, ctx.registry)
        tasks: dict[str, TaskFactory] = {
            "topology-watch": exporter.watch_topology,
            "metrics-server": exporter.serve_metrics,
            "labeler": exporter.run_labeler,
            "label-resync": exporter.resync_labels,
            "runai-proc": exporter.write_runai_proc,
            "pod-resources": exporter.serve_pod_resources,
        }
        # Every replica serves metrics from its own watch; only the leader patches labels.
        tasks = split_leader_tasks(
            tasks,
            elector,
            followers=("topology-watch", "metrics-server", "runai-proc", "pod-resources"),
        )
        return await run_tasks(ctx, tasks, health_port=settings.health_port)


def _start(settings: Settings) -> int:
    node = settings.node_name if settings.mode == MODE_NODE else ""
    configure_logging(COMPONENT, settings.log_level, mode=settings.mode, node=node)
    return asyncio.run(amain(settings))


def main() -> int:
    return service_main(
        component=COMPONENT,
        prog="fgo-status-exporter",
        description="dcgm-exporter-compatible GPU metrics (:9400/metrics) and GPU feature "
        "discovery node labels, per node (EXPORTER_MODE=node) or for all KWOK nodes.",
        settings_cls=Settings,
        start=_start,
    )
