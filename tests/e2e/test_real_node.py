"""The chart on a real node: every pod of the release runs in a runc container on a real kubelet.

The module starts a control plane of its own (the session's cluster runs the chart's
Deployments as local processes; here nothing is a stand-in), adds one real node (kubelet +
containerd, ``fgo cluster add-real-node``) in pool ``default``, and ``helm upgrade -i`` the chart
with the images ``make images`` built (default names, ``pullPolicy: Never``: nothing is ever
pulled) and ``real-node-values.yaml`` (pool default with 2 GPUs). There are no KWOK nodes, so
the Deployments meant for them run on the real node as well.

The device plugin and the DRA plugin would offer the same two GPUs of the node, and on a real
node nothing arbitrates between them: the scheduler serves ``nvidia.com/gpu`` from the node's
ResourceSlice (DeviceClass ``extendedResourceName``) whenever the node's allocatable lacks it,
e.g. while the kubelet restarts, and the device plugin then hands the same GPU out again (this
test saw it). A real node runs one path or the other, and so does this test, one after the
other: first the device-plugin path (``draPlugin.enabled=false``), then ``helm upgrade`` with
``draPlugin.enabled=true, devicePlugin.enabled=false`` for the DRA path.

What it shows, in file order (the tests share the node and state what they need from earlier):

1. every DaemonSet and Deployment of the chart runs as a real pod on the node, Ready, under
   its ServiceAccount;
2. the device plugin registers with the kubelet (``nvidia.com/gpu: 2``); a GPU pod's
   ``nvidia-smi -L`` prints the GPU the kubelet allocated (its pod-resources API), named the
   same by the topology record, the device plugin's pod annotation and the node exporter's
   metrics; a second pod gets the other GPU, a third stays Pending (Insufficient);
3. restarts: the kubelet (the plugin registers again, the pods keep their GPUs), the
   device-plugin pod (recreated, allocations kept, the freed GPU goes to the pending pod);
4. DRA: the DRA plugin's pod (Ready, its ServiceAccount) registers with the kubelet and
   publishes the node's ResourceSlice; a pod of the seed README's ResourceClaimTemplate, whose
   DRA plugin is restarted between NodePrepareResources and the container's start, starts with
   the GPU containerd injected from the CDI spec (env, mounts, ``nvidia-smi -L``);
5. ``kubectl logs`` / ``exec`` throughout; no service was refused an API call;
6. ``fgo cluster down`` leaves nothing behind.

Needs root, ``make node-tools`` and ``make images``.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2elib import ClusterTarget, ForbiddenGuard, samples
from fgo_common.annotations import ALLOCATED_DEVICES, parse_allocated_devices
from fgo_kubelet_api import podresources_v1 as podres
from fgo_localcluster.nodes import POOL_LABEL
from fgo_localcluster.testing import NodeTraces, leftovers
from realnodelib import (
    NAMESPACE,
    NODE,
    TEST_IMAGE,
    VALUES,
    WORK,
    RealNodeCluster,
    ready,
    real_node_cluster,
    service_images,
    wait_for,
)

GPU = "nvidia.com/gpu"
DRA_IMAGE = "ghcr.io/fake-gpu-operator/dra-plugin:0.1.0"
SERVICE_IMAGES = service_images(
    "device-plugin", "dra-plugin", "kwok-dra-plugin", "status-exporter", "status-updater"
)
# Workload -> ServiceAccount (docs/chart.md, "What it installs").
DAEMONSETS = {
    "fgo-device-plugin": "fgo-device-plugin",
    "nvidia-dcgm-exporter": "fgo-status-exporter",
}
DRA_DAEMONSETS = {
    "fgo-dra-plugin": "fgo-dra-plugin",
    "nvidia-dcgm-exporter": "fgo-status-exporter",
}
# The DRA phase: helm upgrade with these on top of VALUES.
DRA_PHASE = ["draPlugin.enabled=true", "devicePlugin.enabled=false"]
DEPLOYMENTS = {
    "fgo-status-updater": "fgo-status-updater",
    "fgo-kwok-gpu-capacity": "fgo-kwok-gpu-capacity",
    "fgo-kwok-dra-plugin": "fgo-kwok-dra-plugin",
    "nvidia-dcgm-exporter-kwok": "fgo-status-exporter",
}
SMI_DONE = "nvidia-smi-done"
SMI_LINE = re.compile(r"^GPU (\d+): (.+) \(UUID: (GPU-[0-9a-f-]+)\)$")

# Bring-up (control plane, image imports, chart pods) is part of the first test's time.
pytestmark = pytest.mark.timeout(600)

_ready = ready


@dataclass
class Env(RealNodeCluster):
    guard: ForbiddenGuard
    timings: dict[str, float]

    def workload_pods(self, kind: str, name: str) -> list[dict[str, Any]]:
        labels = self.get(kind, name, NAMESPACE)["spec"]["selector"]["matchLabels"]
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        return [
            p for p in self.pods(selector=selector) if not p["metadata"].get("deletionTimestamp")
        ]


def _describe(env: Env) -> str:
    return env.kubectl("get", "pods", "-A", "-o", "wide", check=False)


def _wait_chart_ready(env: Env, daemonsets: dict[str, str], timeout_s: float) -> None:
    def all_ready() -> bool:
        for kind, names in (("daemonset", daemonsets), ("deployment", DEPLOYMENTS)):
            for name in names:
                pods = env.workload_pods(kind, name)
                if len(pods) != 1 or not _ready(pods[0]):
                    return False
        return True

    try:
        wait_for(all_ready, timeout_s=timeout_s, what="every chart pod Ready on the real node")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_describe(env)}") from None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    timings: dict[str, float] = {}
    state_dir = tmp_path_factory.mktemp("rn-e2e") / "cluster"
    try:
        with real_node_cluster(state_dir, SERVICE_IMAGES, timings) as base:
            guard = ForbiddenGuard(
                ClusterTarget(base.cluster.kubeconfig, base.cluster.bin_dir, NAMESPACE),
                kubelet_logs=[base.node.layout.root / "logs" / "kubelet.log"],
            )
            env = Env(base.cluster, base.node, base.host_before, base.operator, guard, timings)
            t0 = time.monotonic()
            _wait_chart_ready(env, DAEMONSETS, timeout_s=240)
            timings["helm install -> every chart pod Ready"] = (
                timings.pop("helm install") + time.monotonic() - t0
            )
            guard.reset()
            yield env
    finally:
        print("real-node e2e timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))


# ----------------------------------------------------------------------------- helpers


def gpu_pod(
    name: str,
    *,
    gpus: int = 0,
    claim_template: str = "",
    wait_for_file: bool = False,
) -> dict[str, Any]:
    """A pod of the test image pinned to the real node; its log is its env + ``nvidia-smi -L``."""
    container: dict[str, Any] = {
        "name": "main",
        "image": TEST_IMAGE,
        "imagePullPolicy": "Never",
        "command": [
            "/bin/bash",
            "-c",
            "echo NVIDIA_VISIBLE_DEVICES=${NVIDIA_VISIBLE_DEVICES:-}; nvidia-smi -L; "
            f"echo {SMI_DONE}; exec sleep infinity",
        ],
        "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
    }
    spec: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/hostname": NODE},
        "terminationGracePeriodSeconds": 1,
        "containers": [container],
    }
    if gpus:
        container["resources"]["limits"][GPU] = str(gpus)
    if claim_template:
        # The seed README's pod: container `main` uses claim `gpu` of template `gpu-claim`.
        spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": claim_template}]
        container["resources"]["claims"] = [{"name": "gpu"}]
    if wait_for_file:
        # Holds the pod between the kubelet's resource preparation and the main container.
        spec["initContainers"] = [
            {
                "name": "hold",
                "image": TEST_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/bash", "-c", "until [ -e /tmp/go ]; do sleep 0.1; done"],
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": WORK},
        "spec": spec,
    }


def smi_uuids(text: str) -> list[str]:
    """UUIDs of the ``nvidia-smi -L`` lines in ``text`` (other lines ignored)."""
    return [m[3] for line in text.splitlines() if (m := SMI_LINE.match(line.strip()))]


def start_log(env: Env, pod: str) -> str:
    """What the pod's main container printed at its start (env, ``nvidia-smi -L``)."""

    def done() -> str | None:
        log = env.kubectl("logs", "-n", WORK, pod, "-c", "main")
        return log if SMI_DONE in log else None

    return wait_for(done, timeout_s=60, what=f"nvidia-smi -L at the start of {pod}")


def exec_smi(env: Env, pod: str) -> list[str]:
    out = env.kubectl("exec", "-n", WORK, pod, "-c", "main", "--", "nvidia-smi", "-L")
    uuids = smi_uuids(out)
    assert len(uuids) == len(out.strip().splitlines()), f"unexpected nvidia-smi -L output: {out}"
    return uuids


def exec_smi_once_served(env: Env, pod: str) -> list[str]:
    """exec_smi after a kubelet restart: the new kubelet answers exec with "pod does not exist"
    until its config source has handed it the node's pods (the Node's status, unchanged by the
    restart, says nothing about that), so retry that answer only."""

    def served() -> list[str] | None:
        try:
            return exec_smi(env, pod)
        except AssertionError as exc:
            if "pod does not exist" in str(exc):
                return None
            raise

    return list(wait_for(served, timeout_s=30, what=f"the restarted kubelet serving {pod}"))


def wait_pod_ready(
    env: Env, name: str, namespace: str = WORK, timeout_s: float = 90
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body = env.get("pod", name, namespace)
        return body if _ready(body) else None

    try:
        return wait_for(probe, timeout_s=timeout_s, what=f"pod {namespace}/{name} Ready")
    except AssertionError as exc:
        events = env.kubectl(
            "get", "events", "-n", namespace, "--field-selector",
            f"involvedObject.name={name}", check=False,
        )  # fmt: skip
        raise AssertionError(f"{exc}\n{events}") from None


def kubelet_allocations(env: Env) -> dict[str, list[str]]:
    """``<namespace>/<pod>`` -> nvidia.com/gpu device IDs, from the kubelet's pod-resources API."""
    sock = env.host_path(podres.POD_RESOURCES_SOCKET)
    # The host path is too long for a unix socket address (108 bytes): go through a symlink.
    with tempfile.TemporaryDirectory(prefix="fgo-pr") as tmp:
        link = Path(tmp) / "s"
        link.symlink_to(sock)
        with grpc.insecure_channel(f"unix:{link}") as channel:
            stub = podres.pb2_grpc.PodResourcesListerStub(channel)
            resp = stub.List(podres.pb2.ListPodResourcesRequest(), timeout=10)
    out: dict[str, list[str]] = {}
    for pod in resp.pod_resources:
        ids = [
            i
            for c in pod.containers
            for d in c.devices
            if d.resource_name == GPU
            for i in d.device_ids
        ]
        if ids:
            out[f"{pod.namespace}/{pod.name}"] = sorted(ids)
    return out


def holders(env: Env) -> dict[str, list[str]]:
    return {
        g.id: sorted(f"{h.namespace}/{h.pod}" for h in g.status.holders) for g in env.record().gpus
    }


def scrape(pod: dict[str, Any], port: int) -> str:
    """/metrics of a pod on the node, from the host (pod IPs are routed to the node)."""
    url = f"http://{pod['status']['podIP']}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def the_pod(env: Env, kind: str, name: str) -> dict[str, Any]:
    pods = env.workload_pods(kind, name)
    assert len(pods) == 1, f"{kind} {name}: {len(pods)} pods"
    return pods[0]


def registrations(env: Env) -> float:
    """Successful Register calls of the running device-plugin pod (its own metrics)."""
    metrics = scrape(the_pod(env, "daemonset", "fgo-device-plugin"), 8080)
    return sum(
        s.value
        for s in samples(metrics, "fgo_device_plugin_registrations_total")
        if s.labels.get("resource") == GPU and s.labels.get("result") == "ok"
    )


def node_gpus(env: Env) -> tuple[str | None, str | None]:
    status = env.get("node", NODE)["status"]
    return status.get("capacity", {}).get(GPU), status.get("allocatable", {}).get(GPU)


# ----------------------------------------------------------------------------- 1. pods


def check_chart_pods(env: Env, daemonsets: dict[str, str]) -> list[str]:
    """Each DaemonSet's and Deployment's one pod: on the real node, Ready, under its
    ServiceAccount, in containerd containers with an address of the node's pod network.
    Returns the images they run."""
    record = env.node.record
    assert record is not None
    pod_net = record.pod_cidr.rsplit(".", 1)[0] + "."
    seen = []
    for kind, accounts in (("daemonset", daemonsets), ("deployment", DEPLOYMENTS)):
        for name, account in accounts.items():
            pod = the_pod(env, kind, name)
            where = f"{kind} {name}: pod {pod['metadata']['name']}"
            assert pod["spec"]["nodeName"] == NODE, where
            assert pod["spec"]["serviceAccountName"] == account, where
            assert _ready(pod), where
            statuses = pod["status"]["containerStatuses"] + pod["status"].get(
                "initContainerStatuses", []
            )
            assert all(s["containerID"].startswith("containerd://") for s in statuses), where
            assert all(s["imageID"] for s in statuses), where
            assert pod["status"]["podIP"].startswith(pod_net), where
            # The ServiceAccount token is mounted (projected), as the services authenticate.
            projected = [
                src["serviceAccountToken"]
                for v in pod["spec"]["volumes"]
                for src in v.get("projected", {}).get("sources", [])
                if "serviceAccountToken" in src
            ]
            assert projected, where
            seen.append(pod["spec"]["containers"][0]["image"])
        workloads = env.get(kind + "s", namespace=NAMESPACE)["items"]
        assert {w["metadata"]["name"] for w in workloads} == set(accounts), kind
    return seen


def test_every_chart_pod_runs_on_the_real_node_ready_under_its_service_account(env: Env) -> None:
    node = env.get("node", NODE)
    assert "kwok.x-k8s.io/node" not in (node["metadata"].get("annotations") or {})
    assert node["metadata"]["labels"][POOL_LABEL] == "default"
    images = check_chart_pods(env, DAEMONSETS)
    # The dra-plugin image runs in the DRA phase (test_dra_*).
    assert set(images) == set(SERVICE_IMAGES) - {DRA_IMAGE}
    print("real-node e2e timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in env.timings.items()))


# ----------------------------------------------------------------------------- 2. device plugin


def test_device_plugin_registers_and_the_node_shows_two_gpus(env: Env) -> None:
    assert wait_for(lambda: node_gpus(env) == ("2", "2"), timeout_s=60, what=f"{GPU} 2/2 on {NODE}")
    assert registrations(env) >= 1
    sockets = {p.name for p in env.host_path("/var/lib/kubelet/device-plugins").iterdir()}
    assert "kubelet.sock" in sockets and len(sockets - {"kubelet.sock"}) >= 1, sockets
    # The kubelet's own account of it.
    assert "nvidia.com/gpu" in env.node.layout.log("kubelet").read_text(errors="replace")


def _check_gpu_pod(env: Env, name: str) -> str:
    """The pod's one GPU, the same in every place that names it; returns its UUID."""
    wait_pod_ready(env, name)
    allocated = wait_for(
        lambda: kubelet_allocations(env).get(f"{WORK}/{name}"),
        timeout_s=30,
        what=f"the kubelet's allocation for {name}",
    )
    assert len(allocated) == 1, allocated
    uuid = allocated[0]
    # nvidia-smi in the container (the device plugin's mounted bundle): exactly that GPU, both
    # at the container's start (its log) and now (kubectl exec).
    log = start_log(env, name)
    assert f"NVIDIA_VISIBLE_DEVICES={uuid}" in log.splitlines(), log
    assert smi_uuids(log) == [uuid], log
    assert exec_smi(env, name) == [uuid]
    # The device plugin's pod annotation, the record, the node exporter's series.
    annotation = wait_for(
        lambda: (
            env.get("pod", name, WORK)["metadata"].get("annotations", {}).get(ALLOCATED_DEVICES)
        ),
        timeout_s=30,
        what=f"{ALLOCATED_DEVICES} on {name}",
    )
    assert parse_allocated_devices(annotation) == {GPU: [uuid]}
    wait_for(
        lambda: holders(env).get(uuid) == [f"{WORK}/{name}"],
        timeout_s=30,
        what=f"the record showing {name} on {uuid}",
    )
    exporter = the_pod(env, "daemonset", "nvidia-dcgm-exporter")

    def series() -> list[str] | None:
        found = [
            s.labels["UUID"]
            for s in samples(scrape(exporter, 9400), "DCGM_FI_DEV_GPU_UTIL")
            if s.labels.get("pod") == name and s.labels.get("namespace") == WORK
        ]
        return found or None

    assert wait_for(series, timeout_s=30, what=f"exporter series of {name}") == [uuid]
    return uuid


def test_gpu_pod_sees_exactly_the_gpu_the_kubelet_allocated(env: Env) -> None:
    env.apply(gpu_pod("gpu-1", gpus=1))
    uuid = _check_gpu_pod(env, "gpu-1")
    assert uuid in {g.id for g in env.record().gpus}


def test_second_pod_gets_the_other_gpu_and_a_third_stays_pending(env: Env) -> None:
    env.apply(gpu_pod("gpu-2", gpus=1))
    second = _check_gpu_pod(env, "gpu-2")
    first = exec_smi(env, "gpu-1")[0]
    assert {first, second} == {g.id for g in env.record().gpus}
    env.apply(gpu_pod("gpu-3", gpus=1))

    def insufficient() -> str | None:
        events = env.get("events", namespace=WORK)["items"]
        for e in events:
            if e["involvedObject"]["name"] == "gpu-3" and e["reason"] == "FailedScheduling":
                return str(e["message"])
        return None

    message = wait_for(insufficient, timeout_s=30, what="FailedScheduling of gpu-3")
    assert f"Insufficient {GPU}" in message, message
    pod = env.get("pod", "gpu-3", WORK)
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


# ----------------------------------------------------------------------------- 3. restarts


def _container_ids(env: Env, *names: str) -> dict[str, str]:
    return {
        n: env.get("pod", n, WORK)["status"]["containerStatuses"][0]["containerID"] for n in names
    }


def test_kubelet_restart_device_plugin_registers_again_pods_keep_their_gpus(env: Env) -> None:
    before = {n: exec_smi(env, n) for n in ("gpu-1", "gpu-2")}
    containers = _container_ids(env, "gpu-1", "gpu-2")
    count = registrations(env)
    asyncio.run(env.node.restart("kubelet"))
    wait_for(
        lambda: registrations(env) > count,
        timeout_s=60,
        what="the device plugin registering with the new kubelet",
    )
    assert wait_for(
        lambda: node_gpus(env) == ("2", "2"), timeout_s=60, what=f"{GPU} 2/2 after the restart"
    )
    assert {n: exec_smi_once_served(env, n) for n in before} == before
    assert _container_ids(env, "gpu-1", "gpu-2") == containers  # not restarted
    assert kubelet_allocations(env) == {f"{WORK}/{n}": u for n, u in before.items()}
    assert env.get("pod", "gpu-3", WORK)["status"]["phase"] == "Pending"


def test_device_plugin_pod_recreated_allocations_survive(env: Env) -> None:
    before = {n: exec_smi(env, n) for n in ("gpu-1", "gpu-2")}
    old = the_pod(env, "daemonset", "fgo-device-plugin")
    env.kubectl("delete", "pod", "-n", NAMESPACE, old["metadata"]["name"], "--wait=false")

    def recreated() -> dict[str, Any] | None:
        pods = env.workload_pods("daemonset", "fgo-device-plugin")
        fresh = [p for p in pods if p["metadata"]["uid"] != old["metadata"]["uid"]]
        return fresh[0] if len(pods) == 1 and fresh and _ready(fresh[0]) else None

    new = wait_for(recreated, timeout_s=90, what="the DaemonSet's new device-plugin pod Ready")
    assert new["spec"]["nodeName"] == NODE
    assert registrations(env) >= 1
    assert {n: exec_smi(env, n) for n in before} == before
    assert kubelet_allocations(env) == {f"{WORK}/{n}": u for n, u in before.items()}
    for name, uuids in before.items():
        annotations = env.get("pod", name, WORK)["metadata"]["annotations"]
        assert parse_allocated_devices(annotations[ALLOCATED_DEVICES]) == {GPU: uuids}
        assert holders(env)[uuids[0]] == [f"{WORK}/{name}"]
    # The new plugin allocates: the GPU gpu-2 frees goes to the pending gpu-3, and only it.
    env.kubectl("delete", "pod", "-n", WORK, "gpu-2", "--wait=true", "--timeout=60s")
    assert _check_gpu_pod(env, "gpu-3") == before["gpu-2"][0]
    assert exec_smi(env, "gpu-1") == before["gpu-1"]


TIME_SLICING_PHASE = [
    "devicePlugin.config.default=ts2",
    "devicePlugin.config.configs.ts2.version=v1",
    "devicePlugin.config.configs.ts2.sharing.timeSlicing.resources[0].name=nvidia.com/gpu",
    "devicePlugin.config.configs.ts2.sharing.timeSlicing.resources[0].replicas=2",
]


def test_time_slicing_replicas_through_the_real_kubelet(env: Env) -> None:
    """docs/sharing.md on the kubelet path: a device-plugin config with 2 replicas makes the
    plugin advertise 4 replica IDs (`<uuid>::<n>`), the kubelet allocates replica IDs to new
    pods while gpu-1 and gpu-3 keep their GPUs, and Allocate maps each replica ID to its GPU's
    UUID in the container; back to unshared afterwards."""
    before = kubelet_allocations(env)
    asyncio.run(env.operator.install([VALUES], TIME_SLICING_PHASE))
    assert wait_for(
        lambda: node_gpus(env) == ("4", "4"), timeout_s=90, what=f"{GPU} 4/4 (2 GPUs x 2)"
    )
    for name in ("ts-1", "ts-2"):
        env.apply(gpu_pod(name, gpus=1))
    for name in ("ts-1", "ts-2"):
        wait_pod_ready(env, name)
    allocations = kubelet_allocations(env)
    assert {k: v for k, v in allocations.items() if k in before} == before
    gpus = {g.id for g in env.record().gpus}
    for name in ("ts-1", "ts-2"):
        (replica,) = allocations[f"{WORK}/{name}"]
        uuid, sep, n = replica.partition("::")
        assert sep and uuid in gpus and n in ("0", "1"), replica
        assert exec_smi(env, name) == [uuid], (name, replica)
        env_out = env.kubectl("exec", "-n", WORK, name, "-c", "main", "--", "env")
        assert f"NVIDIA_VISIBLE_DEVICES={uuid}" in env_out.splitlines()
    record = env.record()
    assert record.sharing is not None and record.sharing.strategy == "time-slicing"
    holders_now = holders(env)
    for name in ("ts-1", "ts-2"):
        assert any(f"{WORK}/{name}" in pods for pods in holders_now.values()), holders_now
    for name in ("ts-1", "ts-2"):
        env.kubectl("delete", "pod", "-n", WORK, name, "--wait=true", "--timeout=60s")
    _nvml_pod_sees_its_gpu(env, gpus)
    asyncio.run(env.operator.install([VALUES]))
    assert wait_for(
        lambda: node_gpus(env) == ("2", "2"), timeout_s=90, what=f"{GPU} 2/2 again (unshared)"
    )
    assert kubelet_allocations(env) == before


# NVML's C API through ctypes (the test image has no Python; a service image has, without
# nvidia-ml-py): what every NVML binding does underneath, with nvml.h's struct layout.
NVML_PROBE = """
import ctypes, json, subprocess
nvml = ctypes.CDLL("libnvidia-ml.so.1")
class Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                ("used", ctypes.c_ulonglong)]
def check(rc):
    if rc != 0:
        raise SystemExit(f"NVML error {rc}: {nvml.nvmlErrorString(rc)}")
nvml.nvmlErrorString.restype = ctypes.c_char_p
check(nvml.nvmlInit_v2())
count = ctypes.c_uint()
check(nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)))
text = ctypes.create_string_buffer(96)
check(nvml.nvmlSystemGetDriverVersion(text, 96))
out = {"driver": text.value.decode(), "gpus": []}
for i in range(count.value):
    handle = ctypes.c_void_p()
    check(nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)))
    check(nvml.nvmlDeviceGetUUID(handle, text, 96))
    uuid = text.value.decode()
    check(nvml.nvmlDeviceGetName(handle, text, 96))
    memory = Memory()
    check(nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)))
    out["gpus"].append({"uuid": uuid, "name": text.value.decode(), "total": memory.total})
check(nvml.nvmlShutdown())
out["smi"] = subprocess.run(["nvidia-smi", "--query-gpu=uuid,name,memory.total,driver_version",
                             "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
print(json.dumps(out))
"""


def _nvml_pod_sees_its_gpu(env: Env, gpus: set[str]) -> None:
    """docs/nvml.md on the kubelet path: a process in a GPU pod loads the libnvidia-ml.so.1 that
    Allocate mounted and sees exactly the pod's GPU, with the name, memory and driver the fake
    nvidia-smi in the same container prints."""
    pod = gpu_pod("nvml-probe", gpus=1)
    pod["spec"]["restartPolicy"] = "Never"
    container = pod["spec"]["containers"][0]
    container["image"] = "ghcr.io/fake-gpu-operator/status-updater:0.1.0"
    container["command"] = ["python", "-c", NVML_PROBE]
    env.apply(pod)

    def finished() -> str | None:
        phase = env.get("pod", "nvml-probe", WORK).get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return str(env.kubectl("logs", "-n", WORK, "nvml-probe"))
        return None

    log = wait_for(finished, timeout_s=90, what="the NVML probe pod finishing")
    annotations = env.get("pod", "nvml-probe", WORK)["metadata"]["annotations"]
    (replica,) = parse_allocated_devices(annotations[ALLOCATED_DEVICES])[GPU]
    uuid = replica.partition("::")[0]  # the device ID the kubelet allocated: <uuid>::<n>
    assert uuid in gpus, replica
    seen = json.loads(log.strip().splitlines()[-1])
    assert [g["uuid"] for g in seen["gpus"]] == [uuid], log
    # The same GPU, name, memory and driver as the fake nvidia-smi in the same container.
    smi_uuid, name, total_mib, driver = seen["smi"].strip().split(", ")
    assert (smi_uuid, seen["gpus"][0]["name"], seen["driver"]) == (uuid, name, driver), log
    assert seen["gpus"][0]["total"] == int(total_mib) << 20, log
    env.kubectl("delete", "pod", "-n", WORK, "nvml-probe", "--wait=true", "--timeout=60s")


def test_kubectl_logs_and_exec_on_the_node(env: Env) -> None:
    """Through the apiserver to the kubelet's API (serving certificate from the cluster CA)."""
    dp = the_pod(env, "daemonset", "fgo-device-plugin")
    assert env.kubectl("logs", "-n", NAMESPACE, dp["metadata"]["name"], "-c", "device-plugin")
    assert env.kubectl("logs", "-n", NAMESPACE, dp["metadata"]["name"], "-c", "install-nvidia-smi")
    out = env.kubectl("exec", "-n", WORK, "gpu-1", "--", "/bin/bash", "-c", "hostname; echo ok")
    assert out.split() == ["gpu-1", "ok"]


# ----------------------------------------------------------------------------- 4. DRA


def test_dra_plugin_runs_registers_and_publishes_the_node_slice(env: Env) -> None:
    # The device-plugin path lets go of the node first (see the module docstring).
    env.kubectl("delete", "pod", "-n", WORK, "gpu-1", "gpu-3", "--wait=true", "--timeout=60s")
    wait_for(lambda: not any(holders(env).values()), timeout_s=30, what="no GPU held in the record")
    started = time.monotonic()
    asyncio.run(env.operator.install([VALUES], DRA_PHASE))
    _wait_chart_ready(env, DRA_DAEMONSETS, timeout_s=120)
    env.timings["helm upgrade to the DRA path -> Ready"] = time.monotonic() - started
    assert DRA_IMAGE in check_chart_pods(env, DRA_DAEMONSETS)
    dra = the_pod(env, "daemonset", "fgo-dra-plugin")
    wait_for(
        lambda: (
            "kubelet.registered"
            in env.kubectl("logs", "-n", NAMESPACE, dra["metadata"]["name"], "-c", "plugin")
        ),
        timeout_s=60,
        what="the DRA plugin registered with the kubelet",
    )
    registry = env.host_path("/var/lib/kubelet/plugins_registry")
    assert any(p.name.startswith("gpu.nvidia.com") for p in registry.iterdir())

    def node_slice() -> list[dict[str, Any]] | None:
        found = [
            s
            for s in env.get("resourceslices")["items"]
            if s["spec"].get("nodeName") == NODE and s["spec"]["driver"] == "gpu.nvidia.com"
        ]
        return found or None

    slices = wait_for(node_slice, timeout_s=60, what=f"the ResourceSlice of {NODE}")
    assert len(slices) == 1, slices
    uuids = {
        d["attributes"]["uuid"]["string"]
        for d in slices[0]["spec"]["devices"]
        if "uuid" in d.get("attributes", {})
    }
    assert uuids == {g.id for g in env.record().gpus}


def _claim_uuid(env: Env, pod_name: str) -> tuple[str, str]:
    """(claim UID, GPU UUID) of the pod's allocated claim."""
    pod = env.get("pod", pod_name, WORK)
    claim_name = pod["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
    claim = env.get("resourceclaim", claim_name, WORK)
    result = claim["status"]["allocation"]["devices"]["results"][0]
    assert result["driver"] == "gpu.nvidia.com"
    slices = env.get("resourceslices")["items"]
    for s in slices:
        if s["spec"].get("nodeName") == NODE and s["spec"]["pool"]["name"] == result["pool"]:
            for d in s["spec"]["devices"]:
                if d["name"] == result["device"]:
                    return claim["metadata"]["uid"], str(d["attributes"]["uuid"]["string"])
    raise AssertionError(f"device {result} not in the node's slices")


def test_dra_pod_starts_with_the_cdi_injected_gpu_after_a_plugin_restart(env: Env) -> None:
    """The seed README's ResourceClaimTemplate; the DRA plugin restarts after the kubelet
    prepared the claim (init container running) and before the main container starts."""
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "gpu-claim", "namespace": WORK},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]
                }
            }
        },
    }
    env.apply(template, gpu_pod("gpu-pod", claim_template="gpu-claim", wait_for_file=True))

    def holding() -> bool:
        status = env.get("pod", "gpu-pod", WORK)["status"]
        init = status.get("initContainerStatuses", [])
        return bool(init) and "running" in init[0]["state"]

    wait_for(holding, timeout_s=90, what="gpu-pod's init container running (claim prepared)")
    claim_uid, uuid = _claim_uuid(env, "gpu-pod")
    cdi = env.host_path("/var/run/cdi")
    spec_files = [p for p in cdi.iterdir() if claim_uid in p.name]
    assert len(spec_files) == 1, sorted(p.name for p in cdi.iterdir())
    spec = json.loads(spec_files[0].read_text())

    old = the_pod(env, "daemonset", "fgo-dra-plugin")
    env.kubectl("delete", "pod", "-n", NAMESPACE, old["metadata"]["name"], "--wait=false")

    def restarted() -> dict[str, Any] | None:
        pods = env.workload_pods("daemonset", "fgo-dra-plugin")
        fresh = [p for p in pods if p["metadata"]["uid"] != old["metadata"]["uid"]]
        return fresh[0] if len(pods) == 1 and fresh and _ready(fresh[0]) else None

    new = wait_for(restarted, timeout_s=90, what="the DaemonSet's new DRA plugin pod Ready")
    wait_for(
        lambda: (
            "kubelet.registered"
            in env.kubectl("logs", "-n", NAMESPACE, new["metadata"]["name"], "-c", "plugin")
        ),
        timeout_s=60,
        what="the new DRA plugin registered with the kubelet",
    )
    assert spec_files[0].exists(), "the restarted plugin removed the prepared claim's CDI spec"

    env.kubectl("exec", "-n", WORK, "gpu-pod", "-c", "hold", "--", "touch", "/tmp/go")
    wait_pod_ready(env, "gpu-pod")
    log = start_log(env, "gpu-pod")
    assert f"NVIDIA_VISIBLE_DEVICES={uuid}" in log.splitlines(), log
    assert smi_uuids(log) == [uuid], log
    assert exec_smi(env, "gpu-pod") == [uuid]
    # Every mount the CDI spec asks for is a mount in the container; its env is set.
    mounts = [
        m["containerPath"]
        for edits in [spec.get("containerEdits", {})]
        + [d.get("containerEdits", {}) for d in spec.get("devices", [])]
        for m in edits.get("mounts", [])
    ]
    assert mounts
    mountinfo = env.kubectl(
        "exec", "-n", WORK, "gpu-pod", "-c", "main", "--", "cat", "/proc/self/mountinfo"
    )
    targets = {line.split()[4] for line in mountinfo.splitlines()}
    # Resolved as runc resolves them: /bin/nvidia-smi is /usr/bin/nvidia-smi in an image with a
    # merged /usr (this one), a mount of its own in one without.
    resolved = env.kubectl(
        "exec", "-n", WORK, "gpu-pod", "-c", "main", "--", "readlink", "-f", *mounts
    ).split()
    assert set(resolved) <= targets, (mounts, resolved, targets)
    # The reference's path works too (issue 18).
    bin_smi = env.kubectl(
        "exec", "-n", WORK, "gpu-pod", "-c", "main", "--", "/bin/nvidia-smi", "-L"
    )
    assert uuid in bin_smi, bin_smi
    env_out = env.kubectl("exec", "-n", WORK, "gpu-pod", "-c", "main", "--", "env")
    assert f"NVIDIA_VISIBLE_DEVICES={uuid}" in env_out.splitlines()
    assert f"NODE_NAME={NODE}" in env_out.splitlines()
    wait_for(
        lambda: holders(env).get(uuid) == [f"{WORK}/gpu-pod"],
        timeout_s=30,
        what="the record showing gpu-pod on its claimed GPU",
    )


def _sharing_template(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": WORK},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}],
                    "config": [{"opaque": {"driver": "gpu.nvidia.com", "parameters": parameters}}],
                }
            }
        },
    }


def _sharing_pod(name: str, template: str, containers: tuple[str, ...]) -> dict[str, Any]:
    """Containers that share one claim of ``template`` and print their env, then sleep."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": WORK},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": NODE},
            "terminationGracePeriodSeconds": 1,
            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": template}],
            "containers": [
                {
                    "name": c,
                    "image": TEST_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/bash", "-c", "env; exec sleep infinity"],
                    "resources": {
                        "limits": {"cpu": "50m", "memory": "32Mi"},
                        "claims": [{"name": "gpu"}],
                    },
                }
                for c in containers
            ],
        },
    }


def _delete_and_wait(env: Env, pod: str) -> None:
    env.kubectl("delete", "pod", "-n", WORK, pod, "--wait=true", "--timeout=60s")


def test_sharing_configs_reach_the_containers_through_containerd(env: Env) -> None:
    """docs/sharing.md on the real path: the scheduler copies the template's opaque config into
    the allocation, the kubelet calls our plugin, containerd applies the CDI edits. The
    reference's TimeSlicing scenario (two containers sharing one claim), NVIDIA's MPS (pipe
    directory mounted), and an invalid interval (the pod's events carry the driver's message)."""
    example = {"apiVersion": "gpu.resource.example.com/v1alpha1", "kind": "GpuConfig"}
    nvidia = {"apiVersion": "resource.nvidia.com/v1beta1", "kind": "GpuConfig"}

    env.apply(
        _sharing_template("ts-claim", {**example, "sharing": {"strategy": "TimeSlicing"}}),
        _sharing_pod("ts-pod", "ts-claim", ("ctr0", "ctr1")),
    )
    wait_pod_ready(env, "ts-pod")
    for ctr in ("ctr0", "ctr1"):
        lines = env.kubectl("logs", "-n", WORK, "ts-pod", "-c", ctr).splitlines()
        device = next(
            line.split("=", 1)[1]
            for line in lines
            if line.startswith("GPU_DEVICE_") and "_SHARING_" not in line
            and "_TIMESLICE_" not in line
        )  # fmt: skip
        var = "GPU_DEVICE_" + re.sub(r"[^A-Za-z0-9_]", "_", device)
        assert f"{var}_SHARING_STRATEGY=TimeSlicing" in lines, (ctr, lines)
        assert f"{var}_TIMESLICE_INTERVAL=Default" in lines, (ctr, lines)
    _delete_and_wait(env, "ts-pod")

    mps = {
        **nvidia,
        "sharing": {"strategy": "MPS", "mpsConfig": {"defaultActiveThreadPercentage": 50}},
    }
    env.apply(_sharing_template("mps-claim", mps), _sharing_pod("mps-pod", "mps-claim", ("main",)))
    wait_pod_ready(env, "mps-pod")
    lines = env.kubectl("logs", "-n", WORK, "mps-pod", "-c", "main").splitlines()
    assert "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps" in lines, lines
    mountinfo = env.kubectl(
        "exec", "-n", WORK, "mps-pod", "-c", "main", "--", "cat", "/proc/self/mountinfo"
    )
    targets = {line.split()[4] for line in mountinfo.splitlines()}
    assert {"/tmp/nvidia-mps", "/dev/shm"} <= targets, sorted(targets)
    _delete_and_wait(env, "mps-pod")

    bad = {
        **nvidia,
        "sharing": {"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Eon"}},
    }
    env.apply(_sharing_template("bad-claim", bad), _sharing_pod("bad-pod", "bad-claim", ("main",)))

    def refused() -> str | None:
        events = env.kubectl(
            "get", "events", "-n", WORK, "--field-selector", "involvedObject.name=bad-pod",
            "-o", "jsonpath={.items[*].message}",
        )  # fmt: skip
        return events if "unknown time-slice interval: Eon" in events else None

    events = wait_for(refused, timeout_s=60, what="bad-pod's prepare error in its events")
    assert "error validating GPU config" in events, events
    assert not _ready(env.get("pod", "bad-pod", WORK))
    _delete_and_wait(env, "bad-pod")


# ----------------------------------------------------------------------------- 5, 6.


def test_no_service_was_refused_an_api_call(env: Env) -> None:
    problems = env.guard.new_forbidden()
    assert problems == [], problems


def test_cluster_down_leaves_nothing_behind(env: Env) -> None:
    traces = NodeTraces.of(env.node)
    try:
        assert traces.processes(), "node namespaces hold no process?"
        started = time.monotonic()
        env.cluster.stop_sync()
        env.timings["cluster down"] = time.monotonic() - started
        # Mounts, processes in the node's namespaces, cgroups, links, ip_forward, iptables
        # rules, and the host paths a kubelet/containerd that were not isolated would write.
        assert leftovers(traces, env.host_before) == []
    finally:
        traces.close()
