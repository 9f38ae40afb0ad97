"""The telemetry model's invariants hold in the metrics too (issue 21): framebuffer fields add
up and never exceed the board, power stays under its limit, clocks under their maximum and lower
while power-capped, and DCGM_FI_DEV_POWER_VIOLATION only grows, growing while the SW power cap
reason is set."""

from __future__ import annotations

from exporter_builders import T0, enable_mig, hold, hold_mig, node
from fgo_common.names import DCGM_NAMES
from fgo_common.telemetry import CLOCKS_EVENT_SW_POWER_CAP
from fgo_common.topology import NodeTopology
from fgo_status_exporter.dcgm import DcgmCollector, ExporterOptions, ServedNode
from prometheus_client.parser import text_string_to_metric_families

EXTRAS = (
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
    "DCGM_FI_DEV_POWER_VIOLATION",
    "DCGM_FI_DEV_FB_TOTAL",
    "DCGM_FI_DEV_FB_RESERVED",
    "DCGM_FI_DEV_POWER_MGMT_LIMIT",
)
H100_MAX_SM_MHZ = 1980


def _scrape(topo: NodeTopology, t: float) -> dict[str, dict[str, float]]:
    """{metric: {UUID or GPU_I_ID-qualified key: value}}."""
    options = ExporterOptions(names=DCGM_NAMES, extra_metrics=EXTRAS)
    text = DcgmCollector(options).scrape_text([ServedNode(topo, topo.node_name)], t)
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.labels["UUID"] + "/" + sample.labels.get("GPU_I_ID", "")
            out.setdefault(family.name, {})[key] = sample.value
    return out


def _topology() -> NodeTopology:
    topo = node(count=4)
    # GPU 0: an unannotated training pod (recorded as the whole board); GPU 1: two pods asking
    # for more than exists; GPU 2: MIG, one instance with an over-sized request; GPU 3: idle.
    hold(topo, 0, fb_mib=topo.gpus[0].memory_mib)
    hold(topo, 1, uid="a", pod="a", util=(40, 60), fb_mib=60000)
    hold(topo, 1, uid="b", pod="b", util=(30, 50), fb_mib=60000)
    enable_mig(topo, 2, [("3g.40gb", 0), ("1g.10gb", 4)])
    hold_mig(topo, 2, 1, fb_mib=10**6, util=(90, 100))
    hold_mig(topo, 2, 2, uid="c", pod="c", fb_mib=5000)
    return topo


def test_memory_fields_add_up_on_every_gpu_and_instance() -> None:
    topo = _topology()
    m = _scrape(topo, T0)
    for key, total in m["DCGM_FI_DEV_FB_TOTAL"].items():
        used, free = m["DCGM_FI_DEV_FB_USED"][key], m["DCGM_FI_DEV_FB_FREE"][key]
        reserved = m["DCGM_FI_DEV_FB_RESERVED"].get(key, 0.0)
        assert 0 <= used <= total - reserved, key
        assert free == total - reserved - used, key
    board = topo.gpus[0]
    assert m["DCGM_FI_DEV_FB_USED"][board.id + "/"] < board.memory_mib - 480
    assert m["DCGM_FI_DEV_FB_FREE"][board.id + "/"] > 0  # GPUtil's memoryFree is not 0


def test_power_clock_and_violation_counter_agree() -> None:
    topo = _topology()
    before, after = _scrape(topo, T0), _scrape(topo, T0 + 3600)
    for key, power in before["DCGM_FI_DEV_POWER_USAGE"].items():
        assert power <= before["DCGM_FI_DEV_POWER_MGMT_LIMIT"][key]
        assert before["DCGM_FI_DEV_SM_CLOCK"][key] <= H100_MAX_SM_MHZ
        violation = before["DCGM_FI_DEV_POWER_VIOLATION"][key]
        assert violation <= after["DCGM_FI_DEV_POWER_VIOLATION"][key]
        if int(before["DCGM_FI_DEV_CLOCKS_EVENT_REASONS"][key]) & CLOCKS_EVENT_SW_POWER_CAP:
            assert before["DCGM_FI_DEV_SM_CLOCK"][key] < H100_MAX_SM_MHZ
            assert violation > 0
            assert after["DCGM_FI_DEV_POWER_VIOLATION"][key] > violation
    capped = topo.gpus[0].id + "/"
    assert int(before["DCGM_FI_DEV_CLOCKS_EVENT_REASONS"][capped]) & CLOCKS_EVENT_SW_POWER_CAP
    assert 1290 <= before["DCGM_FI_DEV_SM_CLOCK"][capped] <= 1305
    # Ten minutes at 100 %: the counter (ns) holds all of them.
    assert before["DCGM_FI_DEV_POWER_VIOLATION"][capped] == 600 * 10**9
