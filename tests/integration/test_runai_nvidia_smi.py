"""nvidia-smi in Run:ai/KAI fractional pods, on the local control plane (issue 27).

The chart is installed with helm, so the real kube-apiserver applies its MutatingAdmissionPolicy
(templates/runai-nvidia-smi.yaml) to the pods created here:

- a fractional pod (``gpu-fraction`` or ``gpu-memory``) gets the nvidia-smi mounts, the state
  dir and ``FGO_POD_UID`` in every container, also without any volumes or env of its own;
- a plain pod, a pod with GPUs of its own (a device-plugin limit or a ResourceClaim), a
  reservation pod and a pod in a namespace enforcing Pod Security baseline are left alone (the
  last is still admitted);
- end to end: the real status-updater records a reservation pod and the mutated fractional
  pod on a KWOK node; nvidia-smi, run with what the mutated container would get (the downward
  API's UID, the node's record as its state), shows the reserved GPU alone, with the pod's
  half of its memory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from fgo_common.kube.errors import raise_for_status
from fgo_common.nodestate import (
    DEFAULT_STATE_DIR,
    SMI_CONTAINER_DIR,
    SMI_CONTAINER_PATHS,
    SMI_HOST_DIR,
    SMI_LAUNCHER_HOST_PATH,
)
from fgo_common.topology import NodeTopology
from fgo_localcluster import smi
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import (
    KwokNodeFactory,
    create_namespace,
    delete_namespace,
    eventually,
    unique_name,
)
from fgo_testkit.status_updater import StatusUpdaterProcess, read_record
from kubernetes_asyncio import client

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "charts" / "fake-gpu-operator"
SEED = "5"
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
STATE_HOST_DIR = SMI_HOST_DIR.rsplit("/", 1)[0] + "/state"
OUR_VOLUMES = {
    "fgo-nvidia-smi": {"path": SMI_HOST_DIR, "type": "Directory"},
    "fgo-nvidia-smi-launcher": {"path": SMI_LAUNCHER_HOST_PATH, "type": "File"},
    "fgo-state": {"path": STATE_HOST_DIR, "type": "DirectoryOrCreate"},
}
OUR_MOUNTS = {
    SMI_CONTAINER_DIR: "fgo-nvidia-smi",
    **dict.fromkeys(SMI_CONTAINER_PATHS, "fgo-nvidia-smi-launcher"),
    DEFAULT_STATE_DIR: "fgo-state",
}


@dataclass(frozen=True)
class Release:
    namespace: str  # the release's
    reservations: str  # environment.resourceReservationNamespace


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{err.decode()}"
    return out.decode()


@pytest_asyncio.fixture
async def release(kube: client.ApiClient, local_cluster: LocalCluster) -> AsyncIterator[Release]:
    """The chart with the policy (and as little else as it allows: a status-updater Deployment
    that stays Pending, no node agents), in a namespace of its own."""
    namespace = unique_name("t-smi-release", 40)
    reservations = unique_name("t-smi-reservations", 40)
    for ns in (namespace, reservations):
        await create_namespace(kube, ns)
    name = unique_name("r-smi", 30)
    helm = str(local_cluster.bin_dir / "helm")
    kubeconfig = ["--kubeconfig", str(local_cluster.kubeconfig), "--namespace", namespace]
    sets = [
        f"environment.resourceReservationNamespace={reservations}",
        f"telemetrySeed={SEED}",
        "devicePlugin.enabled=false",
        "draPlugin.enabled=false",
        "kwokGpuDevicePlugin.enabled=false",
        "kwokDraPlugin.enabled=false",
        "statusExporter.enabled=false",
        "runtimeClass.enabled=false",
        "admissionPolicy.enabled=false",
    ]
    await _run(helm, "install", name, str(CHART), *kubeconfig, "--set", ",".join(sets))
    try:
        yield Release(namespace, reservations)
    finally:
        await _run(helm, "uninstall", name, *kubeconfig, "--wait")
        for ns in (namespace, reservations):
            await delete_namespace(kube, ns)


def _pod(name: str, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "annotations": dict(annotations or {})},
        "spec": {
            "containers": [
                {"name": "main", "image": "registry.k8s.io/pause:3.10",
                 "env": [{"name": "KEEP", "value": "1"}]},
                {"name": "side", "image": "registry.k8s.io/pause:3.10"},
            ],
            "automountServiceAccountToken": False,  # no volumes at all before the policy
            "tolerations": [KWOK_TOLERATION],
            "terminationGracePeriodSeconds": 0,
        },
    }  # fmt: skip
    body["spec"].update(spec)
    return body


async def _create(
    kube: client.ApiClient, namespace: str, body: dict[str, Any], *, dry_run: bool = True
) -> dict[str, Any]:
    core: Any = client.CoreV1Api(kube)
    kwargs: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
    resp = await core.create_namespaced_pod(namespace, body, _preload_content=False, **kwargs)
    await raise_for_status(resp)
    created: dict[str, Any] = json.loads(await resp.read())
    resp.release()
    return created


def _mutated(pod: dict[str, Any]) -> bool:
    return any(v.get("name") in OUR_VOLUMES for v in pod["spec"].get("volumes") or [])


def _assert_mutated(pod: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for name, host_path in OUR_VOLUMES.items():
        assert volumes[name] == {"name": name, "hostPath": host_path}
    for container in pod["spec"]["containers"]:
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        for path, volume in OUR_MOUNTS.items():
            assert mounts[path] == {"name": volume, "mountPath": path, "readOnly": True}
        env = {e["name"]: e for e in container["env"]}
        assert env["FGO_POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"
        assert env["FGO_SEED"] == {"name": "FGO_SEED", "value": SEED}
    # What the pod had stays, first.
    assert pod["spec"]["containers"][0]["env"][0] == {"name": "KEEP", "value": "1"}


async def _wait_for_policy(kube: client.ApiClient, namespace: str) -> None:
    """The apiserver applies a new policy once its informer has it: probe with dry runs."""

    async def applied() -> bool:
        probe = _pod(unique_name("probe", 30), {"gpu-fraction": "0.5"})
        return _mutated(await _create(kube, namespace, probe))

    await eventually(applied, timeout_s=60, what="the MutatingAdmissionPolicy in effect")


async def test_fractional_pods_get_nvidia_smi_and_no_other_pod_does(
    kube: client.ApiClient, release: Release, namespace: str
) -> None:
    await _wait_for_policy(kube, namespace)
    for notes in ({"gpu-fraction": "0.5"}, {"gpu-memory": "4000"}):
        pod = await _create(kube, namespace, _pod(unique_name("frac", 30), notes))
        _assert_mutated(pod)
    # A pod that has volumes, mounts and env already keeps them, ours come after.
    token = await _create(
        kube, namespace,
        _pod(unique_name("frac", 30), {"gpu-fraction": "0.25"}, automountServiceAccountToken=True),
    )  # fmt: skip
    _assert_mutated(token)
    assert token["spec"]["volumes"][0]["name"].startswith("kube-api-access-")
    assert token["spec"]["containers"][1]["volumeMounts"][0]["mountPath"] == (
        "/var/run/secrets/kubernetes.io/serviceaccount"
    )

    # A container that mounts something at one of our paths itself keeps it and gets nothing
    # of ours; the pod is still admitted, its other containers mutated.
    own = _pod(unique_name("frac", 30), {"gpu-fraction": "0.5"})
    own["spec"]["volumes"] = [{"name": "mine", "emptyDir": {}}]
    own["spec"]["containers"][1]["volumeMounts"] = [
        {"name": "mine", "mountPath": DEFAULT_STATE_DIR}
    ]
    pod = await _create(kube, namespace, own)
    assert _mutated(pod)
    assert (
        pod["spec"]["containers"][1]["volumeMounts"] == own["spec"]["containers"][1]["volumeMounts"]
    )
    assert "env" not in pod["spec"]["containers"][1]
    assert len(pod["spec"]["containers"][0]["volumeMounts"]) == 4

    fraction = {"gpu-fraction": "0.5"}
    gpu_limit = _pod(unique_name("whole", 30), fraction)
    gpu_limit["spec"]["containers"][1]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    claim = _pod(
        unique_name("claim", 30), fraction, resourceClaims=[{"name": "g", "resourceClaimName": "x"}]
    )
    untouched = {
        "plain": (namespace, _pod(unique_name("plain", 30))),
        "device-plugin GPU": (namespace, gpu_limit),
        "ResourceClaim": (namespace, claim),
        "reservation pod": (release.reservations, _pod(unique_name("res", 30), fraction)),
    }
    for what, (ns, body) in untouched.items():
        assert not _mutated(await _create(kube, ns, body)), what

    # Pod Security baseline forbids hostPath: the pod is admitted as it was, not refused.
    core: Any = client.CoreV1Api(kube)
    baseline = unique_name("t-smi-baseline", 40)
    await create_namespace(kube, baseline)
    try:
        label = {"pod-security.kubernetes.io/enforce": "baseline"}
        await core.patch_namespace(baseline, {"metadata": {"labels": label}})

        # The apiserver's namespace cache may lag behind the label by a moment (meanwhile the
        # mutated pod is refused by Pod Security): wait until a pod is admitted.
        async def admitted() -> dict[str, Any]:
            return await _create(kube, baseline, _pod(unique_name("frac", 30), fraction))

        pod = await eventually(admitted, timeout_s=30, what="a pod admitted under baseline")
        assert not _mutated(pod)
    finally:
        await delete_namespace(kube, baseline)


async def test_nvidia_smi_in_a_fractional_pod_sees_its_gpu_and_share(
    kube: client.ApiClient,
    local_cluster: LocalCluster,
    release: Release,
    namespace: str,
    kwok_nodes: KwokNodeFactory,
    tmp_path: Path,
) -> None:
    core: Any = client.CoreV1Api(kube)
    pool_key = f"fgo.test/pool-{namespace[-6:]}"
    config = {"nodePoolLabelKey": pool_key,
              "nodePools": {"default": {"gpus": [{"type": "H100", "count": 8}]}}}  # fmt: skip
    await core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "topology"}, "data": {"topology.yml": yaml.safe_dump(config)}},
    )
    updater = StatusUpdaterProcess(
        local_cluster.kubeconfig, tmp_path / "status-updater.log",
        TOPOLOGY_CM_NAMESPACE=namespace, RESOURCE_RESERVATION_NAMESPACE=release.reservations,
        PROMETHEUS_URL="", DEBOUNCE_SECONDS="0.1",
    )  # fmt: skip
    await updater.start()
    try:
        (node,) = await kwok_nodes(
            1, labels={pool_key: "default"}, extra_capacity={"nvidia.com/gpu": "8"}
        )
        await _wait_for_policy(kube, namespace)
        group = {"runai-gpu-group": "grp-smi"}
        selector = {"kubernetes.io/hostname": node}
        reservation = _pod("runai-reservation-gpu-smi", nodeSelector=selector)
        reservation["metadata"]["labels"] = group
        reservation["spec"]["containers"] = [
            {"name": "main", "image": "registry.k8s.io/pause:3.10",
             "resources": {"limits": {"nvidia.com/gpu": "1"}}}
        ]  # fmt: skip
        await _create(kube, release.reservations, reservation, dry_run=False)
        body = _pod("frac-smi", {"gpu-fraction": "0.5"}, nodeSelector=selector)
        body["metadata"]["labels"] = group
        pod = await _create(kube, namespace, body, dry_run=False)
        _assert_mutated(pod)
        uid = pod["metadata"]["uid"]

        async def recorded() -> NodeTopology | None:
            record = await read_record(kube, namespace, node)
            if record is not None and any(uid in g.status.usage for g in record.gpus):
                return record
            return None

        record = await eventually(
            recorded, timeout_s=60, what=f"fractional pod recorded\n{updater.log_tail()}"
        )
        (gpu,) = [g for g in record.gpus if uid in g.status.usage]
        pod = await _read_pod(kube, namespace, "frac-smi")
        env = smi.pod_env(pod, "main", record, {}, smi.OperatorSettings(seed=SEED))
        # The downward API's value, as the kubelet resolves it; no visible-devices variable.
        assert env == {"FGO_SEED": SEED, "FGO_POD_UID": uid}
        query = ["--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"]
        out = tmp_path / "smi.out"
        with out.open("wb") as handle:
            code = await smi.run_smi(record, env, query, stdout=handle.fileno())
        assert code == 0
        # Container index 0, the reserved GPU, half of its memory (the status-updater's
        # fbUsed for gpu-fraction 0.5: int(81559 x 0.5)).
        assert out.read_text() == f"0, {gpu.id}, {gpu.memory_mib // 2}\n"
        # The second container has the same view.
        assert smi.pod_env(pod, "side", record, {}, smi.OperatorSettings(seed=SEED)) == env
    finally:
        await updater.stop()


async def _read_pod(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    core: Any = client.CoreV1Api(kube)
    resp = await core.read_namespaced_pod(name, namespace, _preload_content=False)
    await raise_for_status(resp)
    body: dict[str, Any] = json.loads(await resp.read())
    resp.release()
    return body
