"""ComputeDomains against the real control plane: the chart's CRD and DeviceClasses, the
compute-domain-controller in-process (its KWOK channel slices and the ComputeDomain
controller), the real scheduler allocating channel claims, KWOK nodes of one NVLink clique.

The controller is cluster-wide (ComputeDomains of every namespace, every KWOK node's channel);
its per-test ``INSTANCE`` keeps its slices apart from other tests' runs, and pods are pinned to
this test's nodes by a per-test label.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fgo_common import computedomain as cdn
from fgo_common.runtime.runner import ServiceContext
from fgo_common.runtime.settings import load_settings
from fgo_compute_domain_controller.main import serve
from fgo_compute_domain_controller.settings import Settings
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import KwokNodeFactory, eventually, unique_name, wait_service_ready
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "charts" / "fake-gpu-operator" / "files" / "computedomain-crd.yaml"
TEST_LABEL = "fgo.test/cd-run"
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake",
                   "effect": "NoSchedule"}  # fmt: skip
CLIQUE = "5c1ea0b1-0000-4000-8000-00000000c0de.0"


async def raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a kubernetes-asyncio method; the JSON body as a dict. An error status raises
    ApiException (``_preload_content=False`` alone would hand back the Status object)."""
    resp = await call(*args, _preload_content=False, **kwargs)
    try:
        body = await resp.read()
        if resp.status >= 400:
            raise ApiException(status=resp.status, reason=resp.reason)
        return json.loads(body)
    finally:
        resp.release()


async def install_api(kube: client.ApiClient) -> None:
    """The chart's CRD and DeviceClasses (idempotent: every test of the module asks)."""
    ext: Any = client.ApiextensionsV1Api(kube)
    crd = yaml.safe_load(CRD_FILE.read_text())
    with contextlib.suppress(ApiException):
        await ext.create_custom_resource_definition(crd)

    async def established() -> bool:
        got = await raw(ext.read_custom_resource_definition, crd["metadata"]["name"])
        conditions = (got.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    await eventually(established, timeout_s=30, what="ComputeDomain CRD established")
    resource: Any = client.ResourceV1Api(kube)
    for device_class in cdn.device_classes():
        with contextlib.suppress(ApiException):
            await resource.create_device_class(device_class)


@contextlib.asynccontextmanager
async def running_controller(
    local_cluster: LocalCluster, instance: str, **env: str
) -> AsyncIterator[tuple[ServiceContext, asyncio.Task[int]]]:
    settings = load_settings(
        Settings,
        {"KUBECONFIG": str(local_cluster.kubeconfig), "INSTANCE": instance, "HEALTH_PORT": "0",
         **env},
    )  # fmt: skip
    ctx = ServiceContext(name="compute-domain-controller")
    task = asyncio.create_task(serve(settings, ctx), name="compute-domain-controller")
    try:
        await wait_service_ready(ctx.readiness, task, condition="synced", what="controller Ready")
        yield ctx, task
    finally:
        ctx.stop.set()
        async with asyncio.timeout(30):
            await task


class Domains:
    def __init__(self, kube: client.ApiClient, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.custom: Any = client.CustomObjectsApi(kube)
        self.core: Any = client.CoreV1Api(kube)
        self.resource: Any = client.ResourceV1Api(kube)

    async def create(
        self, name: str, num_nodes: int, template: str, mode: str | None = None
    ) -> None:
        channel: dict[str, Any] = {"resourceClaimTemplate": {"name": template}}
        if mode:
            channel["allocationMode"] = mode
        body = {"apiVersion": cdn.API_VERSION, "kind": cdn.KIND, "metadata": {"name": name},
                "spec": {"numNodes": num_nodes, "channel": channel}}  # fmt: skip
        await self.custom.create_namespaced_custom_object(
            cdn.GROUP, cdn.VERSION, self.namespace, cdn.PLURAL, body
        )

    async def get(self, name: str) -> dict[str, Any] | None:
        try:
            return await raw(self.custom.get_namespaced_custom_object, cdn.GROUP, cdn.VERSION,
                             self.namespace, cdn.PLURAL, name)  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def template(self, name: str) -> dict[str, Any] | None:
        try:
            return await raw(self.resource.read_namespaced_resource_claim_template, name,
                             self.namespace)  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def wait_status(
        self, name: str, status: str, nodes: int, timeout_s: float = 60
    ) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            cd = await self.get(name)
            got = (cd or {}).get("status") or {}
            ok = got.get("status") == status and len(got.get("nodes") or []) == nodes
            return cd if ok else None

        return await eventually(probe, timeout_s=timeout_s,
                                what=f"ComputeDomain {name} {status} with {nodes} nodes")  # fmt: skip

    async def pod(
        self, name: str, template: str, run: str, selector: dict[str, str] | None = None
    ) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "imex-workload"}},
            "spec": {
                "nodeSelector": {"type": "kwok", TEST_LABEL: run, **(selector or {})},
                "tolerations": [KWOK_TOLERATION],
                "terminationGracePeriodSeconds": 0,
                # NVIDIA's guidance: keep a ComputeDomain's pods inside one NVLink clique.
                "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "imex-workload"}},
                     "topologyKey": cdn.CLIQUE_LABEL}]}},
                "containers": [{"name": "main", "image": "ubuntu:22.04",
                                "command": ["sleep", "infinity"],
                                "resources": {"claims": [{"name": "imex"}]}}],
                "resourceClaims": [{"name": "imex", "resourceClaimTemplateName": template}],
            },
        }  # fmt: skip
        await self.core.create_namespaced_pod(self.namespace, body)

    async def pod_claim(self, pod_name: str) -> dict[str, Any] | None:
        pod = await raw(self.core.read_namespaced_pod, pod_name, self.namespace)
        statuses = (pod.get("status") or {}).get("resourceClaimStatuses") or []
        claim = next((s.get("resourceClaimName") for s in statuses), None)
        if not claim:
            return None
        return await raw(self.resource.read_namespaced_resource_claim, claim, self.namespace)

    async def events(self, name: str) -> list[dict[str, Any]]:
        body = await raw(self.core.list_namespaced_event, self.namespace,
                         field_selector=f"involvedObject.name={name}")  # fmt: skip
        return list(body["items"])


async def clique_nodes(
    kwok_nodes: KwokNodeFactory, count: int, run: str, clique: str = CLIQUE
) -> list[str]:
    # gpu.present: what the GFD labeler sets on GPU nodes; channels are published only there.
    labels = {TEST_LABEL: run, cdn.CLIQUE_LABEL: clique, "nvidia.com/gpu.present": "true"}
    return await kwok_nodes(count, labels=labels)


async def test_two_pods_of_one_clique_get_channels_and_the_domain_goes_ready(
    local_cluster: LocalCluster, kube: client.ApiClient, namespace: str, kwok_nodes: KwokNodeFactory
) -> None:
    await install_api(kube)
    run = unique_name("cd", 20)
    nodes = await clique_nodes(kwok_nodes, 2, run)
    domains = Domains(kube, namespace)
    async with running_controller(local_cluster, run) as (_ctx, task):
        # KWOK channels: one slice per node, channel-0, pool = node.
        resource: Any = client.ResourceV1Api(kube)

        async def channel_slices() -> list[dict[str, Any]] | None:
            found = []
            for node in nodes:
                got = await raw(
                    resource.list_resource_slice, field_selector=f"spec.nodeName={node}"
                )
                found += [s for s in got["items"] if s["spec"]["driver"] == cdn.DRIVER]
            return found if len(found) == len(nodes) else None

        slices = await eventually(channel_slices, timeout_s=30, what="channel slices")
        for item in slices:
            node = item["spec"]["nodeName"]
            assert item["metadata"]["name"] == f"kwok-{node}-compute-domain-channel"
            assert item["spec"]["pool"]["name"] == node
            assert item["spec"]["devices"] == [cdn.channel_device(0)]

        started = time.monotonic()
        await domains.create("imex", 2, "imex-channel")
        template = await eventually(lambda: domains.template("imex-channel"), timeout_s=30,
                                    what="workload template")  # fmt: skip
        template_s = time.monotonic() - started
        cd = await domains.get("imex")
        assert cd is not None
        assert cdn.FINALIZER in cd["metadata"]["finalizers"]
        assert template["metadata"]["labels"] == {
            "resource.nvidia.com/computeDomain": "imex",
            "resource.nvidia.com/computeDomainTarget": "workload",
        }
        (owner,) = template["metadata"]["ownerReferences"]
        assert owner["uid"] == cd["metadata"]["uid"]
        (config,) = template["spec"]["spec"]["devices"]["config"]
        assert config["opaque"]["parameters"]["allocationMode"] == "Single"
        assert config["opaque"]["parameters"]["domainID"] == cd["metadata"]["uid"]

        started = time.monotonic()
        for pod in ("worker-0", "worker-1"):
            await domains.pod(pod, "imex-channel", run)
        ready = await domains.wait_status("imex", "Ready", 2)
        ready_s = time.monotonic() - started
        joined = ready["status"]["nodes"]
        assert sorted(n["name"] for n in joined) == sorted(nodes)
        assert {n["cliqueID"] for n in joined} == {CLIQUE}
        assert sorted(n["index"] for n in joined) == [0, 1]
        assert all(n["status"] == "Ready" for n in joined)
        # The real scheduler put one channel claim on each node.
        pools = set()
        for pod in ("worker-0", "worker-1"):
            claim = await domains.pod_claim(pod)
            assert claim is not None
            (result,) = claim["status"]["allocation"]["devices"]["results"]
            assert (result["driver"], result["device"]) == (cdn.DRIVER, "channel-0")
            pools.add(result["pool"])
        assert pools == set(nodes)

        # A node leaving: its pod goes, its claim is deallocated, the node leaves the status.
        await domains.core.delete_namespaced_pod("worker-1", namespace, grace_period_seconds=0)
        left = await domains.wait_status("imex", "NotReady", 1)
        assert len(left["status"]["nodes"]) == 1

        # Deletion: template released and deleted, then the ComputeDomain itself.
        started = time.monotonic()
        await domains.custom.delete_namespaced_custom_object(
            cdn.GROUP, cdn.VERSION, namespace, cdn.PLURAL, "imex"
        )

        async def all_gone() -> bool:
            return (
                await domains.get("imex") is None and await domains.template("imex-channel") is None
            )

        await eventually(all_gone, timeout_s=30, what="ComputeDomain and template deleted")
        deleted_s = time.monotonic() - started
        assert not task.done()
        print(f"\nmeasured: template {template_s:.2f} s after create, Ready {ready_s:.2f} s after "
              f"the pods, deletion {deleted_s:.2f} s")  # fmt: skip


async def test_all_mode_and_a_domain_that_cannot_be_placed_stays_not_ready(
    local_cluster: LocalCluster, kube: client.ApiClient, namespace: str, kwok_nodes: KwokNodeFactory
) -> None:
    await install_api(kube)
    run = unique_name("cd", 20)
    nodes = await clique_nodes(kwok_nodes, 2, run)
    domains = Domains(kube, namespace)
    async with running_controller(local_cluster, run):
        await domains.create("wide", 3, "wide-channel", mode="All")
        template = await eventually(lambda: domains.template("wide-channel"), timeout_s=30,
                                    what="workload template")  # fmt: skip
        (config,) = template["spec"]["spec"]["devices"]["config"]
        assert config["opaque"]["parameters"]["allocationMode"] == "All"
        for index in range(3):
            await domains.pod(f"w-{index}", "wide-channel", run)
        # Two nodes, one channel-0 each: the third pod stays Pending, the domain NotReady.
        cd = await domains.wait_status("wide", "NotReady", 2)
        assert sorted(n["name"] for n in cd["status"]["nodes"]) == sorted(nodes)
        await asyncio.sleep(2)
        cd = await domains.get("wide")
        assert cd is not None and cd["status"]["status"] == "NotReady"


async def test_bad_input_is_refused_or_reported(
    local_cluster: LocalCluster, kube: client.ApiClient, namespace: str
) -> None:
    await install_api(kube)
    domains = Domains(kube, namespace)
    # The CRD's schema names the field.
    for spec, field in (
        ({"numNodes": -1, "channel": {"resourceClaimTemplate": {"name": "t"}}}, "spec.numNodes"),
        ({"numNodes": 1, "channel": {"resourceClaimTemplate": {"name": "t"},
                                     "allocationMode": "Some"}}, "spec.channel.allocationMode"),
        ({"numNodes": 1, "channel": {}}, "spec.channel.resourceClaimTemplate"),
        ({"channel": {"resourceClaimTemplate": {"name": "t"}}}, "spec.numNodes"),
    ):  # fmt: skip
        body = {"apiVersion": cdn.API_VERSION, "kind": cdn.KIND, "metadata": {"name": "bad"},
                "spec": spec}  # fmt: skip
        with pytest.raises(ApiException) as err:
            await domains.custom.create_namespaced_custom_object(
                cdn.GROUP, cdn.VERSION, namespace, cdn.PLURAL, body
            )
        assert err.value.status == 422
        assert field in str(err.value.body), err.value.body

    run = unique_name("cd", 20)
    async with running_controller(local_cluster, run) as (_ctx, task):
        # numNodes 0 is valid: Ready at once, with no nodes.
        await domains.create("zero", 0, "zero-channel")
        await domains.wait_status("zero", "Ready", 0)
        # A template name another object already has: NotReady and a Warning Event.
        await domains.resource.create_namespaced_resource_claim_template(namespace, {
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
            "metadata": {"name": "taken"},
            "spec": {"spec": {"devices": {"requests": [{"name": "x", "exactly": {
                "deviceClassName": cdn.CHANNEL_DEVICE_CLASS}}]}}},
        })  # fmt: skip
        await domains.create("clash", 1, "taken")
        await domains.wait_status("clash", "NotReady", 0)

        async def conflict_event() -> list[dict[str, Any]] | None:
            events = await domains.events("clash")
            hits = [e for e in events if e["reason"] == "ResourceClaimTemplateConflict"]
            return hits or None

        (event,) = await eventually(conflict_event, timeout_s=30, what="conflict Event")
        assert event["type"] == "Warning"
        assert "spec.channel.resourceClaimTemplate.name" in event["message"]
        # The other object is left alone; the service is still running.
        taken = await domains.template("taken")
        assert taken is not None and not taken["metadata"].get("ownerReferences")
        assert not task.done()
        # Deleting the clashing ComputeDomain leaves the foreign template in place.
        await domains.custom.delete_namespaced_custom_object(
            cdn.GROUP, cdn.VERSION, namespace, cdn.PLURAL, "clash"
        )
        await eventually(lambda: _gone(domains, "clash"), timeout_s=30, what="clash deleted")
        assert await domains.template("taken") is not None


async def _gone(domains: Domains, name: str) -> bool:
    return await domains.get(name) is None


async def test_cliques_from_the_pool_config_through_records_and_labels(
    local_cluster: LocalCluster,
    kube: client.ApiClient,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
) -> None:
    """The whole chain: pool nvlinkDomain -> the real status-updater's records -> the
    status-exporter's GFD labeler sets nvidia.com/gpu.clique -> pods select one clique -> the
    ComputeDomain's status reports the same cliqueID."""
    import secrets

    from fgo_status_exporter.main import amain as exporter_main
    from fgo_status_exporter.settings import Settings as ExporterSettings
    from fgo_testkit.status_updater import StatusUpdaterProcess

    await install_api(kube)
    core: Any = client.CoreV1Api(kube)
    pool_key = f"fgo.test/pool-{secrets.token_hex(3)}"
    cluster_uuid = "0a0b0c0d-0000-4000-8000-000000000072"
    config = {
        "nodePoolLabelKey": pool_key,
        "nodePools": {
            "nvl72": {
                "gpus": [{"type": "gb200", "count": 4}],
                "nvlinkDomain": {"cliqueSize": 2, "clusterUUID": cluster_uuid},
            }
        },
    }
    await core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}},
    )
    updater = StatusUpdaterProcess(
        local_cluster.kubeconfig,
        tmp_path / "status-updater.log",
        TOPOLOGY_CM_NAMESPACE=namespace,
        RESOURCE_RESERVATION_NAMESPACE=f"{namespace[:50]}-res",
        PROMETHEUS_URL="",
        DEBOUNCE_SECONDS="0.1",
    )
    await updater.start()
    exporter_settings = load_settings(
        ExporterSettings,
        {
            "EXPORTER_MODE": "kwok",
            "TOPOLOGY_CM_NAMESPACE": namespace,
            "KUBECONFIG": str(local_cluster.kubeconfig),
            "METRICS_PORT": str(_free_port()),
            "HEALTH_PORT": "0",
        },
    )
    exporter_ctx = ServiceContext(name="status-exporter")
    exporter = asyncio.create_task(exporter_main(exporter_settings, exporter_ctx))
    run = unique_name("cd", 20)
    try:
        nodes = await kwok_nodes(3, labels={pool_key: "nvl72", TEST_LABEL: run})
        expected = {
            nodes[0]: f"{cluster_uuid}.0",
            nodes[1]: f"{cluster_uuid}.0",
            nodes[2]: f"{cluster_uuid}.1",
        }

        async def cliques() -> dict[str, str] | None:
            got = {}
            for node in nodes:
                labels = (await raw(core.read_node, node))["metadata"].get("labels") or {}
                got[node] = labels.get(cdn.CLIQUE_LABEL, "")
            return got if got == expected else None

        await eventually(cliques, timeout_s=60, what="clique labels from the records")

        domains = Domains(kube, namespace)
        async with running_controller(local_cluster, run):
            await domains.create("pair", 2, "pair-channel")
            await eventually(lambda: domains.template("pair-channel"), timeout_s=30,
                             what="workload template")  # fmt: skip
            # Which clique is the workload's choice (the first pod of a group with pod
            # affinity may land anywhere): this one asks for clique 0 by its label.
            for pod in ("a", "b"):
                await domains.pod(pod, "pair-channel", run, {cdn.CLIQUE_LABEL: f"{cluster_uuid}.0"})
            cd = await domains.wait_status("pair", "Ready", 2)
            joined = {n["name"]: n["cliqueID"] for n in cd["status"]["nodes"]}
            assert joined == {nodes[0]: expected[nodes[0]], nodes[1]: expected[nodes[1]]}
    finally:
        exporter_ctx.stop.set()
        async with asyncio.timeout(30):
            await exporter
        await updater.stop()


async def test_leader_election_the_leader_writes(
    local_cluster: LocalCluster, kube: client.ApiClient, namespace: str
) -> None:
    """With LEADER_ELECTION (the chart's replicas > 1) the workers run once the Lease is held."""
    await install_api(kube)
    domains = Domains(kube, namespace)
    run = unique_name("cd", 20)
    lease = {"LEADER_ELECTION": "true", "LEASE_NAMESPACE": namespace, "LEASE_IDENTITY": run,
             "LEASE_NAME": "fgo-compute-domain-controller"}  # fmt: skip
    async with running_controller(local_cluster, run, **lease):
        coordination: Any = client.CoordinationV1Api(kube)
        got = await raw(coordination.read_namespaced_lease, "fgo-compute-domain-controller",
                        namespace)  # fmt: skip
        assert got["spec"]["holderIdentity"] == run
        await domains.create("led", 0, "led-channel")
        await domains.wait_status("led", "Ready", 0)
        assert await domains.template("led-channel") is not None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
