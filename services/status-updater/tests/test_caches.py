"""What the pods watch keeps: GPU pods whole, every other pod as a stub that changes nothing."""

from __future__ import annotations

import copy

from fgo_common.kube.watch import ADDED, DELETED, MODIFIED, WatchEvent
from fgo_status_updater.caches import Caches, pod_view
from su_helpers import pod

RESERVATION = "runai-reservation"


def _caches() -> Caches:
    return Caches(RESERVATION, "topology-")


def test_gpu_pods_are_kept_whole_without_managed_fields() -> None:
    gpu_pod = pod("train", gpus=2)
    gpu_pod["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    expected = copy.deepcopy(gpu_pod)
    del expected["metadata"]["managedFields"]
    assert pod_view(RESERVATION, gpu_pod) == expected
    claim_pod = pod("dra", claims=[("gpu", "claim-1")])
    assert pod_view(RESERVATION, copy.deepcopy(claim_pod)) == claim_pod
    reservation = pod("reserve", namespace=RESERVATION)
    assert pod_view(RESERVATION, copy.deepcopy(reservation)) == reservation


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
