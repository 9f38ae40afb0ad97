"""Pool ``nvlinkDomain`` (multi-node NVLink cliques, docs/computedomains.md): parsing and its
refusals, the clique of a node, and the record field the GFD labeler reads."""

from __future__ import annotations

import uuid

import pytest
from fgo_common.computedomain import clique_of_node
from fgo_common.config import ConfigError, parse_cluster_config
from fgo_common.nodebuild import build_node_topology
from fgo_common.topology import NodeTopology

CLUSTER = "5c1ea0b1-0000-4000-8000-00000000c0de"


def _pool(block: object, form: str = "seed") -> dict[str, object]:
    if form == "seed":
        pool: dict[str, object] = {"gpus": [{"type": "gb200", "count": 4}]}
    elif form == "legacy":
        pool = {"gpuProduct": "NVIDIA GB200", "gpuCount": 4}
    else:
        pool = {"gpu": {"backend": "fake", "profile": "gb200", "overrides": {"device_count": 4}}}
    pool["nvlinkDomain"] = block
    return {"nodePools": {"nvl72": pool}}


@pytest.mark.parametrize("form", ["seed", "legacy", "profile"])
def test_every_pool_form_accepts_it(form: str) -> None:
    config = parse_cluster_config(_pool({"cliqueSize": 18, "clusterUUID": CLUSTER}, form))
    domain = config.pools["nvl72"].nvlink_domain
    assert domain is not None
    assert (domain.clique_size, domain.cluster_uuid) == (18, CLUSTER)


def test_cluster_uuid_defaults_to_one_derived_from_the_pool() -> None:
    first = parse_cluster_config(_pool({"cliqueSize": 18})).pools["nvl72"].nvlink_domain
    again = parse_cluster_config(_pool({"cliqueSize": 18})).pools["nvl72"].nvlink_domain
    assert first is not None and again is not None
    assert first.cluster_uuid == again.cluster_uuid
    assert str(uuid.UUID(first.cluster_uuid)) == first.cluster_uuid


def test_no_block_no_domain() -> None:
    config = parse_cluster_config({"nodePools": {"p": {"gpus": [{"type": "h100", "count": 8}]}}})
    assert config.pools["p"].nvlink_domain is None


@pytest.mark.parametrize(
    ("block", "path", "words"),
    [
        ({}, "nodePools.nvl72.nvlinkDomain.cliqueSize", "required"),
        ({"cliqueSize": 0}, "nodePools.nvl72.nvlinkDomain.cliqueSize", ""),
        ({"cliqueSize": 73}, "nodePools.nvl72.nvlinkDomain.cliqueSize", ""),
        ({"cliqueSize": "18"}, "nodePools.nvl72.nvlinkDomain.cliqueSize", ""),
        ({"cliqueSize": 18, "clusterUUID": "nope"}, "nodePools.nvl72.nvlinkDomain.clusterUUID",
         "not a UUID"),
        ({"cliqueSize": 18, "cliqueSzie": 2}, "nodePools.nvl72.nvlinkDomain", "cliqueSzie"),
        ([18], "nodePools.nvl72.nvlinkDomain", ""),
    ],
)  # fmt: skip
def test_refusals_name_the_path(block: object, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_cluster_config(_pool(block))
    assert str(err.value).startswith(path), str(err.value)
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("name", "size", "clique"),
    [
        ("gb200-node-1", 18, 0),
        ("gb200-node-18", 18, 0),
        ("gb200-node-19", 18, 1),
        ("gb200-node-36", 18, 1),
        ("gb200-node-0", 18, 0),
        ("rack3-tray07", 4, 1),
        ("no-number", 18, 0),
        ("n-5", 1, 4),
    ],
)
def test_clique_of_node(name: str, size: int, clique: int) -> None:
    assert clique_of_node(name, size) == clique


def test_record_carries_the_clique_and_round_trips() -> None:
    config = parse_cluster_config(_pool({"cliqueSize": 2, "clusterUUID": CLUSTER}))
    pool = config.pools["nvl72"]
    records = [build_node_topology(f"kwok-gb200-{i}", pool, config, kwok=True) for i in (1, 2, 3)]
    assert [r.nvlink_clique for r in records] == [f"{CLUSTER}.0", f"{CLUSTER}.0", f"{CLUSTER}.1"]
    again = NodeTopology.from_yaml(records[2].to_yaml(), "kwok-gb200-3")
    assert again.nvlink_clique == f"{CLUSTER}.1"
    # Pools without the block write no key (records stay byte-identical to before).
    plain = parse_cluster_config({"nodePools": {"p": {"gpus": [{"type": "h100", "count": 1}]}}})
    record = build_node_topology("n1", plain.pools["p"], plain, kwok=True)
    assert record.nvlink_clique == "" and "nvlinkClique" not in record.to_yaml()
