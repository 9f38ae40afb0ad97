"""The node agents' NVML snapshot (``nvml-node.snap``, docs/nvml.md) seen through the library's
per-container code equals what the exec path prints, for many ``NVIDIA_VISIBLE_DEVICES`` values
and node shapes: the visible-devices rules, the renumbering, a Run:ai fraction's memory and the
pod's own process name exist in Python (fgo_nvidia_smi.state) and in C (fakenvml.c), and this
table keeps them identical. Whatever the C side cannot reproduce must fall back to nvidia-smi.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from fgo_common.identity import mig_uuid
from fgo_common.nodestate import write_node_state
from fgo_common.topology import (
    HOLDER_RESERVATION,
    GpuStatus,
    Holder,
    MigDevice,
    NodeTopology,
    PodUsage,
    UtilizationRange,
)
from fgo_nvidia_smi import nvmlsnap
from fgo_nvidia_smi.settings import Settings
from nvml_testlib import NVML_DIR, PINNED, have_cc
from smi_fixtures import busy, hgx_node, k80_node

pytestmark = pytest.mark.skipif(not have_cc(), reason="no C compiler")

DRIVER = Path(__file__).resolve().parent / "nvml_c" / "nodeview.c"
FRAMES = 3
FALLBACK = "FALLBACK\n"


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nodeview") / "nodeview"
    subprocess.run(
        ["cc", "-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
         f"-I{NVML_DIR}", "-o", str(out), str(DRIVER), "-lm", "-lpthread"],
        check=True,
    )  # fmt: skip
    return out


def shaped_node() -> NodeTopology:
    """Bus order unlike index order, MIG devices on a GPU with MIG off, a GPU shared by a
    reservation pod and two fractional pods (one is ours: HOSTNAME), an MPS GPU, usage without
    a holder."""
    node = hgx_node()
    for gpu in node.gpus:  # reverse the PCI order: container index != record index
        gpu.bus_id = f"00000000:{0x90 - gpu.index * 8:02X}:00.0"
    off = node.gpus[3]
    off.mig_devices = [
        MigDevice(mig_uuid(off.id, gi, 0), "1g.10gb", gi, 0, 19, 0, gi - 1, 1, 9984, 16)
        for gi in (2, 1)
    ]
    node.gpus[4].status = GpuStatus(
        holders=[
            Holder("runai", "runai-reservation-x", "main", pod_uid="uid-res", kind=HOLDER_RESERVATION),
            Holder("default", "frac-a", "main", pod_uid="uid-a"),
        ],
        usage={
            "uid-a": PodUsage(UtilizationRange(20, 40), 30000, namespace="default", pod="frac-a"),
            "uid-me": PodUsage(UtilizationRange(10, 90), 25000, namespace="default", pod="me-pod"),
        },
    )  # fmt: skip
    node.gpus[5].status = GpuStatus(
        holders=[Holder("default", "mps-0", "main", pod_uid="uid-mps", sharing="MPS")],
        usage={"uid-mps": PodUsage(UtilizationRange(50, 50), 8000, namespace="default", pod="mps-0")},
    )  # fmt: skip
    return node


def empty_node() -> NodeTopology:
    node = k80_node(1)
    node.gpus = []
    return node


SHAPES = {"hgx": hgx_node, "shaped": shaped_node, "k80": lambda: k80_node(3), "empty": empty_node}


def token_pool(node: NodeTopology) -> list[str]:
    pool = ["0", "1", "3", "7", "8", "00", "007", "-1", "+1", "1.0", "99999999999", "all", "none"]
    pool += ["void", "", " ", "7:0", "7:1", "7:2", "3:0", "3:1", "0:0", "x:0", "7:x", "7:0:0"]
    pool += ["GPU-00000000-0000-0000-0000-000000000000", "MIG-nope", ":", "7:", ":0"]
    for gpu in node.gpus:
        pool += [gpu.id, gpu.id.lower(), gpu.id.upper()]
        pool += [m.uuid for m in gpu.mig_devices] + [m.uuid.lower() for m in gpu.mig_devices]
    return pool


def table_specs(node: NodeTopology) -> list[str | None]:
    ids = [g.id for g in node.gpus]
    migs = [m.uuid for g in node.gpus for m in g.mig_devices]
    specs: list[str | None] = [None, "all", " ALL ", "All", "none", "void", "", "  ", "0", "7"]
    specs += ["8", "0,0", "1,0", "0,1,2,3", "none,1", ",,1,,", "1 , 2", "all,0", "7:0", "7:1"]
    specs += ["7:0,7:1", "7:1,7:0,7", "3:0", "3:1,3", "0:0", "GPU-unknown", "1,GPU-unknown"]
    specs += [",".join(ids), ",".join(reversed(ids)), ",".join(migs), ",".join(ids[:2] + migs)]
    specs += [",".join(m.lower() for m in migs), ",".join(migs + migs), ",".join(ids + ids)]
    rng = random.Random(26)
    pool = token_pool(node)
    for _ in range(40):
        tokens = rng.sample(pool, rng.randint(1, 5))
        pads = [rng.choice(["", " ", "  "]) for _ in tokens]
        specs.append(",".join(p + t + p for p, t in zip(pads, tokens, strict=True)))
    return specs


def _write(tmp_path: Path, node: NodeTopology, seed: str = "0") -> Path:
    directory = tmp_path / "state"
    write_node_state(directory, node)
    env = {"FGO_STATE_DIR": str(directory), "FGO_SMI_TIME": PINNED, "FGO_SEED": seed}
    text = nvmlsnap.render_node(Settings.from_env(env), FRAMES)
    (directory / "nvml-node.snap").write_text(text)
    return directory


def _both(driver: Path, directory: Path, extra: dict[str, str]) -> tuple[str, str]:
    env = {"FGO_STATE_DIR": str(directory), "FGO_SMI_TIME": PINNED, "HOSTNAME": "me-pod"}
    env.update(extra)
    want = nvmlsnap.render(Settings.from_env(env), FRAMES)
    got = subprocess.run([str(driver)], env=env, capture_output=True, text=True, check=False)
    return got.stdout, want


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_visible_devices_select_the_same_devices_in_c_and_python(
    driver: Path, tmp_path: Path, shape: str
) -> None:
    node = SHAPES[shape]()
    directory = _write(tmp_path, node)
    specs = table_specs(node)
    for spec in specs:
        extra = {} if spec is None else {"NVIDIA_VISIBLE_DEVICES": spec}
        got, want = _both(driver, directory, extra)
        assert got != FALLBACK, spec
        assert got == want, spec
    assert len(specs) > 70


@pytest.mark.parametrize(
    "extra",
    [
        {"RUNAI_NUM_OF_GPUS": "0.5"},
        {"RUNAI_NUM_OF_GPUS": " 0.25 ", "NVIDIA_VISIBLE_DEVICES": "4,7"},
        {"GPU_PORTION": "0.3", "NVIDIA_VISIBLE_DEVICES": "4"},
        {"RUNAI_NUM_OF_GPUS": "0", "GPU_PORTION": "0.1"},
        {"RUNAI_NUM_OF_GPUS": "2", "GPU_PORTION": "0.1"},
        {"RUNAI_NUM_OF_GPUS": "", "GPU_PORTION": "0.75"},
        {"RUNAI_NUM_OF_GPUS": "0.01"},
        {"FGO_VISIBLE_DEVICES": "1", "NVIDIA_VISIBLE_DEVICES": "2"},
        {"FGO_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "2"},
        {"HOSTNAME": "frac-a"},
        {"HOSTNAME": "train-0", "NVIDIA_VISIBLE_DEVICES": "1"},
        {"FGO_SEED": " 0 "},
        {"FGO_POD_UID": "uid-a", "NVIDIA_VISIBLE_DEVICES": "4"},
    ],
)
def test_fraction_names_and_precedence_match(
    driver: Path, tmp_path: Path, extra: dict[str, str]
) -> None:
    directory = _write(tmp_path, shaped_node())
    got, want = _both(driver, directory, extra)
    assert got != FALLBACK
    assert got == want


@pytest.mark.parametrize(
    "extra",
    [
        {"FGO_POD_UID": "uid-a"},  # a fractional pod found by its UID: nvidia-smi's select_by_pod
        {"POD_UUID": "uid-a"},
        {"NVIDIA_VISIBLE_DEVICES": "\u0661"},  # non-ASCII: Python's rules for it stay in Python
        {"NVIDIA_VISIBLE_DEVICES": "0\t,1"},
        {"RUNAI_NUM_OF_GPUS": "abc"},
        {"RUNAI_NUM_OF_GPUS": "5e-1_0"},
        {"FGO_SEED": "7"},  # the file was written with seed 0
        {"FGO_SEED": "1_0"},
        {"FGO_SMI_TIME": "soon"},
    ],
)
def test_what_c_cannot_reproduce_falls_back(
    driver: Path, tmp_path: Path, extra: dict[str, str]
) -> None:
    directory = _write(tmp_path, shaped_node())
    env = {"FGO_STATE_DIR": str(directory), "FGO_SMI_TIME": PINNED, **extra}
    result = subprocess.run([str(driver)], env=env, capture_output=True, text=True, check=False)
    assert result.stdout == FALLBACK


def test_a_stale_or_foreign_file_falls_back(driver: Path, tmp_path: Path) -> None:
    node = shaped_node()
    directory = _write(tmp_path, node)
    got, want = _both(driver, directory, {})
    assert got == want
    node.gpus[0].status = busy("new-0", "uid-new", 10, 20, 1000)
    write_node_state(directory, node)  # the record replaced: the file's stamp no longer matches
    assert _both(driver, directory, {})[0] == FALLBACK
    _write(tmp_path, node)
    path = directory / "nvml-node.snap"
    text = path.read_text()
    for broken in (text[: len(text) // 2], text.replace("FGO-NVML-NODE\t1", "FGO-NVML\t1"), ""):
        path.write_text(broken)
        assert _both(driver, directory, {})[0] == FALLBACK
    path.unlink()
    assert _both(driver, directory, {})[0] == FALLBACK


def test_node_agent_writer_keeps_the_file_current(driver: Path, tmp_path: Path) -> None:
    """fgo_common.nvmlnode as the agents run it: the bundled program's node mode, atomically
    written; a record change is followed by a new file the library accepts."""
    import asyncio

    from fgo_common.nvmlnode import NVML_NODE_FILE, NvmlNodeSnapshot
    from nvml_testlib import SMI

    directory = tmp_path / "state"
    write_node_state(directory, shaped_node())
    writer = NvmlNodeSnapshot(str(directory), seed=0, smi=str(SMI), frames=4)
    env = {"FGO_STATE_DIR": str(directory), "HOSTNAME": "me-pod"}

    def view() -> str:
        return subprocess.run(
            [str(driver)], env=env, capture_output=True, text=True, check=False
        ).stdout

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(writer.run(stop))
        for _ in range(200):
            if writer.writes:
                break
            await asyncio.sleep(0.05)
        assert writer.writes == 1
        assert view().startswith("FGO-NVML\t1\n")
        assert view().count("\nG\t") == 8 * 4
        node = k80_node(3)
        write_node_state(directory, node)
        assert view() == FALLBACK  # the record changed: the old file is not trusted
        writer.changed()
        for _ in range(200):
            if writer.writes == 2:
                break
            await asyncio.sleep(0.05)
        assert view().count("\nG\t") == 3 * 4
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert (directory / NVML_NODE_FILE).stat().st_mode & 0o777 == 0o644
    assert writer.cpu_seconds > 0


def test_a_corrupt_node_file_never_crashes(driver: Path, tmp_path: Path) -> None:
    """Whatever is in the file (the stamp and the end marker kept, so the parser goes deep):
    the library either serves a view or falls back; never a signal."""
    directory = _write(tmp_path, shaped_node())
    path = directory / "nvml-node.snap"
    lines = path.read_text().splitlines()
    head, body = lines[:3], lines[3:-1]
    rng = random.Random(2626)
    env = {"FGO_STATE_DIR": str(directory), "FGO_SMI_TIME": PINNED, "HOSTNAME": "me-pod"}
    variants: list[list[str]] = [body[: rng.randrange(len(body))] for _ in range(30)]
    for _ in range(60):
        mutated = list(body)
        for _ in range(rng.randint(1, 4)):
            k = rng.randrange(len(mutated))
            fields = mutated[k].split("\t")
            choice = rng.randrange(4)
            if choice == 0:
                mutated[k] = "\t".join(fields[: rng.randrange(len(fields) + 1)])
            elif choice == 1:
                del mutated[k]
            elif choice == 2:
                mutated.insert(k, rng.choice(["M", "P", "G", "F", "V", "M\t", "P\tx", ""]))
            else:
                fields[rng.randrange(len(fields))] = rng.choice(["", "-1", "x" * 300, "99" * 20])
                mutated[k] = "\t".join(fields)
        variants.append(mutated)
    for variant in variants:
        path.write_text("\n".join([*head, *variant, "E"]) + "\n")
        result = subprocess.run([str(driver)], env=env, capture_output=True, check=False)
        assert result.returncode in (0, 3), result.returncode


def test_node_mode_exit_codes(tmp_path: Path) -> None:
    """``nvidia-smi --fgo-nvml-node-snapshot``: 9 without a readable record (the agent then
    writes nothing), 255 on a bad frame count or seed, never a traceback."""
    import io

    from fgo_nvidia_smi.main import run

    def call(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        return run(argv, out, err, env), out.getvalue(), err.getvalue()

    missing = {"FGO_STATE_DIR": str(tmp_path / "none")}
    assert call(["--fgo-nvml-node-snapshot"], missing)[0] == 9
    directory = _write(tmp_path, k80_node(2))
    env = {"FGO_STATE_DIR": str(directory)}
    assert call(["--fgo-nvml-node-snapshot", "x"], env)[0] == 255
    assert call(["--fgo-nvml-node-snapshot"], {**env, "FGO_SEED": "q"})[0] == 255
    rc, out, err = call(["--fgo-nvml-node-snapshot", "2"], env)
    assert (rc, err) == (0, "")
    assert out.startswith("FGO-NVML-NODE\t1\nS\t") and out.endswith("\nE\n")
    assert out.count("\nF\t") == 2
