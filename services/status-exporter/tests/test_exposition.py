"""Golden tests of the dcgm-exporter text: names, HELP/TYPE lines, label set and order, values.

Values are pinned by the telemetry seed (0) and the scrape instant (exporter_builders.T0). After
an intended change, regenerate with ``FGO_UPDATE_GOLDEN=1 uv run pytest <this file>`` and review
the diff like code.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
from exporter_builders import T0, enable_mig, hold, hold_mig, node
from fgo_common.names import DCGM_EXPORTER, DCGM_NAMES
from fgo_common.topology import NodeTopology
from fgo_status_exporter.dcgm import (
    DcgmCollector,
    ExporterOptions,
    ServedNode,
    escape_label_value,
    reference_hostname,
)
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
REFERENCE = HERE / "data" / "reference-scrape-4.5.txt"

_LINE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)\{(?P<labels>.*)\} (?P<value>\S+)$")
_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_line(line: str) -> tuple[str, list[tuple[str, str]], str]:
    match = _LINE.match(line)
    assert match, f"not a sample line: {line!r}"
    pairs = _PAIR.findall(match["labels"])
    # The pairs must cover the whole label block (no stray text between them).
    assert ",".join(f'{k}="{v}"' for k, v in pairs) == match["labels"], line
    return match["name"], pairs, match["value"]


def scrape(topology: NodeTopology, options: ExporterOptions, hostname: str = "") -> str:
    served = ServedNode(topology, hostname or topology.node_name)
    return DcgmCollector(options).scrape_text([served], T0)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("FGO_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with FGO_UPDATE_GOLDEN=1"
    assert text == path.read_text()


def full_and_idle() -> NodeTopology:
    topology = node("gpu-node-1", "H100", 2)
    hold(topology, 0)  # ml/trainer-0/train at 100 %, 11731 MiB: the reference scrape's pod
    return topology


def mig_node() -> NodeTopology:
    topology = node("gpu-node-1", "H100", 2, mig_strategy="mixed")
    enable_mig(topology, 0, [("4g.40gb", 0), ("3g.40gb", 4)])
    hold_mig(topology, 0, 1, fb_mib=4096)
    return topology


def xid_node() -> NodeTopology:
    topology = node("gpu-node-1", "H100", 2)
    hold(topology, 1)
    topology.gpus[0].faults = [{"kind": "xid", "code": 79, "since": T0 - 60}]
    topology.gpus[1].faults = [
        {"kind": "ecc", "sbeVolatile": 3, "sbeAggregate": 12},
        {"kind": "pcieReplay", "count": 2},
    ]
    return topology


DEFAULT = ExporterOptions(names=DCGM_NAMES)

CASES = {
    "h100-full-and-idle.txt": (full_and_idle, DEFAULT),
    "h100-main-hostname.txt": (full_and_idle, ExporterOptions(names=DCGM_EXPORTER["main-d5e5f51"])),
    "h100-idle-empty-pod-labels.txt": (
        full_and_idle,
        ExporterOptions(names=DCGM_NAMES, idle_pod_labels=True, pod_uid_label=True),
    ),
    "h100-mig.txt": (mig_node, DEFAULT),
    "h100-xid-ecc.txt": (
        xid_node,
        ExporterOptions(
            names=DCGM_NAMES,
            extra_metrics=(
                "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
                "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
                "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
                "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
            ),
        ),
    ),
    "k80-idle.txt": (lambda: node("k80-node", "K80", 1), DEFAULT),
}


@pytest.mark.parametrize("golden", sorted(CASES))
def test_golden(golden: str) -> None:
    build, options = CASES[golden]
    text = scrape(build(), options)
    # Valid Prometheus text (the official parser accepts it, one family per HELP/TYPE pair).
    families = list(text_string_to_metric_families(text))
    assert families
    check_golden(golden, text)


def _reference_lines() -> list[str]:
    return [line for line in REFERENCE.read_text().splitlines() if line]


def test_help_and_type_lines_match_the_reference() -> None:
    ours = set(scrape(full_and_idle(), DEFAULT).splitlines())
    for line in _reference_lines():
        if line.startswith("# "):
            assert line in ours


def _variable(key: str) -> bool:
    # Identity values of the captured GPU (UUID, bus id) and its instantaneous power differ from
    # ours by construction; everything else must be equal.
    return key in ("UUID", "pci_bus_id")


def test_sample_lines_match_the_reference_shape() -> None:
    scenarios = [full_and_idle(), mig_node(), xid_node()]
    ours = [
        line
        for topology in scenarios
        for line in scrape(topology, DEFAULT).splitlines()
        if not line.startswith("#")
    ]
    parsed = [parse_line(line) for line in ours]
    for ref_line in _reference_lines():
        if ref_line.startswith("#"):
            continue
        name, ref_pairs, ref_value = parse_line(ref_line)
        keys = [k for k, _ in ref_pairs]
        candidates = [
            (pairs, value)
            for our_name, pairs, value in parsed
            if our_name == name and [k for k, _ in pairs] == keys
        ]
        assert candidates, f"no series of {name} with labels in order {keys}"
        fixed = [(k, v) for k, v in ref_pairs if not _variable(k)]
        matching = [
            (pairs, value)
            for pairs, value in candidates
            if [(k, v) for k, v in pairs if not _variable(k)] == fixed
        ]
        assert matching, f"no series of {name} with label values {fixed}"
        if name == "DCGM_FI_DEV_POWER_USAGE":
            # Same %f shape; a 700 W board at full load draws close to its limit.
            assert re.fullmatch(r"\d+\.\d{6}", matching[0][1])
            assert 650 <= float(matching[0][1]) <= 700
        else:
            assert any(value == ref_value for _, value in matching), (name, ref_value, matching)


def test_label_order_on_every_series() -> None:
    n = DCGM_NAMES
    identity = [n.gpu, n.uuid, n.pci_bus_id, n.device, n.model_name]
    for topology in (full_and_idle(), mig_node(), xid_node()):
        for line in scrape(topology, DEFAULT).splitlines():
            if line.startswith("#"):
                continue
            _, pairs, _ = parse_line(line)
            keys = [k for k, _ in pairs]
            assert keys[:5] == identity
            rest = keys[5:]
            if rest[0] == n.mig_profile:
                assert rest[:2] == [n.mig_profile, n.mig_instance]
                rest = rest[2:]
            assert rest[:2] == [n.hostname, "DCGM_FI_DRIVER_VERSION"]
            assert rest[2:] == sorted(rest[2:])  # attributes in sorted order


def test_idle_gpu_has_no_pod_labels_by_default_and_empty_ones_on_request() -> None:
    text = scrape(full_and_idle(), DEFAULT)
    idle = [line for line in text.splitlines() if 'gpu="1"' in line]
    assert idle
    assert not any("pod=" in line for line in idle)
    text = scrape(full_and_idle(), ExporterOptions(names=DCGM_NAMES, idle_pod_labels=True))
    idle = [line for line in text.splitlines() if 'gpu="1"' in line]
    for label in ('container=""', 'namespace=""', 'pod=""'):
        assert all(label in line for line in idle)


def test_hostname_switches() -> None:
    topology = full_and_idle()
    main = scrape(topology, ExporterOptions(names=DCGM_EXPORTER["main-d5e5f51"]))
    assert 'hostname="gpu-node-1"' in main
    assert "Hostname=" not in main
    none = scrape(topology, ExporterOptions(names=DCGM_NAMES, no_hostname=True))
    assert "ostname=" not in none
    ref = scrape(topology, DEFAULT, hostname=reference_hostname("gpu-node-1"))
    assert re.search(r'Hostname="nvidia-dcgm-exporter-[0-9a-f]{6}"', ref)


def test_reference_hostname_is_sha1_prefix() -> None:
    # sha1("gpu-node-1") computed independently of the implementation's helper.
    import hashlib

    expected = hashlib.sha1(b"gpu-node-1").hexdigest()[:6]
    assert reference_hostname("gpu-node-1") == f"nvidia-dcgm-exporter-{expected}"


def test_shared_gpu_gets_one_series_per_pod() -> None:
    topology = node("gpu-node-1", "H100", 1)
    hold(topology, 0, pod="a", uid="ua", util=(20, 20), fb_mib=1000)
    hold(topology, 0, pod="b", uid="ub", util=(30, 30), fb_mib=2000)
    lines = [
        line
        for line in scrape(topology, DEFAULT).splitlines()
        if line.startswith("DCGM_FI_DEV_GPU_UTIL")
    ]
    assert [parse_line(line)[1][-1] for line in lines] == [("pod", "a"), ("pod", "b")]
    assert {parse_line(line)[2] for line in lines} == {"50"}  # the GPU's total, as DCGM sees it


def test_mig_instances_replace_the_parent_and_skip_unsupported_fields() -> None:
    text = scrape(mig_node(), DEFAULT)
    gpu0 = [line for line in text.splitlines() if line.startswith("DCGM") and 'gpu="0"' in line]
    assert gpu0 and all("GPU_I_PROFILE=" in line for line in gpu0)
    assert not any(line.startswith("DCGM_FI_DEV_GPU_UTIL") for line in gpu0)
    powers = {parse_line(line)[2] for line in gpu0 if line.startswith("DCGM_FI_DEV_POWER_USAGE")}
    assert len(powers) == 1  # device-wide: every instance repeats the parent's reading


def test_kepler_lacks_profiling_energy_and_row_remapping() -> None:
    text = scrape(node("k80-node", "K80", 1), DEFAULT)
    for absent in ("DCGM_FI_PROF_", "DCGM_FI_DEV_TOTAL_ENERGY", "REMAPPED_ROWS", "NVLINK"):
        assert absent not in text
    assert "DCGM_FI_DEV_GPU_UTIL" in text


def test_label_values_are_escaped() -> None:
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    topology = node("gpu-node-1", "H100", 1)
    hold(topology, 0, container='we"ird')
    text = scrape(topology, DEFAULT)
    assert list(text_string_to_metric_families(text))
    assert 'container="we\\"ird"' in text


def test_no_nodes_no_output() -> None:
    assert DcgmCollector(DEFAULT).scrape_text([], T0) == ""


def test_every_tabled_field_has_a_value_source() -> None:
    from fgo_status_exporter.dcgm import FIELD_SOURCES

    for names in DCGM_EXPORTER.values():
        for fld in (*names.counters, *names.optional_counters):
            if fld.kind != "label":
                assert fld.name in FIELD_SOURCES, f"{names.version}: no value for {fld.name}"


def test_extra_metrics_are_appended_after_the_defaults() -> None:
    options = ExporterOptions(names=DCGM_NAMES, extra_metrics=("DCGM_FI_PROF_SM_ACTIVE",))
    text = scrape(full_and_idle(), options)
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert helps[-1] == "DCGM_FI_PROF_SM_ACTIVE"
    assert len(helps) == 26


def test_time_sliced_replicas_give_one_series_per_sharer_and_the_gpu_total_once() -> None:
    """Device-plugin time-slicing (docs/sharing.md): four replica holders on one GPU, one pod
    holding two replicas. dcgm-exporter attributes a shared GPU to each pod using it, so one
    series per pod; the value is the GPU's (the sharers' sum, capped at the board), not a
    per-pod share."""
    topology = node("gpu-node-1", "H100", 1)
    for pod, uid in (("a", "ua"), ("b", "ub"), ("c", "uc")):
        hold(topology, 0, pod=pod, uid=uid, util=(40, 40), fb_mib=20000)
    gpu = topology.gpus[0]
    gpu.status.holders.append(gpu.status.holders[0])  # pod a holds a second replica
    gpu.status.holders = [
        dataclasses.replace(h, resource="nvidia.com/gpu", sharing="TimeSlicing")
        for h in gpu.status.holders
    ]
    text = scrape(topology, DEFAULT)
    util = [line for line in text.splitlines() if line.startswith("DCGM_FI_DEV_GPU_UTIL")]
    assert [parse_line(line)[1][-1] for line in util] == [("pod", "a"), ("pod", "b"), ("pod", "c")]
    assert {parse_line(line)[2] for line in util} == {"100"}  # 3 x 40 %, capped at the board
    used = [line for line in text.splitlines() if line.startswith("DCGM_FI_DEV_FB_USED")]
    assert len(used) == 3
    assert {int(parse_line(line)[2]) for line in used} == {60000}  # the board's framebuffer use
