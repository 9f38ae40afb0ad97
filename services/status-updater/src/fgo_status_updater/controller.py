"""The status-updater controller: watches, a per-node work queue, and what one node's turn does.

Watches (list, then watch, then relist; see ``fgo_common.kube.watch``) keep caches of Nodes, GPU
pods, ResourceClaims, Run:ai PodGroups, the per-node records and the cluster topology config.
Every change marks the nodes it concerns dirty; workers take dirty nodes (debounced, one worker
per node at a time), compute the desired record with ``reconcile_node`` and write it only if it
differs (``records.RecordStore``: replaced *with its resourceVersion*; on 409 re-read and
recomputed, never forced), then the Node and reservation-pod patches (``nodewrites``). Nothing is
written before every cache has synced (that is /readyz).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable

import structlog
from fgo_common.config import ClusterConfig, ConfigError, load_cluster_config
from fgo_common.faults import FAULTS_LABEL
from fgo_common.kube.errors import describe_error
from fgo_common.kube.served import DRA_GROUP, DRA_READ_VERSIONS, ServedVersionList
from fgo_common.kube.watch import (
    DELETED,
    SYNCED,
    Reflector,
    ResourceNotServed,
    WatchEvent,
    slim_node,
)
from fgo_common.profiles.custom import PROFILES_DATA_KEY, CustomProfileError, custom_catalog
from fgo_common.runtime.runner import ServiceContext, TaskFactory
from fgo_common.runtime.workqueue import WorkQueue, WorkQueueMetrics, run_worker
from fgo_common.topology import NODE_TOPOLOGY_LABEL, TOPOLOGY_DATA_KEY
from kubernetes_asyncio import client

from fgo_status_updater import mig
from fgo_status_updater.caches import Caches, pod_view
from fgo_status_updater.events import EventRecorder
from fgo_status_updater.faults import FaultBook
from fgo_status_updater.findings import NORMAL, WARNING, Finding, ObjectRef
from fgo_status_updater.knative import KnativePod, KnativePoller
from fgo_status_updater.metrics import PREFIX, Metrics
from fgo_status_updater.nodewrites import NodeWriter
from fgo_status_updater.nrt import NrtPublisher, desired_nrt
from fgo_status_updater.podinfo import meta
from fgo_status_updater.reconcile import NodeInputs, ReconcileOptions, reconcile_node
from fgo_status_updater.records import RecordStore, same_record
from fgo_status_updater.runai import RunaiRuleController
from fgo_status_updater.settings import Settings
from fgo_status_updater.usage import UsagePolicy

log = structlog.get_logger(__name__)

PODGROUP_GROUP, PODGROUP_VERSION, PODGROUP_PLURAL = "scheduling.run.ai", "v2alpha2", "podgroups"


def _log_failure(node: str, exc: Exception, retry_in: float | None) -> None:
    log.warning(
        "reconcile.failed",
        node=node,
        error=describe_error(exc),
        retry_in=None if retry_in is None else round(retry_in, 2),
    )


class Controller:
    def __init__(self, api: client.ApiClient, settings: Settings, ctx: ServiceContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self.namespace = settings.namespace
        self.core = client.CoreV1Api(api)
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.metrics = Metrics(ctx.registry)
        self.events = EventRecorder(
            self.core, self.metrics, settings.pod_name or os.uname().nodename
        )
        # A mark waits ``debounce_seconds`` so a burst of pod events on a node is one write.
        self.queue = WorkQueue("nodes", metrics=WorkQueueMetrics(ctx.registry, PREFIX))
        self.metrics.queue_depth.set_function(lambda: len(self.queue))
        self.options = ReconcileOptions(
            reservation_namespace=settings.reservation_namespace,
            usage=UsagePolicy(settings.default_utilization),
            mig_reconfigure_seconds=settings.mig_reconfigure_seconds,
        )
        self.caches = Caches(settings.reservation_namespace, f"{settings.topology_cm_name}-")
        self.config: ClusterConfig | None = None
        self.config_ref = ObjectRef("ConfigMap", settings.topology_cm_name, self.namespace)
        self.knative = KnativePoller(
            settings.prometheus_url,
            full_load_rps=settings.knative_full_load_rps,
            timeout_seconds=settings.prometheus_timeout_seconds,
            metrics=self.metrics,
            on_change=self._knative_changed,
            on_outage=self._prometheus_down,
        )
        self.runai = RunaiRuleController(
            api,
            enabled=settings.runai_integration_enabled,
            namespace=settings.runai_namespace,
            interval_seconds=settings.runai_poll_seconds,
        )
        self.faults = FaultBook(self._report)  # injected GPU faults (docs/faults.md)
        self.synced = asyncio.Event()
        self._required = {"nodes", "pods", "records", "config", "resourceclaims", "gpu-faults"}
        self._synced_parts: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self.records = RecordStore(
            self.core,
            self.namespace,
            settings.topology_cm_name,
            self.caches,
            self.metrics,
            requeue=lambda node: self._mark(node, 0.0),
            report=self._report,
        )
        self.node_writes = NodeWriter(
            self.core, self.metrics, labeling=not settings.disable_node_labeling
        )
        # NodeResourceTopology objects of nodes in pools with ``numa`` (docs/numa.md).
        self.nrt = (
            NrtPublisher(self.custom, self.metrics) if settings.node_resource_topology else None
        )
        if self.nrt is not None:
            self._required.add("noderesourcetopologies")
        for part in sorted(self._required | {"topology-config"}):
            ctx.readiness.require(part)

    # --- task wiring -----------------------------------------------------------------------
    def tasks(self) -> dict[str, TaskFactory]:
        core, ns = self.core, self.namespace
        nodes = Reflector(core.list_node, name="nodes", transform=slim_node)
        pods = Reflector(
            core.list_pod_for_all_namespaces,
            name="pods",
            field_selector="spec.nodeName!=",
            transform=functools.partial(pod_view, self.settings.reservation_namespace),
        )
        records = Reflector(
            core.list_namespaced_config_map,
            name="records",
            namespace=ns,
            label_selector=f"{NODE_TOPOLOGY_LABEL}=true",
        )
        config = Reflector(
            core.list_namespaced_config_map,
            name="config",
            namespace=ns,
            field_selector=f"metadata.name={self.settings.topology_cm_name}",
        )
        # Claims through the newest served of resource.k8s.io v1/v1beta2/v1beta1: the fields
        # read (status.allocation.devices.results, reservedFor) are the same in all three.
        claims = Reflector(
            ServedVersionList(self.api, DRA_GROUP, "resourceclaims", DRA_READ_VERSIONS),
            name="claims",
        )
        gpu_faults = Reflector(
            core.list_namespaced_config_map,
            name="gpu-faults",
            namespace=ns,
            label_selector=f"{FAULTS_LABEL}=true",
        )
        groups = Reflector(
            self.custom.list_cluster_custom_object,
            name="podgroups",
            group=PODGROUP_GROUP,
            version=PODGROUP_VERSION,
            plural=PODGROUP_PLURAL,
        )
        tasks: dict[str, TaskFactory] = {
            "watch-nodes": self._watcher(nodes, self.caches.on_node, "nodes"),
            "watch-pods": self._watcher(pods, self.caches.on_pod, "pods"),
            "watch-records": self._watcher(records, self.caches.on_record, "records"),
            "watch-config": self._watcher(config, self._on_config, "config"),
            "watch-faults": self._watcher(gpu_faults, self.faults.on_configmap, "gpu-faults"),
            "watch-claims": self._watcher(
                claims, self.caches.on_claim, "resourceclaims", optional=True
            ),
            "watch-podgroups": self._watcher(
                groups, self.caches.on_pod_group, "podgroups", optional=True
            ),
            "resync": self._resync,
            "knative": self._knative_loop,
            "runai-prometheusrule": self.runai.run,
        }
        for i in range(self.settings.workers):
            tasks[f"worker-{i}"] = self._worker
        if self.nrt is not None:
            tasks["watch-noderesourcetopologies"] = self._watcher(
                self.nrt.reflector(),
                self.nrt.on_nrt,
                "noderesourcetopologies",
                optional=True,
                on_present=self._nrt_present,
            )
        return tasks

    def _nrt_present(self) -> None:
        """The NodeResourceTopology CRD is served again: publish every node's object."""
        if self.nrt is not None:
            self.nrt.on_present()
        for node in self.caches.all_nodes():
            self._mark(node)

    def _watcher(
        self,
        reflector: Reflector,
        handle: Callable[[WatchEvent], set[str]],
        part: str,
        *,
        optional: bool = False,
        on_present: Callable[[], None] | None = None,
    ) -> TaskFactory:
        absent = False

        async def consume() -> None:
            nonlocal absent
            async for event in reflector.events(self.ctx.stop):
                if event.type == SYNCED:
                    if absent:
                        absent = False
                        log.info("watch.api_present", watch=reflector.name)
                        if on_present is not None:
                            on_present()
                    self._part_synced(part)
                    continue
                for node in handle(event):
                    self._mark(node)

        async def run(ctx: ServiceContext) -> None:
            nonlocal absent
            while not ctx.stop.is_set():
                try:
                    await ctx.until_stopped(consume())
                    return
                except ResourceNotServed as exc:
                    if not optional:
                        raise
                    # The API (resource.k8s.io) or CRD (PodGroups) is not served: nothing to
                    # know about it; forget what an earlier list said, look again later. One
                    # info line when it goes away, one when it comes back.
                    if not absent:
                        log.info(
                            "watch.api_absent",
                            watch=reflector.name,
                            detail=exc.detail,
                            recheck_seconds=self.settings.optional_api_retry_seconds,
                        )
                    absent = True
                    for event in reflector.forget():
                        for node in handle(event):
                            self._mark(node)
                    self._part_synced(part)
                    await ctx.sleep(self.settings.optional_api_retry_seconds)

        return run

    def _part_synced(self, part: str) -> None:
        if part in self._synced_parts and self.synced.is_set():
            self.metrics.last_sync.set(time.time())
            return
        self._synced_parts.add(part)
        if part in self._required:
            self.ctx.readiness.set(part)
        if self._required <= self._synced_parts and not self.synced.is_set():
            log.info(
                "caches.synced", nodes=len(self.caches.nodes), records=len(self.caches.records)
            )
            self.metrics.last_sync.set(time.time())
            self.synced.set()
            for node in self.caches.all_nodes():
                self._mark(node)

    def _mark(self, node: str, delay: float | None = None) -> None:
        if not node:
            return
        self.queue.add_after(node, self.settings.debounce_seconds if delay is None else delay)

    # --- cluster config --------------------------------------------------------------------
    def _on_config(self, event: WatchEvent) -> set[str]:
        cm = event.obj
        ref = ObjectRef(
            "ConfigMap",
            str(meta(cm).get("name", "")),
            str(meta(cm).get("namespace", "")),
            str(meta(cm).get("uid", "")),
        )
        if event.type == DELETED:
            self._report(
                Finding(
                    ref,
                    "TopologyConfigDeleted",
                    "the cluster topology ConfigMap was deleted; the last valid config stays in "
                    "force until it is re-created",
                )
            )
            return set()
        data = cm.get("data") or {}
        text = data.get(TOPOLOGY_DATA_KEY)
        try:
            if text is None:
                raise ConfigError(TOPOLOGY_DATA_KEY, "the ConfigMap has no such data key")
            # The chart's customProfiles: pools may name them; what the other services need of
            # them (product, memory, driver) goes into each node's record.
            catalog = custom_catalog(data.get(PROFILES_DATA_KEY))
            config = load_cluster_config(text, catalog)
        except (ConfigError, CustomProfileError) as exc:
            self.metrics.config_errors.inc()
            kept = "the last valid config stays in force" if self.config else "no config in force"
            log.error("config.rejected", field=exc.path, error=str(exc), kept=bool(self.config))
            self._report(
                Finding(
                    ref,
                    "InvalidTopologyConfig",
                    f"rejected topology config (resourceVersion "
                    f"{meta(cm).get('resourceVersion')}): {exc}; {kept}",
                )
            )
            return set()
        self.ctx.readiness.set("topology-config")
        if config == self.config:
            return set()
        self.config = config
        pools = ", ".join(f"{p.name} ({p.gpu_count} GPUs)" for p in config.pools.values())
        log.info("config.applied", pools=pools, label_key=config.node_pool_label_key)
        self._report(
            Finding(
                ref,
                "TopologyConfigApplied",
                f"applied topology config (resourceVersion {meta(cm).get('resourceVersion')}): "
                f"pools {pools}",
                NORMAL,
            )
        )
        for warning in config.warnings:
            log.warning("config.warning", warning=warning)
            self._report(Finding(ref, "TopologyConfigWarning", warning, WARNING))
        return self.caches.all_nodes()

    # --- events ----------------------------------------------------------------------------
    def _report(self, finding: Finding, *, once: bool = True) -> None:
        task = asyncio.create_task(self.events.report(finding, once=once))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _prometheus_down(self, error: str) -> None:
        ref = (
            ObjectRef("Pod", self.settings.pod_name, self.settings.pod_namespace)
            if self.settings.pod_name and self.settings.pod_namespace
            else self.config_ref
        )
        self._report(
            Finding(
                ref,
                "PrometheusUnavailable",
                f"cannot read Knative request rates from {self.settings.prometheus_url}: {error}; "
                "inference pods keep their last utilisation until it answers again",
            ),
            once=False,
        )

    def _knative_changed(self, pod: KnativePod) -> None:
        self._mark(pod.node)

    # --- periodic work ---------------------------------------------------------------------
    async def _resync(self, ctx: ServiceContext) -> None:
        period = self.settings.resync_seconds
        await ctx.until_stopped(self.synced.wait())
        while period and not await ctx.sleep(period):
            for node in self.caches.all_nodes():
                self._mark(node)
        await ctx.stop.wait()

    async def _knative_loop(self, ctx: ServiceContext) -> None:
        if not self.settings.prometheus_url:
            await ctx.stop.wait()
            return
        await ctx.until_stopped(self.synced.wait())
        try:
            while not ctx.stop.is_set():
                try:
                    await ctx.until_stopped(self.knative.poll(self.caches.knative_pods()))
                except Exception:
                    log.exception("knative.poll_failed")
                if await ctx.sleep(self.settings.knative_poll_seconds):
                    return
        finally:
            await self.knative.aclose()

    async def _worker(self, ctx: ServiceContext) -> None:
        async def loop() -> None:
            await self.synced.wait()
            # A worker cancelled mid-reconcile (stopping, or the Lease lost) releases the node
            # and queues it again, so whoever runs the workers next redoes it (run_worker).
            await run_worker(self.queue, self._reconcile_counted, on_failure=_log_failure)

        await ctx.until_stopped(loop())

    async def _reconcile_counted(self, node: str) -> None:
        started = time.monotonic()
        try:
            result = await self.reconcile(node)
        except Exception:
            self.metrics.reconciles.labels("error").inc()
            raise
        finally:
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)
        self.metrics.reconciles.labels(result).inc()
        self.metrics.last_reconcile.set(time.time())

    # --- one node --------------------------------------------------------------------------
    async def reconcile(self, name: str) -> str:
        node = self.caches.nodes.get(name)
        cm = self.caches.records.get(name)
        previous = self.records.parse(name, cm)
        now = time.time()
        outcome = reconcile_node(
            NodeInputs(
                node_name=name,
                node=node,
                config=self.config,
                previous=previous,
                pods=self.caches.pods_on(name),
                claims=self.caches.claims,
                pod_groups=self.caches.pod_groups,
                knative=self.knative.values,
                now=now,
            ),
            self.options,
        )
        if outcome.record is not None:
            outcome.findings.extend(self.faults.apply(outcome.record, previous, now))
            wake = self.faults.next_change(name, now)
            if wake is not None:
                self._mark(name, wake + 0.05)  # the next fault start or expiry
        for finding in outcome.findings:
            self._report(finding)
        if outcome.action == "keep":
            return "kept"
        if outcome.action == "delete":
            result = "unchanged"
            if cm is not None:
                result = await self.records.delete(name, cm)
                if node is not None and result == "deleted":
                    await self.node_writes.set_deploy_labels(node, None)
            if self.nrt is not None:
                await self.nrt.sync(name, None)
            self.metrics.managed_nodes.set(len(self.caches.records))
            return result
        assert outcome.record is not None and node is not None
        body = self.records.body(name, node, cm)
        result = "unchanged"
        if cm is None or previous is None or not same_record(cm, body, previous, outcome.record):
            body["data"] = {**(cm.get("data") or {} if cm else {})}
            body["data"][TOPOLOGY_DATA_KEY] = outcome.record.to_yaml()
            result = await self.records.write(name, body, outcome.record, create=cm is None)
            if result == "conflict":
                return result
        self.metrics.managed_nodes.set(len(self.caches.records))
        if self.nrt is not None:
            pods = self.caches.pods_on(name)
            await self.nrt.sync(name, desired_nrt(name, node, self.config, outcome.record, pods))
        await self.node_writes.set_deploy_labels(node, outcome.record.kwok)
        await self.node_writes.patch_node(node, mig.node_patch(node, outcome.record))
        if outcome.requeue_after is not None:
            self._mark(name, outcome.requeue_after + 0.05)  # a MIG config falls due
        for namespace, pod, gpu in outcome.reservation_patches:
            await self.node_writes.annotate_reservation(namespace, pod, gpu)
        return result


__all__ = ["Controller"]
