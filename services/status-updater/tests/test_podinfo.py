"""Effective extended-resource requests and DRA references read from pod JSON."""

from __future__ import annotations

import pytest
from fgo_status_updater.podinfo import (
    claim_container,
    claim_refs,
    effective_request,
    is_active,
    is_gpu_relevant,
    start_time,
)
from su_helpers import container, pod


def test_single_container() -> None:
    req = effective_request(pod("p", gpus=2), "nvidia.com/gpu")
    assert req.total == 2
    assert req.slots == (("main", 2),)


def test_multi_container_pods_sum_every_container() -> None:
    p = pod("p", containers=[container("a", 1), container("b"), container("c", 2)])
    req = effective_request(p, "nvidia.com/gpu")
    assert req.total == 3
    assert req.slots == (("a", 1), ("c", 2))


@pytest.mark.parametrize(
    ("init", "app", "total"),
    [
        ([3], [1], 3),  # the largest init container dominates
        ([1, 2], [4], 4),  # app containers dominate
        ([2], [0], 2),  # GPU only in an init container
        ([1, 1], [1, 1], 2),  # init containers run one at a time: max, not sum
    ],
)
def test_init_container_rule(init: list[int], app: list[int], total: int) -> None:
    p = pod(
        "p",
        containers=[container(f"app{i}", n) for i, n in enumerate(app)],
        init=[container(f"init{i}", n) for i, n in enumerate(init)],
    )
    req = effective_request(p, "nvidia.com/gpu")
    assert req.total == total
    assert sum(n for _, n in req.slots) == total


def test_surplus_of_init_container_is_labelled_with_it() -> None:
    p = pod("p", containers=[container("app", 1)], init=[container("warmup", 3)])
    assert effective_request(p, "nvidia.com/gpu").slots == (("app", 1), ("warmup", 2))


def test_sidecars_add_to_app_containers_and_to_later_init_containers() -> None:
    # KEP-753: a restartable init container keeps running next to everything after it.
    p = pod(
        "p",
        containers=[container("app", 1)],
        init=[container("side", 1, restartPolicy="Always"), container("setup", 2)],
    )
    req = effective_request(p, "nvidia.com/gpu")
    assert req.total == 3  # setup (2) runs while side (1) runs
    assert req.slots == (("app", 1), ("side", 1), ("setup", 1))


def test_requests_without_limits_and_other_resources() -> None:
    c = {"name": "x", "resources": {"requests": {"example.com/fpga": "2"}}}
    p = pod("p", containers=[c])
    assert effective_request(p, "example.com/fpga").total == 2
    assert effective_request(p, "nvidia.com/gpu").total == 0


def test_unreadable_quantities_count_as_zero() -> None:
    c = {"name": "x", "resources": {"limits": {"nvidia.com/gpu": "1.5"}}}
    assert effective_request(pod("p", containers=[c]), "nvidia.com/gpu").total == 0


def test_claim_refs_direct_and_from_template() -> None:
    p = pod("p", claims=[("gpu", "shared-claim")])
    p["spec"]["resourceClaims"].append({"name": "tmpl", "resourceClaimTemplateName": "t"})
    assert claim_refs(p) == [("gpu", "shared-claim")]
    p["status"]["resourceClaimStatuses"] = [{"name": "tmpl", "resourceClaimName": "p-tmpl-x1"}]
    assert claim_refs(p) == [("gpu", "shared-claim"), ("tmpl", "p-tmpl-x1")]


def test_claim_container_is_the_first_user() -> None:
    p = pod(
        "p",
        containers=[
            container("a"),
            {"name": "b", "resources": {"claims": [{"name": "gpu"}]}},
        ],
    )
    assert claim_container(p, "gpu") == "b"
    assert claim_container(p, "other") == "a"


def test_activity_and_relevance() -> None:
    assert is_active(pod("p", phase="Pending"))
    assert not is_active(pod("p", phase="Succeeded"))
    assert not is_active(pod("p", node_name=""))
    assert is_gpu_relevant(pod("p", gpus=1), "runai-reservation")
    assert not is_gpu_relevant(pod("p"), "runai-reservation")
    assert is_gpu_relevant(pod("p", namespace="runai-reservation"), "runai-reservation")
    assert is_gpu_relevant(pod("p", labels={"runai-gpu-group": "g"}), "runai-reservation")
    assert is_gpu_relevant(pod("p", claims=[("g", "c")]), "runai-reservation")


def test_start_time() -> None:
    assert start_time(pod("p", start="2026-11-28T10:00:00Z")) == 1795860000.0
    assert start_time(pod("p", phase="Pending")) == 0.0
