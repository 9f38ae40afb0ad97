"""What the pods watch keeps: GPU pods whole, every other pod as a stub that changes nothing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fgo_common.kube.watch import ADDED, DELETED, MODIFIED, WatchEvent
from fgo_status_updater.caches import Caches, _pod_signature, pod_view
from fgo_status_updater.podinfo import (
    annotations_of,
    claim_container,
    claim_refs,
    effective_request,
    is_active,
    is_gpu_relevant,
    labels_of,
    pod_key,
    pod_node,
    pod_uid,
    requested_resources,
    start_time,
)
from su_helpers import container, pod

RESERVATION = "runai-reservation"


def _caches() -> Caches:
    return Caches(RESERVATION, "topology-")


def _noisy(p: dict[str, Any]) -> dict[str, Any]:
    """What a real pod carries besides what the reconciler reads."""
    p["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {}}]
    p["spec"].update(
        volumes=[{"name": "data", "emptyDir": {}}],
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
        schedulerName="default-scheduler",
    )
    for c in p["spec"]["containers"]:
        c.update(env=[{"name": "A", "value": "1" * 200}], command=["sleep", "inf"])
    p["status"].update(
        conditions=[{"type": "Ready", "status": "True"}],
        containerStatuses=[{"name": "main", "ready": True}],
        podIP="10.0.0.7",
    )
    return p


def _pods() -> list[dict[str, Any]]:
    sidecar = container("log", 0, restartPolicy="Always")
    return [
        pod("train", gpus=2, annotations={"gpu-fraction": "0.5"}, labels={"app": "a"}),
        pod("multi", containers=[container("a", 1), container("b", 2)]),
        pod("init", init=[container("setup", 4), sidecar], containers=[container("m", 1)]),
        pod("dra", claims=[("gpu", "claim-1")]),
        pod("pending", gpus=1, phase="Pending"),
        pod("reserve", namespace=RESERVATION, labels={"runai-gpu-group": "g"}),
    ]


def _reading(p: dict[str, Any]) -> tuple[object, ...]:
    """Everything the reconciler's accessors read of a pod."""
    return (
        pod_key(p),
        pod_uid(p),
        pod_node(p),
        is_active(p),
        start_time(p),
        dict(annotations_of(p)),
        dict(labels_of(p)),
        sorted(requested_resources(p)),
        [effective_request(p, r) for r in sorted(requested_resources(p))],
        claim_refs(p),
        [claim_container(p, name) for name, _ in claim_refs(p)],
        is_gpu_relevant(p, RESERVATION),
        _pod_signature(p),
    )


@pytest.mark.parametrize("index", range(6))
def test_slim_gpu_pods_read_exactly_like_full_ones(index: int) -> None:
    full = _noisy(_pods()[index])
    slim = pod_view(RESERVATION, copy.deepcopy(full))
    assert _reading(slim) == _reading(full)
    assert "managedFields" not in slim["metadata"]
    assert "volumes" not in slim["spec"] and "conditions" not in slim["status"]
    assert all(set(c) <= {"name", "resources", "restartPolicy"} for c in slim["spec"]["containers"])


def test_other_pods_become_stubs_the_caches_ignore() -> None:
    web = pod("web", containers=[{"name": "c", "resources": {"limits": {"cpu": "2"}}}])
    stub = pod_view(RESERVATION, web)
    assert stub == {
        "metadata": {"name": "web", "namespace": "default", "uid": web["metadata"]["uid"]}
    }
    caches = _caches()
    assert caches.on_pod(WatchEvent(ADDED, stub)) == set()
    assert caches.pods_by_node == {} and caches.pod_node == {}


def test_a_gpu_pod_that_stops_being_one_is_forgotten() -> None:
    """The transform sees each event's full object, so a pod whose GPU request disappears
    (a replaced object, or a reservation pod moved out) arrives as a stub and is dropped."""
    caches = _caches()
    gpu_pod = pod("train", gpus=1, node_name="node-a")
    assert caches.on_pod(WatchEvent(ADDED, pod_view(RESERVATION, gpu_pod))) == {"node-a"}
    assert caches.pods_on("node-a")
    plain = pod("train", node_name="node-a", uid=gpu_pod["metadata"]["uid"])
    assert caches.on_pod(WatchEvent(MODIFIED, pod_view(RESERVATION, plain))) == {"node-a"}
    assert not caches.pods_on("node-a")
    assert caches.on_pod(WatchEvent(DELETED, pod_view(RESERVATION, plain))) == set()
