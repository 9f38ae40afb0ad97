"""Run:ai integration: the PrometheusRule that turns the KWOK exporter's DCGM series into the
``runai_dcgm_*`` series Run:ai's dashboards read (the reference's Run:ai controller).

Enabled (``RUNAI_INTEGRATION_ENABLED``): at start and every polling interval, if the
``monitoring.coreos.com/v1`` PrometheusRule API is served and the ``runai`` namespace exists, the
rule object is created, and brought back to the reference's content if someone changed it.
Disabled: once at start, the object is deleted if it exists (so ``helm upgrade`` with the
integration off removes it). No Prometheus operator: one info line, no errors. docs/runai.md.
"""

from __future__ import annotations

import json
import re
from typing import Any

import structlog
from fgo_common.kube.errors import describe_error, is_auth_failure, raise_for_status
from fgo_common.kube.retry import retrying
from fgo_common.runtime.runner import ServiceContext
from kubernetes_asyncio import client

log = structlog.get_logger(__name__)

GROUP, VERSION, PLURAL = "monitoring.coreos.com", "v1", "prometheusrules"
RULE_NAME = "fake-gpu-operator-kwok-dcgm"
RULE_LABELS = {"app": "nvidia-dcgm-exporter", "component": "status-exporter-kwok"}
RULE_GROUP = "kwok-dcgm-metrics"
# record name -> the DCGM expression it is computed from (reference §3.1.5).
RECORDS = (
    ("runai_dcgm_gpu_utilization", "DCGM_FI_DEV_GPU_UTIL"),
    ("runai_dcgm_gpu_used_mebibytes", "DCGM_FI_DEV_FB_USED"),
    ("runai_dcgm_gpu_total_mebibytes", "(DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)"),
)
_MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration (``30s``, ``2m``, ``1h30m``, ``1.5s``); ValueError otherwise."""
    raw = text.strip()
    pos, total = 0, 0.0
    while pos < len(raw):
        match = _DURATION_PART.match(raw, pos)
        if match is None:
            raise ValueError(f"{text!r} is not a duration (e.g. 30s, 2m, 1h30m)")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not raw:
        raise ValueError("empty duration (e.g. 30s, 2m, 1h30m)")
    return total


def _record_expr(metric: str) -> str:
    """The reference's expression, character for character: the exporter's pod and node labels
    renamed to Run:ai's, joined with Run:ai's node-pool series."""
    return (
        "label_replace(\n"
        "  label_replace(\n"
        "    label_replace(\n"
        f"      {metric},\n"
        '      "pod_name", "$1", "exported_pod", "(.+)"\n'
        "    ),\n"
        '    "pod_namespace", "$1", "exported_namespace", "(.+)"\n'
        "  ),\n"
        '  "node", "$1", "Hostname", "(.+)"\n'
        ")\n"
        "* on(node) group_left(nodepool)\n"
        "runai_node_nodepool_excluded"
    )


def rule_spec() -> dict[str, Any]:
    return {
        "groups": [
            {
                "name": RULE_GROUP,
                "rules": [{"record": r, "expr": _record_expr(m)} for r, m in RECORDS],
            }
        ]
    }


def prometheus_rule(namespace: str) -> dict[str, Any]:
    """The object the reference creates (name, labels, rules)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PrometheusRule",
        "metadata": {"name": RULE_NAME, "namespace": namespace, "labels": dict(RULE_LABELS)},
        "spec": rule_spec(),
    }


def is_ours(obj: dict[str, Any]) -> bool:
    """An object of that name carrying the reference's labels (made by us or by the
    reference): the only kind deleted when the integration is off."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in RULE_LABELS.items())


def _rules_of(spec: object) -> list[tuple[str, list[tuple[str, str]]]]:
    """What of a rule spec we own: group names and their (record, expr) pairs. Fields the
    apiserver or the Prometheus operator's CRD may default are not ours to fight over."""
    groups = (spec or {}).get("groups") if isinstance(spec, dict) else None
    out = []
    for group in groups if isinstance(groups, list) else []:
        if not isinstance(group, dict):
            return [("", [])]
        raw = group.get("rules")
        rules: list[Any] = raw if isinstance(raw, list) else []
        pairs = [
            (str(r.get("record")), str(r.get("expr"))) if isinstance(r, dict) else ("", "")
            for r in rules
        ]
        out.append((str(group.get("name")), pairs))
    return out


def drift(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch that brings ``obj`` back to the reference's labels and rules, or None."""
    if is_ours(obj) and _rules_of(obj.get("spec")) == _rules_of(rule_spec()):
        return None
    return {"metadata": {"labels": dict(RULE_LABELS)}, "spec": rule_spec()}


class RunaiRuleController:
    def __init__(
        self,
        api: client.ApiClient,
        *,
        enabled: bool,
        namespace: str,
        interval_seconds: float,
    ) -> None:
        self.enabled = enabled
        self.namespace = namespace
        self.interval_seconds = interval_seconds
        self._core: Any = client.CoreV1Api(api)
        self._custom: Any = client.CustomObjectsApi(api)
        self._said: set[str] = set()  # conditions already logged once (absent API/namespace)

    async def run(self, ctx: ServiceContext) -> None:
        if not self.enabled:
            try:
                await ctx.until_stopped(self.remove())
            except Exception as exc:
                log.warning("runai.cleanup_failed", error=describe_error(exc))
            await ctx.stop.wait()
            return
        log.info(
            "runai.integration_enabled",
            namespace=self.namespace,
            interval_seconds=self.interval_seconds,
        )
        while not ctx.stop.is_set():
            try:
                await ctx.until_stopped(self.reconcile())
            except Exception as exc:
                log.warning("runai.reconcile_failed", error=describe_error(exc))
            if await ctx.sleep(self.interval_seconds):
                return

    def _once(self, key: str, event: str, **kw: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.info(event, **kw)

    def _again(self, key: str, event: str, **kw: object) -> None:
        if key in self._said:
            self._said.discard(key)
            log.info(event, **kw)

    async def _get(self, call: Any, what: str, *args: Any) -> dict[str, Any] | None:
        """GET as raw JSON (None on 404); transient failures retried."""

        async def get() -> dict[str, Any] | None:
            resp = await call(*args, _preload_content=False)
            try:
                if resp.status == 404:
                    return None
                await raise_for_status(resp)
                result: dict[str, Any] = json.loads(await resp.read())
                return result
            finally:
                resp.release()

        return await retrying(get, what=what)

    async def api_served(self) -> bool:
        """Whether PrometheusRules are served (API discovery, asked again at every poll: the
        Prometheus operator may be installed, or removed, at any time)."""
        body = await self._get(
            self._custom.get_api_resources, f"discovery {GROUP}/{VERSION}", GROUP, VERSION
        )
        resources = (body or {}).get("resources") or []
        return any(r.get("name") == PLURAL for r in resources)

    async def _read_rule(self) -> dict[str, Any] | None:
        return await self._get(
            self._custom.get_namespaced_custom_object,
            f"get PrometheusRule {self.namespace}/{RULE_NAME}",
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            RULE_NAME,
        )

    async def reconcile(self) -> str:
        """One pass of the enabled controller; returns what it did (for tests and logs)."""
        if not await self.api_served():
            self._once(
                "api",
                "runai.prometheusrule_api_absent",
                api=f"{GROUP}/{VERSION} {PLURAL}",
                detail="no Prometheus operator CRD; the rule is created once it is installed",
                recheck_seconds=self.interval_seconds,
            )
            return "api-absent"
        self._again("api", "runai.prometheusrule_api_present", api=f"{GROUP}/{VERSION}")
        ns = await self._get(
            self._core.read_namespace, f"get Namespace {self.namespace}", self.namespace
        )
        if ns is None:
            self._once(
                "namespace",
                "runai.namespace_absent",
                namespace=self.namespace,
                detail="no Run:ai control plane here yet; the rule is created once it exists",
            )
            return "namespace-absent"
        self._again("namespace", "runai.namespace_present", namespace=self.namespace)
        current = await self._read_rule()
        if current is None:

            async def create() -> Any:
                return await self._custom.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, prometheus_rule(self.namespace)
                )

            try:
                await retrying(create, what=f"create PrometheusRule {self.namespace}/{RULE_NAME}")
            except client.ApiException as exc:
                if exc.status == 409:  # made between our read and our create: next poll checks
                    return "exists"
                raise
            log.info("runai.prometheusrule_created", namespace=self.namespace, name=RULE_NAME)
            return "created"
        patch = drift(current)
        if patch is None:
            return "unchanged"

        async def restore() -> Any:
            return await self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, RULE_NAME, patch, **_MERGE_PATCH
            )

        await retrying(restore, what=f"patch PrometheusRule {self.namespace}/{RULE_NAME}")
        log.info("runai.prometheusrule_restored", namespace=self.namespace, name=RULE_NAME)
        return "restored"

    async def remove(self) -> str:
        """The disabled controller's one pass: delete the rule if it is there and ours."""
        try:
            if not await self.api_served():
                return "api-absent"
            current = await self._read_rule()
            if current is None:
                return "absent"
            if not is_ours(current):
                log.info(
                    "runai.prometheusrule_kept",
                    namespace=self.namespace,
                    name=RULE_NAME,
                    reason="it does not carry the labels this operator gives it",
                )
                return "kept"

            async def delete() -> Any:
                return await self._custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, RULE_NAME
                )

            try:
                await retrying(delete, what=f"delete PrometheusRule {self.namespace}/{RULE_NAME}")
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
                return "absent"
        except Exception as exc:
            if is_auth_failure(exc):
                # RBAC without the cleanup grant (custom roles): nothing to do about it here.
                log.info("runai.cleanup_not_allowed", error=describe_error(exc, 200))
                return "forbidden"
            raise
        log.info(
            "runai.prometheusrule_deleted",
            namespace=self.namespace,
            name=RULE_NAME,
            reason="Run:ai integration disabled",
        )
        return "deleted"
