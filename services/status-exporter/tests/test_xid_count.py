"""DCGM_EXP_XID_ERRORS_COUNT (opt-in): name, HELP/TYPE and labels from the names table, the
shape of dcgm-exporter's XID collector (one series per code seen in the window, else one 0
without ``xid``; MIG instances repeat their GPU's counts) and values from the telemetry model's
``xid_counts``."""

from __future__ import annotations

import re

import pytest
from exporter_builders import T0, enable_mig, hold, hold_mig, node
from fgo_common.faults import parse_entry, record_faults
from fgo_common.names import DCGM_NAMES
from fgo_common.runtime.settings import SettingsError, load_settings
from fgo_common.telemetry import xid_counts
from fgo_common.topology import NodeTopology
from fgo_status_exporter.dcgm import DcgmCollector, ExporterOptions, ServedNode
from fgo_status_exporter.main import exporter_options
from fgo_status_exporter.settings import Settings
from prometheus_client.parser import text_string_to_metric_families

NAME = "DCGM_EXP_XID_ERRORS_COUNT"


def _scrape(topo: NodeTopology, t: float = T0, **opts: object) -> str:
    options = ExporterOptions(names=DCGM_NAMES, extra_metrics=(NAME,), **opts)  # type: ignore[arg-type]
    return DcgmCollector(options).scrape_text([ServedNode(topo, topo.node_name)], t)


def _series(text: str, uuid: str) -> dict[str, int]:
    """xid label value ('' for none) -> value, of GPU ``uuid``'s series (one per code)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith(NAME + "{") and f'UUID="{uuid}"' in line:
            match = re.search(r',xid="(\d+)"', line)
            key = match[1] if match else ""
            assert key not in out, f"two series for xid {key!r}: {line}"
            out[key] = int(line.rpartition(" ")[2])
    return out


def test_not_served_unless_asked_for() -> None:
    topo = node(count=1)
    text = DcgmCollector(ExporterOptions(names=DCGM_NAMES)).scrape_text(
        [ServedNode(topo, topo.node_name)], T0
    )
    assert NAME not in text


def test_help_type_and_the_zero_series_of_a_gpu_without_xids() -> None:
    topo = node(count=2)
    text = _scrape(topo)
    fld = DCGM_NAMES.field(NAME)
    assert f"# HELP {NAME} {fld.help}\n# TYPE {NAME} gauge\n" in text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == NAME]
    assert family.type == "gauge"
    for gpu in topo.gpus:
        assert _series(text, gpu.id) == {"": 0}
    (zero,) = [ln for ln in text.splitlines() if ln.startswith(NAME) and topo.gpus[0].id in ln]
    assert zero.endswith(',window_size_in_ms="300000"} 0')


def test_counts_per_code_within_the_window_and_label_order() -> None:
    topo = node(count=3)
    hold(topo, 0)
    topo.gpus[0].faults = [
        {"kind": "xid", "code": 79, "since": T0 - 10, "until": T0 + 600},
        {"kind": "xid", "code": 13, "since": T0 - 20},
        {"kind": "xid", "code": 13, "since": T0 - 30},
        {"kind": "xid", "code": 31, "since": T0 - 301},  # before the window
    ]
    topo.gpus[1].faults = [{"kind": "thermal", "since": T0 - 5}]  # faults, but no XID
    text = _scrape(topo)
    assert _series(text, topo.gpus[0].id) == {"13": 2, "79": 1}
    assert _series(text, topo.gpus[1].id) == {"": 0}
    assert _series(text, topo.gpus[2].id) == {"": 0}
    # The model's numbers, rendered.
    expected = xid_counts(topo.gpus[0].faults, T0)
    assert {int(k): v for k, v in _series(text, topo.gpus[0].id).items()} == expected
    # Labels: the GPU's head (ending with the driver label), window_size_in_ms and xid (sorted,
    # as dcgm-exporter renders a metric's labels), then the pod attributes. Codes ascending.
    held = [ln for ln in text.splitlines() if ln.startswith(NAME) and topo.gpus[0].id in ln]
    assert [re.search(r'xid="(\d+)"', ln)[1] for ln in held] == ["13", "79"]  # type: ignore[index]
    assert all(
        re.search(r'DCGM_FI_DRIVER_VERSION="[^"]*",window_size_in_ms="300000",xid="\d+",'
                  r'container="train",namespace="ml",pod="trainer-0"\} \d+$', ln)
        for ln in held
    ), held  # fmt: skip
    # The events age out five minutes after each happened: the oldest first, then all.
    assert _series(_scrape(topo, T0 + 275), topo.gpus[0].id) == {"13": 1, "79": 1}
    assert _series(_scrape(topo, T0 + 291), topo.gpus[0].id) == {"": 0}


def test_the_window_knob_sets_the_label_and_the_range() -> None:
    topo = node(count=1)
    topo.gpus[0].faults = [
        {"kind": "xid", "code": 79, "since": T0 - 50},
        {"kind": "xid", "code": 79, "since": T0 - 120},
    ]
    text = _scrape(topo, xid_count_window_ms=60000)
    assert _series(text, topo.gpus[0].id) == {"79": 1}
    assert 'window_size_in_ms="60000",xid="79"' in text
    assert _series(_scrape(topo), topo.gpus[0].id) == {"79": 2}


def test_double_bit_ecc_shows_as_xid_48() -> None:
    topo = node(count=1)
    spec = parse_entry(
        {"node": topo.node_name, "gpu": 0, "kind": "ecc", "count": 2, "doubleBit": 1},
        "faults[0]",
        "cm",
        created=T0 - 40,
    )
    topo.gpus[0].faults = record_faults(spec)
    assert _series(_scrape(topo), topo.gpus[0].id) == {"48": 1}


def test_mig_instances_repeat_their_gpus_counts() -> None:
    topo = node(count=2, mig_strategy="mixed")
    enable_mig(topo, 0, [("4g.40gb", 0), ("3g.40gb", 4)])
    hold_mig(topo, 0, 2)
    gpu = topo.gpus[0]
    # An XID on one MIG device is still an event of the GPU (DCGM keys XIDs by GPU).
    gpu.faults = [
        {"kind": "xid", "code": 79, "since": T0 - 5, "mig": gpu.mig_devices[0].uuid},
        {"kind": "xid", "code": 48, "since": T0 - 7},
    ]
    text = _scrape(topo)
    lines = [ln for ln in text.splitlines() if ln.startswith(NAME) and gpu.id in ln]
    by_instance: dict[str, dict[str, int]] = {}
    for ln in lines:
        gi = re.search(r'GPU_I_ID="(\d+)"', ln)[1]  # type: ignore[index]
        code = re.search(r'xid="(\d+)"', ln)[1]  # type: ignore[index]
        by_instance.setdefault(gi, {})[code] = int(ln.rpartition(" ")[2])
    assert by_instance == {"1": {"48": 1, "79": 1}, "2": {"48": 1, "79": 1}}
    # The held instance carries its pod, the other none.
    assert all(('pod="infer-0"' in ln) == ('GPU_I_ID="2"' in ln) for ln in lines)
    # The other GPU (not MIG-partitioned) is one entity with the zero series.
    assert _series(text, topo.gpus[1].id) == {"": 0}


def test_window_setting_reaches_the_options_and_is_validated() -> None:
    env = {"EXPORTER_MODE": "kwok", "EXPORTER_EXTRA_METRICS": NAME}
    default = exporter_options(load_settings(Settings, env))
    assert default.xid_count_window_ms == 300000
    assert NAME in default.extra_metrics
    custom = load_settings(Settings, {**env, "DCGM_EXPORTER_XID_COUNT_WINDOW_SIZE": "60000"})
    assert exporter_options(custom).xid_count_window_ms == 60000
    with pytest.raises(SettingsError, match="DCGM_EXPORTER_XID_COUNT_WINDOW_SIZE"):
        load_settings(Settings, {**env, "DCGM_EXPORTER_XID_COUNT_WINDOW_SIZE": "0"})
