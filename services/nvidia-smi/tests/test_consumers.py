"""Real consumers parse our output: pandas (CSV), ElementTree (XML), and two PyPI packages that
wrap nvidia-smi by running it and parsing its CSV (GPUtil, nvsmi). They run the installed
``nvidia-smi`` console script as a subprocess, the way they run the real one."""

from __future__ import annotations

import io
import shutil
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from fgo_common.nodestate import write_node_state
from smi_fixtures import hgx_node
from smi_testlib import CAPTURE_TIME, Runner

FIELDS = "index,uuid,name,memory.total,memory.used,utilization.gpu,power.draw,temperature.gpu"


def test_pandas_reads_the_query_csv(smi: Runner) -> None:
    node = hgx_node()
    out = smi(f"--query-gpu={FIELDS}", "--format=csv", node=node).out
    frame = pd.read_csv(io.StringIO(out), skipinitialspace=True)
    assert list(frame.columns) == [
        "index",
        "uuid",
        "name",
        "memory.total [MiB]",
        "memory.used [MiB]",
        "utilization.gpu [%]",
        "power.draw [W]",
        "temperature.gpu",
    ]
    assert len(frame) == 8
    assert frame["uuid"].tolist() == [g.id for g in node.gpus]
    used = frame["memory.used [MiB]"].str.removesuffix(" MiB").astype(int)
    assert used.tolist()[1:3] == [30000, 30000]
    nounits = smi(f"--query-gpu={FIELDS}", "--format=csv,nounits", node=node).out
    numeric = pd.read_csv(io.StringIO(nounits), skipinitialspace=True, na_values=["[N/A]"])
    assert numeric["power.draw [W]"].dtype.kind == "f"
    assert numeric["temperature.gpu"].dtype.kind == "i"
    assert numeric["utilization.gpu [%]"].isna().tolist() == [False] * 7 + [True]  # MIG GPU


def test_elementtree_reads_the_xml_report(smi: Runner) -> None:
    node = hgx_node()
    root = ET.fromstring(smi("-q", "-x", node=node).out)
    assert root.tag == "nvidia_smi_log"
    assert root.findtext("attached_gpus") == "8"
    gpus = root.findall("gpu")
    assert [g.get("id") for g in gpus] == [g.bus_id for g in node.gpus]
    assert [g.findtext("uuid") for g in gpus] == [g.id for g in node.gpus]
    assert gpus[1].findtext("fb_memory_usage/used") == "30000 MiB"
    assert gpus[7].findtext("mig_mode/current_mig") == "Enabled"
    csv = smi("--query-gpu=temperature.gpu", "--format=csv,noheader,nounits", node=node).out
    assert [g.findtext("temperature/gpu_temp") for g in gpus] == [f"{t} C" for t in csv.split()]


@pytest.fixture
def installed_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH and environment as in a GPU container: our nvidia-smi first, the node state mounted."""
    script = Path(sys.executable).parent / "nvidia-smi"
    assert script.exists(), "the fgo-nvidia-smi console script is not installed (uv sync)"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvidia-smi").symlink_to(script)
    monkeypatch.setenv("PATH", f"{bindir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    write_node_state(tmp_path / "state", hgx_node())
    monkeypatch.setenv("FGO_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FGO_SMI_TIME", str(CAPTURE_TIME))
    monkeypatch.setenv("HOSTNAME", "train-0")
    assert shutil.which("nvidia-smi") == str(bindir / "nvidia-smi")
    return bindir


def test_gputil_parses_our_csv(installed_smi: Path) -> None:
    with warnings.catch_warnings():
        # GPUtil 1.4.0 imports distutils, deprecated in Python 3.11.
        warnings.simplefilter("ignore", DeprecationWarning)
        import GPUtil  # type: ignore[import-untyped]

    node = hgx_node()
    gpus = GPUtil.getGPUs()
    assert [g.uuid for g in gpus] == [g.id for g in node.gpus]
    assert gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert gpus[0].memoryTotal == 81559.0
    assert gpus[1].memoryUsed == 30000.0 and gpus[1].load >= 0.8
    assert gpus[0].display_mode == "[Requested functionality has been deprecated]"
    assert 40 <= gpus[0].temperature <= 90
    assert GPUtil.getAvailable(limit=8) == [0, 3, 4, 5, 6]  # busy and MIG (util N/A) excluded


def test_nvsmi_parses_gpus_and_processes(installed_smi: Path) -> None:
    import nvsmi  # type: ignore[import-untyped]

    gpus = list(nvsmi.get_gpus())
    assert len(gpus) == 8
    assert gpus[1].mem_used == 30000.0 and gpus[1].gpu_util >= 80
    procs = list(nvsmi.get_gpu_processes())
    assert sorted(p.used_memory for p in procs) == [12000.0, 30000.0, 30000.0]
    assert {p.gpu_uuid for p in procs} >= {hgx_node().gpus[1].id}
