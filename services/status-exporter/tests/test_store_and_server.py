"""Topology ConfigMaps -> store -> /metrics, without a cluster."""

from __future__ import annotations

import gzip
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from exporter_builders import T0, hold, node
from fgo_common.names import DCGM_NAMES
from fgo_common.topology import NodeTopology
from fgo_status_exporter.dcgm import DcgmCollector, ExporterOptions, ServedNode
from fgo_status_exporter.server import TEXT_FORMAT, build_metrics_app
from fgo_status_exporter.store import TopologyStore, parse_configmap
from prometheus_client.parser import text_string_to_metric_families


def configmap(topology: NodeTopology, *, kwok_annotation: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": f"topology-{topology.node_name}",
        "namespace": "gpu-operator",
        "labels": {"node-topology": "true", "node-name": topology.node_name},
    }
    if kwok_annotation:
        meta["annotations"] = {"kwok.x-k8s.io/node": "fake"}
    return {"metadata": meta, "data": {"topology.yml": topology.to_yaml()}}


def test_parse_configmap_round_trip() -> None:
    topology = node("n1", "H100", 2)
    hold(topology, 0)
    parsed = parse_configmap(configmap(topology), "topology")
    assert parsed.node_name == "n1"
    assert parsed.kwok  # the record says so
    assert parsed.topology.to_dict() == topology.to_dict()


def test_node_name_from_configmap_name_when_unlabelled() -> None:
    topology = node("n1", "H100", 1, kwok=False)
    cm = configmap(topology)
    del cm["metadata"]["labels"]["node-name"]
    assert parse_configmap(cm, "topology").node_name == "n1"
    assert not parse_configmap(cm, "topology").kwok
    assert parse_configmap(configmap(topology, kwok_annotation=True), "topology").kwok


def test_store_filters_and_keeps_last_good_record() -> None:
    store = TopologyStore(accept=lambda p: p.kwok)
    changed: list[str] = []
    store.listeners.append(changed.append)
    store.apply("ns/topology-a", configmap(node("a", "H100", 1)), "topology")
    store.apply("ns/topology-b", configmap(node("b", "H100", 1, kwok=False)), "topology")
    assert set(store.nodes) == {"a"}
    broken = configmap(node("a", "H100", 1))
    broken["data"]["topology.yml"] = "gpus: [unclosed"
    store.apply("ns/topology-a", broken, "topology")
    assert set(store.nodes) == {"a"}  # a bad write does not blank the node
    # A node that stops being served is dropped (and its listeners told).
    store.apply("ns/topology-a", configmap(node("a", "H100", 1, kwok=False)), "topology")
    assert store.nodes == {}
    store.apply("ns/topology-b", configmap(node("b", "H100", 1)), "topology")
    store.delete("ns/topology-b")
    assert store.nodes == {}
    assert changed == ["a", "a", "b", "b"]


def test_store_reports_recreated_configmaps() -> None:
    store = TopologyStore(accept=lambda p: True)
    recreated: list[str] = []
    store.recreated.append(recreated.append)
    cm = configmap(node("a", "H100", 1))
    cm["metadata"]["uid"] = "uid-1"
    store.apply("ns/topology-a", cm, "topology")
    store.apply("ns/topology-a", cm, "topology")  # an update of the same object
    assert recreated == []
    cm["metadata"]["uid"] = "uid-2"  # deleted and created again between two reads
    store.apply("ns/topology-a", cm, "topology")
    assert recreated == ["a"]


@pytest.fixture
async def served() -> Any:
    store = TopologyStore(accept=lambda p: True)
    collector = DcgmCollector(ExporterOptions(names=DCGM_NAMES))

    def nodes() -> list[ServedNode]:
        return [ServedNode(t, name) for name, t in sorted(store.nodes.items())]

    server = TestServer(build_metrics_app(collector, nodes, clock=lambda: T0))
    await server.start_server()
    yield store, server
    await server.close()


async def _get(server: TestServer, **headers: str) -> tuple[str, dict[str, str], bytes]:
    headers.setdefault("Accept-Encoding", "identity")
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(server.make_url("/metrics"), headers=headers) as resp,
    ):
        assert resp.status == 200
        return resp.headers["Content-Type"], dict(resp.headers), await resp.read()


async def test_metrics_endpoint_plain_and_gzip(served: Any) -> None:
    store, server = served
    topology = node("n1", "H100", 2)
    hold(topology, 0)
    store.apply("ns/topology-n1", configmap(topology), "topology")
    content_type, _, plain = await _get(server, **{"Accept-Encoding": "identity"})
    assert content_type == TEXT_FORMAT.split(";")[0] or content_type.startswith("text/plain")
    _, headers, packed = await _get(server, **{"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip"
    assert gzip.decompress(packed) == plain
    families = {f.name for f in text_string_to_metric_families(plain.decode())}
    assert "DCGM_FI_DEV_GPU_UTIL" in families


async def test_series_of_a_gone_pod_or_node_vanish(served: Any) -> None:
    store, server = served
    topology = node("n1", "H100", 1)
    hold(topology, 0, pod="trainer-0")
    store.apply("ns/topology-n1", configmap(topology), "topology")
    _, _, body = await _get(server)
    assert b'pod="trainer-0"' in body
    # The status-updater drops the holder when the pod is deleted.
    store.apply("ns/topology-n1", configmap(node("n1", "H100", 1)), "topology")
    _, _, body = await _get(server)
    assert b"trainer-0" not in body
    assert b'UUID="' in body  # the GPU itself is still there, idle
    store.delete("ns/topology-n1")
    _, _, body = await _get(server)
    assert body == b""


def test_accepts_gzip() -> None:
    from fgo_status_exporter.server import accepts_gzip

    assert accepts_gzip("gzip")
    assert accepts_gzip("deflate, gzip;q=0.5")
    assert accepts_gzip("*")
    assert not accepts_gzip("")
    assert not accepts_gzip("identity")
    assert not accepts_gzip("gzip;q=0")
