from __future__ import annotations

import socket
from importlib import resources
from pathlib import Path

import yaml
from fgo_localcluster.layout import ClusterRecord, Ports, choose_ports, port_is_free


def test_choose_ports_gives_distinct_free_ports() -> None:
    ports = choose_ports(Ports(), Ports())
    values = ports.values()
    assert len(values) == 6
    assert len(set(values)) == 6
    assert ports.unset() == []


def test_choose_ports_prefers_explicit_then_previous_free_ports() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert not port_is_free(taken)
        previous = choose_ports(Ports(), Ports())
        previous.scheduler = taken
        ports = choose_ports(Ports(apiserver=6443), previous)
        assert ports.apiserver == 6443
        assert ports.etcd_client == previous.etcd_client
        assert ports.scheduler != taken


def test_cluster_record_round_trips_and_tolerates_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    assert ClusterRecord.load(path) == ClusterRecord()
    record = ClusterRecord(Ports(1, 2, 3, 4, 5, 6), {"A": True}, "key")
    record.save(path)
    assert ClusterRecord.load(path) == record
    path.write_text("{not json")
    assert ClusterRecord.load(path) == ClusterRecord()


def test_kwok_stages_cover_the_node_and_pod_lifecycle() -> None:
    text = resources.files("fgo_localcluster").joinpath("kwok-stages.yaml").read_text()
    stages = [d for d in yaml.safe_load_all(text) if d]
    by_name = {s["metadata"]["name"]: s for s in stages}
    assert set(by_name) == {
        "node-initialize",
        "node-heartbeat",
        "pod-ready",
        "pod-complete",
        "pod-delete",
    }
    for stage in stages:
        assert stage["apiVersion"] == "kwok.x-k8s.io/v1alpha1"
        assert stage["kind"] == "Stage"
        assert stage["spec"]["resourceRef"]["apiGroup"] == "v1"
        assert stage["spec"]["selector"]["matchExpressions"]
    assert by_name["node-initialize"]["spec"]["resourceRef"]["kind"] == "Node"
    assert by_name["pod-delete"]["spec"]["next"] == {"delete": True}
    assert "phase: Running" in by_name["pod-ready"]["spec"]["next"]["statusTemplate"]
    assert "phase: Succeeded" in by_name["pod-complete"]["spec"]["next"]["statusTemplate"]


def test_fresh_ports_stay_out_of_the_ephemeral_range() -> None:
    from fgo_localcluster.layout import ephemeral_port_range, fresh_port

    low, high = ephemeral_port_range()
    ports = choose_ports(Ports(), Ports()).values()
    ports += [fresh_port() for _ in range(20)]
    assert all(not low <= p <= high for p in ports), (low, high, ports)
    taken = set(ports)
    assert fresh_port(taken) not in taken
