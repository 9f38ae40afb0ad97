"""The no-op Run:ai preloader stubs (runai.preloaderStubs, issue 27).

Run:ai's fractional-GPU pods start with LD_PRELOAD naming
/var/lib/runai/shared/{memory,pid}/preloader.so. Here: the stub builds with the image flow's
script (hack/images/preloader/build.sh) and needs no library; the node agents' installer puts it
at both paths (atomic, idempotent, never over a file that is not ours); a process started with
LD_PRELOAD of each installed stub, and of both, loads it and runs normally; the chart renders the
init container and host path only when asked, and the node agents' images carry both pieces.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from chartlib import ROOT, Helm, Rendered

BUILD = ROOT / "hack" / "images" / "preloader" / "build.sh"
INSTALLER = ROOT / "hack" / "images" / "fgo-install-runai-preloader"
STUB_IN_IMAGE = "/opt/fake-gpu-operator/runai/preloader.so"
HOST_DIR = "/var/lib/runai/shared"
TARGETS = ("memory/preloader.so", "pid/preloader.so")
NODE_AGENTS = {"fgo-device-plugin": "device-plugin", "fgo-dra-plugin": "dra-plugin"}

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (as the image)")


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("preloader")
    subprocess.run(["sh", str(BUILD), str(out)], check=True, capture_output=True)
    return out / "preloader.so"


def _install(dest: Path, stub: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(INSTALLER), str(dest), "--stub", str(stub)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def host(tmp_path: Path, stub: Path) -> Path:
    """The node's /var/lib/runai/shared after the init container ran."""
    dest = tmp_path / "host" / "var" / "lib" / "runai" / "shared"
    dest.mkdir(parents=True)
    done = _install(dest, stub)
    assert done.returncode == 0, done.stderr
    return dest


def test_the_stub_needs_no_library(stub: Path) -> None:
    readelf = shutil.which("readelf")
    assert readelf, "readelf (binutils)"
    dynamic = subprocess.run([readelf, "-d", str(stub)], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    assert "(NEEDED)" not in dynamic  # loads in glibc and musl programs alike
    assert b"fake-gpu-operator no-op Run:ai preloader" in stub.read_bytes()
    assert stub.stat().st_size < 64 * 1024


def test_installer_writes_both_paths_once(tmp_path: Path, stub: Path, host: Path) -> None:
    for target in TARGETS:
        path = host / target
        assert path.read_bytes() == stub.read_bytes(), target
        assert path.stat().st_mode & 0o777 == 0o644
    assert not list(host.rglob(".*tmp*")), "temporary files left behind"
    again = _install(host, stub)
    assert again.returncode == 0 and "already up to date" in again.stdout, again
    # A file that is not one of our stubs (Run:ai's own preloader) is left alone.
    theirs = host / "pid" / "preloader.so"
    theirs.write_bytes(b"\x7fELF the real thing")
    third = _install(host, stub)
    assert third.returncode == 0 and "not ours, left alone: pid/preloader.so" in third.stdout
    assert theirs.read_bytes() == b"\x7fELF the real thing"
    # Missing host path or stub: one line, exit 1.
    assert _install(tmp_path / "absent", stub).returncode == 1
    assert _install(host, tmp_path / "no.so").returncode == 1


PROBE = (
    "import hashlib, sys\n"
    "maps = open('/proc/self/maps').read()\n"
    "loaded = sorted({l.split()[-1] for l in maps.splitlines() if l.endswith('preloader.so')})\n"
    "print(hashlib.sha256(b'work').hexdigest()[:8], *loaded)\n"
)


@pytest.mark.parametrize("targets", [[TARGETS[0]], [TARGETS[1]], list(TARGETS)],
                         ids=["memory", "pid", "both"])  # fmt: skip
def test_a_process_with_the_stubs_preloaded_runs_normally(host: Path, targets: list[str]) -> None:
    paths = [str(host / t) for t in targets]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LD_PRELOAD": ":".join(paths)}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    # The loader reports a preload it cannot map on stderr and goes on: stderr must be empty.
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout.split() == [hashlib.sha256(b"work").hexdigest()[:8], *sorted(paths)]
    # A plain C program too (what most containers run first).
    shell = subprocess.run(["/bin/sh", "-c", "echo started; exit 3"], env=env,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert (shell.returncode, shell.stdout, shell.stderr) == (3, "started\n", "")


def test_without_the_stubs_a_preloading_process_is_warned(tmp_path: Path) -> None:
    """What the stubs prevent: the loader complains about every missing preload (Run:ai's
    containers fail on it)."""
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(tmp_path / "memory" / "preloader.so")}
    done = subprocess.run(["/bin/sh", "-c", "true"], env=env, capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert "cannot be preloaded" in done.stderr


def _init(workload: dict[str, object]) -> list[dict[str, object]]:
    spec = workload["spec"]["template"]["spec"]  # type: ignore[index]
    return [c for c in spec["initContainers"] if c["name"] == "install-runai-preloader"]


def test_chart_installs_the_stubs_only_when_asked(helm: Helm, everything: Rendered) -> None:
    default = helm.render(sets=["draPlugin.enabled=true"])
    for name in NODE_AGENTS:
        assert not _init(default.get("DaemonSet", name)), name
        volumes = default.get("DaemonSet", name)["spec"]["template"]["spec"]["volumes"]
        assert all(v["name"] != "runai-shared" for v in volumes)
    for name, repository in NODE_AGENTS.items():
        workload = everything.get("DaemonSet", name)
        (init,) = _init(workload)
        spec = workload["spec"]["template"]["spec"]
        assert spec["initContainers"][0]["name"] == "install-nvidia-smi"
        assert init["command"] == ["fgo-install-runai-preloader", f"/host{HOST_DIR}"]
        assert f"/{repository}:" in init["image"]
        (mount,) = init["volumeMounts"]
        host = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
        assert host[mount["name"]] == {"path": HOST_DIR, "type": "DirectoryOrCreate"}
        assert mount["mountPath"] == f"/host{HOST_DIR}"
        assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert init["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("repository", sorted(NODE_AGENTS.values()))
def test_node_agent_images_carry_the_stub_and_installer(repository: str) -> None:
    dockerfile = (ROOT / "services" / repository / "Dockerfile").read_text()
    assert "RUN preloader/build.sh build/preloader" in dockerfile
    assert f"COPY --from=nvidia-smi /app/build/preloader/preloader.so {STUB_IN_IMAGE}" in (
        dockerfile
    )
    assert (
        "COPY hack/images/fgo-install-runai-preloader /usr/local/bin/fgo-install-runai-preloader"
        in dockerfile
    )
    assert f'DEFAULT_STUB = Path("{STUB_IN_IMAGE}")' in INSTALLER.read_text()
