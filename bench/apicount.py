"""apiserver requests by identity: one FlowSchema per (our ServiceAccount, verb class, resource).

``apiserver_request_total`` has no user label, and our services' own /metrics count different
things each. API Priority and Fairness does classify every request by its user: a FlowSchema
matching one ServiceAccount (placed before the built-in ``service-accounts`` schema) makes the
apiserver count that identity's requests in ``apiserver_flowcontrol_dispatched_requests_total
{flow_schema=...}``. Writes are split by resource so the report can say which object kind our
writes go to; reads (get/list/watch) have one schema per identity. The schemas point at the
built-in ``workload-low`` priority level, which every ServiceAccount already lands in, so
request handling is unchanged. This counts what reached the apiserver, retries included, and
needs no change to the services (it only works while they authenticate as their ServiceAccounts,
which is how the LocalOperator runs them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

PREFIX = "fgo-bench-"
WRITE_VERBS = ["create", "update", "patch", "delete", "deletecollection"]
# Resource buckets for writes: bucket name -> resources (with the subresources writers use).
WRITE_BUCKETS: dict[str, list[str]] = {
    "configmaps": ["configmaps"],
    "nodes": ["nodes", "nodes/status"],
    "pods": ["pods", "pods/status"],
    "resourceslices": ["resourceslices"],
    "events": ["events"],
}
PRIORITY_LEVEL = "workload-low"
# Server-side apply (passed as **kwargs: the generated stubs do not declare _content_type).
APPLY: dict[str, Any] = {
    "field_manager": "fgo-bench",
    "force": True,
    "_content_type": "application/apply-patch+yaml",
}
# Built-in schemas: exempt 1, probes 2, system-leader-election 100, ... kube-system-service-
# accounts 900, service-accounts 9000. Ours go between the system ones and the SA catch-all.
BASE_PRECEDENCE = 5000

_SERIES = re.compile(
    r"^apiserver_flowcontrol_dispatched_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)",
    re.MULTILINE,
)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def schema_name(service_account: str, bucket: str) -> str:
    return f"{PREFIX}{service_account}.{bucket}"


def flow_schemas(namespace: str, service_accounts: Iterable[str]) -> list[dict[str, Any]]:
    """FlowSchemas counting each ServiceAccount's writes per bucket, other writes, and reads."""
    out: list[dict[str, Any]] = []
    for i, sa in enumerate(sorted(set(service_accounts))):
        subject = [
            {"kind": "ServiceAccount", "serviceAccount": {"name": sa, "namespace": namespace}}
        ]
        precedence = BASE_PRECEDENCE + i * 10
        rules: list[tuple[str, dict[str, Any]]] = [
            (
                bucket,
                {
                    "resourceRules": [
                        {
                            "verbs": WRITE_VERBS,
                            "apiGroups": ["*"],
                            "resources": resources,
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ]
                },
            )
            for bucket, resources in WRITE_BUCKETS.items()
        ]
        rules.append(
            (
                "write-other",
                {
                    "resourceRules": [
                        {
                            "verbs": WRITE_VERBS,
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ]
                },
            )
        )
        rules.append(
            (
                "read",
                {
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                },
            )
        )
        for offset, (bucket, rule) in enumerate(rules):
            out.append(
                {
                    "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
                    "kind": "FlowSchema",
                    "metadata": {
                        "name": schema_name(sa, bucket),
                        "labels": {"app.kubernetes.io/part-of": "fgo-bench"},
                    },
                    "spec": {
                        "priorityLevelConfiguration": {"name": PRIORITY_LEVEL},
                        "matchingPrecedence": precedence + offset,
                        "distinguisherMethod": {"type": "ByUser"},
                        "rules": [{"subjects": subject, **rule}],
                    },
                }
            )
    return out


def parse_dispatched(metrics_text: str) -> dict[str, float]:
    """flow_schema -> requests dispatched, from the apiserver's /metrics text."""
    counts: dict[str, float] = {}
    for match in _SERIES.finditer(metrics_text):
        labels = dict(_LABEL.findall(match.group("labels")))
        schema = labels.get("flow_schema", "")
        counts[schema] = counts.get(schema, 0.0) + float(match.group("value"))
    return counts


def by_identity(before: dict[str, float], after: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per ServiceAccount: requests per bucket between two snapshots, plus ``writes``/``reads``.

    Built-in schemas are reported under their own names (``kube-scheduler``, ``exempt`` ...)
    with a single ``requests`` figure, for context.
    """
    out: dict[str, dict[str, float]] = {}
    for schema in set(before) | set(after):
        delta = after.get(schema, 0.0) - before.get(schema, 0.0)
        if schema.startswith(PREFIX):
            sa, _, bucket = schema[len(PREFIX) :].rpartition(".")
            entry = out.setdefault(sa, {"writes": 0.0, "reads": 0.0})
            entry[bucket] = entry.get(bucket, 0.0) + delta
            entry["reads" if bucket == "read" else "writes"] += delta
        else:
            out.setdefault(f"builtin:{schema}", {})["requests"] = delta
    for entry in out.values():
        entry.pop("read", None)
    return out


async def apply_flow_schemas(api: Any, schemas: list[dict[str, Any]]) -> None:
    from kubernetes_asyncio import client

    flow = client.FlowcontrolApiserverV1Api(api)
    for schema in schemas:
        await flow.patch_flow_schema(schema["metadata"]["name"], schema, **APPLY)


async def apiserver_metrics(api: Any) -> str:
    """The apiserver's own /metrics (as the admin the harness runs as)."""
    resp = await api.call_api(
        "/metrics",
        "GET",
        _preload_content=False,
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
    )
    try:
        return str(await resp.text())
    finally:
        resp.release()


async def snapshot(api: Any) -> dict[str, float]:
    return parse_dispatched(await apiserver_metrics(api))
