"""The standalone nvidia-smi: built with build.sh, run on the host and inside a Python-less
Debian root filesystem (debootstrap minbase) through chroot, mounted the way the node agents
mount it (docs/nvidia-smi.md): bundle directory at /usr/local/fake-gpu, the static launcher at
/usr/bin/nvidia-smi, the node state directory at /run/fake-gpu-operator."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fgo_common.nodestate import (
    DEFAULT_STATE_DIR,
    SMI_CONTAINER_DIR,
    SMI_CONTAINER_PATH,
    SMI_HOME_ENV,
    install_nvidia_smi,
    write_node_state,
)
from smi_fixtures import hgx_node
from smi_testlib import CAPTURE_TIME, run_in_utc

HERE = Path(__file__).resolve().parent
SERVICE = HERE.parent
ROOT = SERVICE.parents[1]
BUNDLE = ROOT / "build" / "nvidia-smi" / "dist" / "nvidia-smi"
SUITE = os.environ.get("FGO_ROOTFS_SUITE", "bookworm")
# Ubuntu 22.04's glibc: the oldest base image the bundle must start in.
MAX_GLIBC = (2, 35)

MODES: list[list[str]] = [
    [],
    ["-L"],
    ["--query-gpu=index,uuid,name,memory.used,utilization.gpu,power.draw", "--format=csv"],
    ["-q", "-x"],
    ["topo", "-m"],
    ["mig", "-lgi"],
    ["dmon", "-c", "1"],
    ["-i", "9"],
    ["--bogus-flag"],
]


@pytest.fixture(scope="module")
def bundle() -> Path:
    subprocess.run([str(SERVICE / "build.sh")], check=True, capture_output=True, timeout=900)
    assert (BUNDLE / "nvidia-smi").is_file() and (BUNDLE / "launcher").is_file()
    return BUNDLE


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("state")
    write_node_state(directory, hgx_node())
    directory.chmod(0o755)
    return directory


def _env(state: Path | str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "FGO_STATE_DIR": str(state),
        "FGO_SMI_TIME": str(CAPTURE_TIME),
        "TZ": "UTC",
        "HOSTNAME": "test-pod",
    }


def _in_process(args: list[str], state: Path) -> tuple[int, str]:
    return run_in_utc(args, _env(state))


def test_bundle_matches_the_python_package(bundle: Path, state: Path) -> None:
    for args in MODES:
        done = subprocess.run(
            [str(bundle / "nvidia-smi"), *args],
            env=_env(state),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stdout) == _in_process(args, state), args
        assert done.stderr == "", args
    launched = subprocess.run(
        [str(bundle / "launcher"), "-L"],
        env={**_env(state), "FGO_NVIDIA_SMI_HOME": str(bundle)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert launched.returncode == 0 and launched.stdout.count("GPU ") == 8


def test_launcher_without_the_bundle_fails_like_a_missing_driver(
    bundle: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [str(bundle / "launcher")],
        capture_output=True,
        text=True,
        env={"FGO_NVIDIA_SMI_HOME": str(tmp_path)},
        timeout=30,
        check=False,
    )
    assert done.returncode == 9
    assert done.stdout.startswith("NVIDIA-SMI has failed because it couldn't communicate")
    assert str(tmp_path) in done.stderr


def test_bundle_needs_no_newer_glibc_than_ubuntu_2204(bundle: Path) -> None:
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) is needed to read the bundle's symbol versions"
    needed: set[tuple[int, ...]] = set()
    files = [bundle / "nvidia-smi", *(p for p in bundle.rglob("*.so*") if p.is_file())]
    for path in files:
        out = subprocess.run(
            [objdump, "-T", str(path)], capture_output=True, text=True, check=False
        ).stdout
        needed |= {tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_([\d.]+)", out)}
    assert needed, "no versioned glibc symbols found: objdump output changed?"
    assert max(needed) <= MAX_GLIBC, f"bundle needs glibc {max(needed)}"


@pytest.fixture(scope="module")
def rootfs() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("debootstrap and chroot need root")
    done = subprocess.run(
        [str(HERE / "rootfs.sh"), SUITE], capture_output=True, text=True, timeout=1500, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    path = Path(done.stdout.strip().splitlines()[-1])
    # Mount points of the contract (empty: the real content arrives by bind mounts).
    (path / SMI_CONTAINER_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (path / DEFAULT_STATE_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (path / SMI_CONTAINER_PATH.lstrip("/")).touch()
    yield path


@pytest.fixture(scope="module")
def host_install(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The bundle installed on the "host" as node agents do it (versioned dir + symlink)."""
    host = tmp_path_factory.mktemp("host")
    smi_dir, launcher = host / "nvidia-smi", host / "bin" / "nvidia-smi"
    assert install_nvidia_smi(bundle, smi_dir, launcher)
    return smi_dir, launcher


def _chroot(
    rootfs: Path, install: tuple[Path, Path], state: Path, command: str
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (a shell line) in ``rootfs`` with the contract's bind mounts, inside a
    private mount namespace so nothing leaks onto the host."""
    smi_dir, launcher = install
    script = (
        f"mount --bind {smi_dir} {rootfs}{SMI_CONTAINER_DIR} && "
        f"mount --bind {launcher} {rootfs}{SMI_CONTAINER_PATH} && "
        f"mount -o bind,ro {state} {rootfs}{DEFAULT_STATE_DIR} && "
        f"exec chroot {rootfs} /bin/sh -c '{command}'"
    )
    env = {k: v for k, v in _env("/unused").items() if k != "FGO_STATE_DIR"}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"  # chroot lives in sbin
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.rootfs
@pytest.mark.timeout(1800)
def test_runs_in_a_python_less_debian_rootfs(
    rootfs: Path, host_install: tuple[Path, Path], state: Path
) -> None:
    probe = _chroot(
        rootfs,
        host_install,
        state,
        "for p in python python3 python3.11; do command -v $p; done; echo probe-done",
    )
    assert probe.stdout.strip() == "probe-done", f"rootfs has Python? {probe.stdout}{probe.stderr}"
    for args in MODES:
        quoted = " ".join(f'"{a}"' for a in args)
        # No FGO_STATE_DIR: the default path and the mounts are all it needs.
        done = _chroot(rootfs, host_install, state, f"nvidia-smi {quoted}")
        assert (done.returncode, done.stdout) == _in_process(args, state), (args, done.stderr)
    missing = _chroot(rootfs, host_install, state, "FGO_STATE_DIR=/nowhere nvidia-smi")
    assert missing.returncode == 9
    assert missing.stdout.startswith("NVIDIA-SMI has failed because it couldn't communicate")


def test_ctrl_c_ends_a_loop_quietly_and_pipes_may_close(bundle: Path, state: Path) -> None:
    import signal

    with subprocess.Popen(
        [str(bundle / "nvidia-smi"), "-lms", "100", "--query-gpu=index", "--format=csv,noheader"],
        env=_env(state),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a test run started in the background (`make test &`) inherits an
        # ignored SIGINT, and Python keeps it ignored in the child.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        lines = [proc.stdout.readline() for _ in range(16)]  # two rounds of 8 GPUs
        assert lines == [f"{i}\n" for i in range(8)] * 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
    # `nvidia-smi dmon | head -3`: the reader goes away, the writer exits without a traceback.
    done = subprocess.run(
        f"{bundle}/nvidia-smi dmon | head -3",
        shell=True,
        env=_env(state),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.count("\n") == 3 and "Traceback" not in done.stderr


def test_launcher_default_matches_the_contract() -> None:
    source = (SERVICE / "packaging" / "launcher.c").read_text()
    assert f'#define DEFAULT_HOME "{SMI_CONTAINER_DIR}"' in source
    assert f'"{SMI_HOME_ENV}"' in source
