"""The ComputeDomain controller: for each ComputeDomain, its finalizer, its workload
ResourceClaimTemplate and its status; on deletion, the template first, then the finalizer.

Level-based (docs/computedomains.md): list-watches of ComputeDomains, their templates, the
claims made from those templates and Nodes feed one work queue of ``<namespace>/<name>`` keys,
and each pass recomputes the ComputeDomain's template and status from the caches. Status nodes
are the nodes (pools) of driver compute-domain.nvidia.com devices allocated to the domain's
claims, so the real scheduler's allocations are the only input; a node that is deleted, or
whose claim is deallocated, leaves the status at the next pass.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import structlog
from fgo_common import computedomain as cdn
from fgo_common.kube.errors import describe_error, is_conflict
from fgo_common.kube.served import DRA_GROUP, DRA_READ_VERSIONS, ServedVersionList
from fgo_common.kube.watch import DELETED, SYNCED, Reflector, WatchEvent, drop_managed_fields
from fgo_common.names import GFD_LABELS
from fgo_common.runtime.workqueue import WorkQueue, WorkQueueMetrics, run_worker
from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fgo_compute_domain_controller.apicalls import DomainApi

log = structlog.get_logger(__name__)

Obj = dict[str, Any]
TEMPLATE_VERSIONS = ("v1", "v1beta2")  # both have the `exactly` request shape we write


def node_view(obj: Obj) -> Obj:
    """What the controller reads of a Node: identity, labels (clique), annotations (KWOK),
    deletion, addresses (status.nodes[].ipAddress)."""
    meta = obj.get("metadata") or {}
    kept = {
        k: meta[k]
        for k in ("name", "uid", "resourceVersion", "labels", "annotations", "deletionTimestamp")
        if k in meta
    }
    addresses = (obj.get("status") or {}).get("addresses") or []
    return {"metadata": kept, "status": {"addresses": addresses}}


def node_facts(node: Obj) -> tuple[Any, ...]:
    """What of a Node changes a status or a channel slice (heartbeats do not)."""
    meta = node.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    return (
        meta.get("uid"),
        labels.get(cdn.CLIQUE_LABEL),
        labels.get("type"),
        labels.get(GFD_LABELS.gpu_present),
        annotations.get("kwok.x-k8s.io/node"),
        bool(meta.get("deletionTimestamp")),
        repr((node.get("status") or {}).get("addresses")),
    )


def _key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def _controller_uid(obj: Obj) -> str:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == cdn.KIND:
            return str(ref.get("uid", ""))
    return ""


def desired_status(cd: Obj, num_nodes: int, claims: list[Obj], nodes: dict[str, Obj]) -> Obj:
    """The status of ``cd`` given the claims made from its template (allocated or not)."""
    uid = str(cd["metadata"].get("uid", ""))
    joined: set[str] = set()
    for claim in claims:
        domain = cdn.claim_domain_id(claim)
        if domain and domain != uid:
            continue  # from an earlier ComputeDomain of the same name
        joined |= cdn.claim_channel_nodes(claim)
    previous = (cd.get("status") or {}).get("nodes") or []
    status_nodes = cdn.status_nodes(joined, nodes, previous)
    return {
        "status": cdn.overall_status(num_nodes, len(status_nodes)),
        "nodes": status_nodes,
    }


def same_status(stored: Obj | None, wanted: Obj) -> bool:
    stored = stored or {}
    return stored.get("status") == wanted["status"] and (stored.get("nodes") or []) == (
        wanted["nodes"] or []
    )


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciles = Counter(
            "fgo_compute_domain_reconciles", "ComputeDomain passes by outcome.", ["outcome"],
            registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "fgo_compute_domain_reconcile_duration_seconds", "Time of one ComputeDomain pass.",
            registry=registry, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )  # fmt: skip
        self.domains = Gauge(
            "fgo_compute_domains", "ComputeDomains by the status we last wrote.", ["status"],
            registry=registry,
        )  # fmt: skip
        self.writes = Counter(
            "fgo_compute_domain_writes", "API writes by object and operation.",
            ["kind", "operation"], registry=registry,
        )  # fmt: skip
        self.workqueue = WorkQueueMetrics(registry, "fgo_compute_domain")


class ComputeDomainController:
    """Reflectors + work queue + one ComputeDomain's pass (:meth:`reconcile`)."""

    def __init__(
        self,
        api: client.ApiClient,
        registry: CollectorRegistry,
        nodes: Reflector,
        writer: DomainApi | None = None,
    ) -> None:
        custom: Any = client.CustomObjectsApi(api)
        self.domains = Reflector(
            functools.partial(
                custom.list_cluster_custom_object, cdn.GROUP, cdn.VERSION, cdn.PLURAL
            ),
            name="computedomains",
        )
        self._template_list = ServedVersionList(
            api, DRA_GROUP, "resourceclaimtemplates", TEMPLATE_VERSIONS
        )
        self.templates = Reflector(
            self._template_list,
            name="resourceclaimtemplates",
            label_selector=cdn.TEMPLATE_DOMAIN_LABEL,
        )
        self.claims = Reflector(
            ServedVersionList(api, DRA_GROUP, "resourceclaims", DRA_READ_VERSIONS),
            name="resourceclaims",
            label_selector=cdn.CLAIM_DOMAIN_LABEL,
            transform=drop_managed_fields,
        )
        self.nodes = nodes
        self.api = writer or DomainApi(api)
        self.metrics = Metrics(registry)
        self.queue = WorkQueue("computedomains", metrics=self.metrics.workqueue)
        self._status_of: dict[str, str] = {}

    @property
    def reflectors(self) -> tuple[Reflector, ...]:
        return (self.domains, self.templates, self.claims)

    # -- event intake ---------------------------------------------------------------------

    def on_domain(self, event: WatchEvent) -> None:
        if event.type != SYNCED:
            meta = event.obj["metadata"]
            self.queue.add(_key(meta["namespace"], meta["name"]))

    def _on_labelled(self, label: str, event: WatchEvent) -> None:
        if event.type == SYNCED:
            return
        for obj in (event.obj, event.old):
            meta = (obj or {}).get("metadata") or {}
            domain = (meta.get("labels") or {}).get(label)
            if domain:
                self.queue.add(_key(meta.get("namespace", ""), domain))

    def on_template(self, event: WatchEvent) -> None:
        self._on_labelled(cdn.TEMPLATE_DOMAIN_LABEL, event)

    def on_claim(self, event: WatchEvent) -> None:
        self._on_labelled(cdn.CLAIM_DOMAIN_LABEL, event)

    def on_node(self, event: WatchEvent) -> None:
        if event.type == SYNCED:
            return
        if (
            event.type != DELETED
            and event.old is not None
            and node_facts(event.old) == node_facts(event.obj)
        ):
            return
        # A node's clique, address or existence shows in the status of every domain it is in.
        name = event.obj["metadata"]["name"]
        for key, cd in self.domains.cache.items():
            listed = {n.get("name") for n in (cd.get("status") or {}).get("nodes") or []}
            if name in listed or event.type != DELETED:
                self.queue.add(key)

    def domain_keys(self) -> list[str]:
        return list(self.domains.cache)

    # -- one ComputeDomain ------------------------------------------------------------------

    def _templates_of(self, namespace: str, name: str) -> list[Obj]:
        return [
            t
            for t in self.templates.cache.values()
            if t["metadata"].get("namespace") == namespace
            and (t["metadata"].get("labels") or {}).get(cdn.TEMPLATE_DOMAIN_LABEL) == name
        ]

    def _claims_of(self, namespace: str, name: str) -> list[Obj]:
        return [
            c
            for c in self.claims.cache.values()
            if c["metadata"].get("namespace") == namespace
            and (c["metadata"].get("labels") or {}).get(cdn.CLAIM_DOMAIN_LABEL) == name
        ]

    def _nodes_by_name(self) -> dict[str, Obj]:
        return {
            str(n["metadata"]["name"]): n
            for n in self.nodes.cache.values()
            if not n["metadata"].get("deletionTimestamp")
        }

    async def _finalize(self, cd: Obj) -> None:
        """Deletion order: the workload template first (deleted, and gone from the watch),
        then our finalizer on the ComputeDomain, so nothing of it is left when it is gone."""
        meta = cd["metadata"]
        uid = str(meta.get("uid", ""))
        owned = [
            t
            for t in self._templates_of(meta["namespace"], meta["name"])
            if _controller_uid(t) == uid
        ]
        for template in owned:
            tmeta = template["metadata"]
            if not tmeta.get("deletionTimestamp") and await self.api.delete_template(
                tmeta["namespace"], tmeta["name"], str(tmeta.get("uid", ""))
            ):
                self.metrics.writes.labels("ResourceClaimTemplate", "delete").inc()
                log.info("template.deleted", namespace=tmeta["namespace"], name=tmeta["name"])
        if owned:
            return  # the templates' DELETED events queue this ComputeDomain again
        finalizers = list(meta.get("finalizers") or [])
        if cdn.FINALIZER in finalizers:
            finalizers.remove(cdn.FINALIZER)
            body = {"metadata": {"finalizers": finalizers or None,
                                 "resourceVersion": meta.get("resourceVersion")}}  # fmt: skip
            await self.api.patch_domain(meta["namespace"], meta["name"], body)
            self.metrics.writes.labels("ComputeDomain", "unfinalize").inc()
            log.info("domain.finalized", namespace=meta["namespace"], name=meta["name"])

    async def _write_status(self, cd: Obj, status: Obj) -> None:
        meta = cd["metadata"]
        key = _key(meta["namespace"], meta["name"])
        if not same_status(cd.get("status"), status):
            body = {"status": status["status"], "nodes": status["nodes"] or None}
            stored = await self.api.patch_domain_status(meta["namespace"], meta["name"], body)
            self.metrics.writes.labels("ComputeDomain", "status").inc()
            self.domains.cache[key] = drop_managed_fields(stored)  # before the watch says so
            log.info(
                "domain.status",
                namespace=meta["namespace"],
                name=meta["name"],
                status=status["status"],
                nodes=[n["name"] for n in status["nodes"]],
            )
        self._status_of[key] = status["status"]

    async def reconcile(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        cd = self.domains.cache.get(key)
        if cd is None:
            # Gone: its template (owned by it) is the garbage collector's.
            self._status_of.pop(key, None)
            return
        meta = cd["metadata"]
        if meta.get("deletionTimestamp"):
            self._status_of.pop(key, None)
            await self._finalize(cd)
            return
        finalizers = list(meta.get("finalizers") or [])
        if cdn.FINALIZER not in finalizers:
            body = {"metadata": {"finalizers": [*finalizers, cdn.FINALIZER],
                                 "resourceVersion": meta.get("resourceVersion")}}  # fmt: skip
            cd = drop_managed_fields(await self.api.patch_domain(namespace, name, body))
            self.domains.cache[key] = cd
            self.metrics.writes.labels("ComputeDomain", "finalize").inc()
        try:
            spec = cdn.parse_spec(cd)
        except cdn.SpecError as exc:
            await self.api.warn(cd, "InvalidSpec", f"{exc}; no channel claims can be made")
            await self._write_status(cd, {"status": cdn.STATUS_NOT_READY, "nodes": []})
            return
        uid = str(meta.get("uid", ""))
        template = self.templates.cache.get(_key(namespace, spec.template_name))
        if template is None:
            # The version the template list found served (v1, else v1beta2: the same shape).
            self.api.dra_version = self._template_list.version or self.api.dra_version
            body = cdn.workload_template(cd, spec, f"resource.k8s.io/{self.api.dra_version}")
            try:
                template = await self.api.create_template(body)
            except Exception as exc:
                if not is_conflict(exc):
                    raise
                # Already there but not in our cache, which holds only labelled templates:
                # someone else's object, or ours a moment before the watch shows it.
                template = await self.api.read_template(namespace, spec.template_name)
            else:
                self.templates.cache[_key(namespace, spec.template_name)] = template
                self.metrics.writes.labels("ResourceClaimTemplate", "create").inc()
                log.info(
                    "template.created", namespace=namespace, name=spec.template_name, domain=name
                )
        if _controller_uid(template) != uid:
            await self.api.warn(
                cd,
                "ResourceClaimTemplateConflict",
                f"ResourceClaimTemplate {namespace}/{spec.template_name} exists and does not "
                "belong to this ComputeDomain; choose another "
                "spec.channel.resourceClaimTemplate.name",
            )
            await self._write_status(cd, {"status": cdn.STATUS_NOT_READY, "nodes": []})
            return
        status = desired_status(cd, spec.num_nodes, self._claims_of(namespace, name),
                                self._nodes_by_name())  # fmt: skip
        await self._write_status(cd, status)

    async def reconcile_counted(self, key: str) -> None:
        started = time.perf_counter()
        try:
            await self.reconcile(key)
        except Exception:
            self.metrics.reconciles.labels("error").inc()
            raise
        else:
            self.metrics.reconciles.labels("ok").inc()
        finally:
            self.metrics.duration.observe(time.perf_counter() - started)
            for state in (cdn.STATUS_READY, cdn.STATUS_NOT_READY):
                count = sum(1 for s in self._status_of.values() if s == state)
                self.metrics.domains.labels(state).set(count)

    async def worker(self) -> None:
        await run_worker(self.queue, self.reconcile_counted, on_failure=_log_failure)


def _log_failure(key: str, exc: Exception, retry_in: float | None) -> None:
    # A 409 is a stale cache (our resourceVersion precondition): the retry re-reads.
    (log.info if is_conflict(exc) else log.warning)(
        "domain.reconcile_failed",
        key=key,
        error=describe_error(exc),
        retry_in=None if retry_in is None else round(retry_in, 2),
    )


async def wait_until(stop: asyncio.Event, *awaitables: Any) -> bool:
    """Wait for all ``awaitables`` unless ``stop`` is set first; True if they all finished."""
    waiter = asyncio.ensure_future(asyncio.gather(*awaitables))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (waiter, stopper):
            if not future.done():
                future.cancel()
    return waiter.done() and not waiter.cancelled() and not stop.is_set()
