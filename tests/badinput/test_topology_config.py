"""Topology configs (``fgo_common.config``): every malformed document is refused with a
``ConfigError`` that says what is wrong (and where), never with another exception — the
status-updater keeps its last good config only for ConfigError; anything else escapes its
config watch and restarts it, on the same document, forever."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
import yaml
from badinput_counts import tried
from corpus import CONFIG_PATHS, CONFIG_TEXTS, nasty_values
from fgo_common.config import (
    ClusterConfig,
    ConfigError,
    load_cluster_config,
    parse_cluster_config,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SURFACE = "topology config: fgo_common.config"


@pytest.mark.parametrize(("name", "text"), CONFIG_TEXTS, ids=[n for n, _ in CONFIG_TEXTS])
def test_malformed_config_is_a_config_error(name: str, text: str) -> None:
    tried(SURFACE)
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_cluster_config(text)
    assert str(info.value).strip(), "an error without a message"
    # The message becomes an Event and a log line: it must not echo a 1 MiB value back.
    assert len(str(info.value)) < 4000, "the error repeats the whole document"
    # The status-updater parses on its event loop: a 1 MiB document must not stall it for
    # long (generous: pure-Python YAML on a loaded 2-core machine).
    assert time.monotonic() - start < 30


@pytest.mark.parametrize(("text", "path"), CONFIG_PATHS, ids=[p for _, p in CONFIG_PATHS])
def test_error_names_the_field(text: str, path: str) -> None:
    tried(SURFACE)
    with pytest.raises(ConfigError) as info:
        load_cluster_config(text)
    assert info.value.path == path
    assert str(info.value).startswith(path)


# Where the fuzzed values go: every field of every accepted shape.
_SEED_KEYS = ["gpus", "otherDevices", "resources", "numa", "mig", "driverVersion", "cudaVersion"]
_GPU_KEYS = ["type", "memory", "count", "profile"]


def _seed_pool(draw: st.DrawFn) -> dict[str, Any]:
    gpu: dict[str, Any] = {"type": "H100", "count": 2}
    for key in draw(st.lists(st.sampled_from([*_GPU_KEYS, "bogus"]), max_size=3)):
        gpu[key] = draw(nasty_values())
    pool: dict[str, Any] = {"gpus": [gpu]}
    for key in draw(st.lists(st.sampled_from(_SEED_KEYS), max_size=2)):
        pool[key] = draw(nasty_values())
    return pool


def _legacy_pool(draw: st.DrawFn) -> dict[str, Any]:
    pool: dict[str, Any] = {"gpuProduct": "Tesla-K80", "gpuCount": 2}
    for key in draw(st.lists(st.sampled_from(["gpuProduct", "gpuCount", "gpuMemory", "numa"]))):
        pool[key] = draw(nasty_values())
    return pool


_OVERRIDE_EXTRAS = ["devices", "pcie_topology", "nvlink", "infiniband", "version", "bogus"]


def _profile_pool(draw: st.DrawFn) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "device_count": draw(nasty_values()),
        "device_defaults": {
            "name": draw(nasty_values()),
            "memory": {"total_bytes": draw(nasty_values())},
            draw(st.sampled_from(["power", "fan", "colour"])): draw(nasty_values()),
        },
        "system": {
            "driver_version": draw(nasty_values()),
            draw(st.sampled_from(["cuda_version_major", "nvml_version"])): draw(nasty_values()),
        },
        # Per-device entries and the PCIe topology, with a nasty value somewhere inside.
        "devices": [
            {"index": 0, "pci": {"bus_id": draw(nasty_values())}, "minor_number": 0},
            {draw(st.sampled_from(["index", "uuid", "pci", "minor_number"])): draw(nasty_values())},
        ],
        "pcie_topology": {
            "root_complexes": [
                {"id": "rc0", "numa_node": draw(nasty_values()), "devices": ["0000:18:00.0"]},
                {"devices": draw(nasty_values())},
            ]
        },
    }
    for key in draw(st.lists(st.sampled_from(_OVERRIDE_EXTRAS), max_size=2)):
        overrides[key] = draw(nasty_values())
    gpu = {"profile": draw(st.one_of(st.just("h100"), nasty_values())), "overrides": overrides}
    return {"gpu": gpu, "resources": draw(st.one_of(st.none(), nasty_values()))}


@st.composite
def configs(draw: st.DrawFn) -> Any:
    shape = draw(st.sampled_from([_seed_pool, _legacy_pool, _profile_pool]))
    doc: dict[str, Any] = {"nodePools": {draw(st.text(min_size=1, max_size=8)): shape(draw)}}
    if draw(st.booleans()):
        doc[draw(st.sampled_from(["migStrategy", "nodePoolLabelKey", "gpuOperator"]))] = draw(
            nasty_values()
        )
    return draw(st.one_of(st.just(doc), nasty_values()))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_fuzzed_config_objects(doc: Any) -> None:
    tried(SURFACE)
    try:
        result = parse_cluster_config(doc)
    except ConfigError as exc:
        assert str(exc).strip()
        return
    assert isinstance(result, ClusterConfig)
    for pool in result.pools.values():
        assert 1 <= pool.gpu_count <= 64


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_fuzzed_config_text(doc: Any) -> None:
    """The same through YAML text, as the status-updater reads it from the ConfigMap."""
    tried(SURFACE)
    try:
        text = yaml.safe_dump(doc)
    except (yaml.YAMLError, ValueError, OverflowError):
        return  # not representable as YAML: nobody can put it in a ConfigMap
    with contextlib.suppress(ConfigError):
        load_cluster_config(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes(data: bytes) -> None:
    tried(SURFACE)
    with contextlib.suppress(ConfigError):
        load_cluster_config(data.decode("utf-8", errors="replace"))
