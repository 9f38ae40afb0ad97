"""The service images as users run them: built by ``make images`` (buildah where there is no
Docker engine), started by runc as the image says (entrypoint, non-root user, read-only root).

Each image answers ``--help`` and refuses bad input in one line; its labels carry the chart's
appVersion and the git revision; it stays within the size budget. The node agents' init step
installs the standalone nvidia-smi on a "host" directory, and that bundle then runs in the
Python-less test image with the mounts the device plugin and the DRA plugin give GPU
containers, printing what the Python package prints for the same node state. That the images
also do their job against the control plane is shown by ``make e2e-images``: the e2e scenarios
with every Deployment of the chart running from its image (tests/e2e, FGO_E2E_RUNTIME).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fgo_common.nodestate import (
    DEFAULT_STATE_DIR,
    SMI_CONTAINER_DIR,
    SMI_CONTAINER_PATH,
    write_node_state,
)
from fgo_localcluster.oci import ContainerRuntime, Finished, Mount
from fgo_localcluster.realnode import resolve_node_bin_dir

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "services" / "nvidia-smi" / "tests"))

from smi_fixtures import hgx_node  # noqa: E402
from smi_testlib import CAPTURE_TIME, run_in_utc  # noqa: E402

SERVICES = ["status-updater", "device-plugin", "dra-plugin", "kwok-dra-plugin", "status-exporter"]
NODE_AGENTS = ["device-plugin", "dra-plugin"]
REGISTRY = "ghcr.io/fake-gpu-operator"
GPU_TEST_IMAGE = "localhost/fgo/gpu-test:bookworm"
SIZE_BUDGET_BYTES = 250 * 1000 * 1000
# The bundle is built on Debian 12 here (hack/images/bases/smi-build.Dockerfile), on Ubuntu
# 22.04 (glibc 2.35) where the public base can be pulled: it must start in either.
MAX_GLIBC = (2, 36)
APP_VERSION = re.search(
    r'^appVersion:\s*"?([^"\n]+)"?',
    (ROOT / "charts/fake-gpu-operator/Chart.yaml").read_text(),
    re.M,
)[1]  # type: ignore[index]


if os.geteuid() != 0:
    pytest.skip("running images needs root (buildah mount, runc)", allow_module_level=True)


def image(service: str) -> str:
    return f"{REGISTRY}/{service}:{APP_VERSION}"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> ContainerRuntime:
    runc = asyncio.run(resolve_node_bin_dir(print, build=False)) / "runc"
    return ContainerRuntime(runc, state_dir=tmp_path_factory.mktemp("containers"))


def run(runtime: ContainerRuntime, name: str, img: str, **spec: object) -> Finished:
    return asyncio.run(runtime.run(name, img, **spec))  # type: ignore[arg-type]


@pytest.mark.parametrize("service", SERVICES)
def test_help_as_the_images_non_root_user(runtime: ContainerRuntime, service: str) -> None:
    done = run(runtime, f"help-{service}", image(service), args=["--help"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: fgo-{service}"), done.stdout[:200]
    assert "settings (environment variables):" in done.stdout
    assert "KUBECONFIG=" in done.stdout
    who = run(runtime, f"id-{service}", image(service), entrypoint=["id", "-u"])
    assert who.stdout.strip() == "65532"


@pytest.mark.parametrize("service", SERVICES)
def test_wrong_flag_is_one_line_and_exit_2(runtime: ContainerRuntime, service: str) -> None:
    done = run(runtime, f"flag-{service}", image(service), args=["--no-such-flag"])
    assert done.returncode == 2
    assert done.stderr == (
        f"fgo-{service}: unrecognized arguments: --no-such-flag (see fgo-{service} --help)\n"
    )
    assert done.stdout == ""


@pytest.mark.parametrize("service", SERVICES)
def test_missing_setting_is_one_line_and_exit_2(runtime: ContainerRuntime, service: str) -> None:
    # No env at all: the node agents miss NODE_NAME, the central services any API config.
    done = run(runtime, f"bare-{service}", image(service))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert re.match(
        rf"{service}: (invalid setting: NODE_NAME is required|no Kubernetes API configuration)",
        done.stderr,
    ), done.stderr


def _buildah(*args: str) -> str:
    buildah = shutil.which("buildah")
    assert buildah, "buildah is not installed (make host-deps)"
    store = Path(os.environ.get("FGO_CACHE_DIR", Path.home() / ".cache/fgo")) / "images"
    return subprocess.run(
        [buildah, "--root", str(store / "storage"), "--runroot", str(store / "run"),
         "--storage-driver", "overlay", *args],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def _image_info(img: str) -> dict[str, object]:
    info: dict[str, object] = json.loads(_buildah("inspect", "--type", "image", img))
    return info


@pytest.mark.parametrize("service", SERVICES)
def test_labels_name_version_and_revision(service: str) -> None:
    info = _image_info(image(service))
    labels = info["OCIv1"]["config"]["Labels"]  # type: ignore[index]
    assert labels["org.opencontainers.image.title"] == f"fgo-{service}"
    assert labels["org.opencontainers.image.version"] == APP_VERSION
    assert labels["org.opencontainers.image.source"].startswith("https://")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert labels["org.opencontainers.image.revision"].startswith(head), (
        "image built from another commit: run `make images`"
    )
    annotations = info["ImageAnnotations"]  # type: ignore[index]
    assert (
        annotations["org.opencontainers.image.revision"]
        == labels[  # type: ignore[index]
            "org.opencontainers.image.revision"
        ]
    )


@pytest.mark.parametrize("service", SERVICES)
def test_size_within_budget(service: str) -> None:
    # buildah reports the uncompressed size in decimal units ("221 MB").
    shown = json.loads(_buildah("images", "--json", image(service)))[0]["size"]
    number, unit = re.fullmatch(r"([\d.]+)\s*([kMG]?B)", shown.replace("KB", "kB")).groups()  # type: ignore[union-attr]
    size = float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    assert size < SIZE_BUDGET_BYTES, f"{service}: {shown} uncompressed"


@pytest.fixture(scope="module")
def node_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("state")
    write_node_state(directory, hgx_node())
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return directory


def _in_process(args: list[str], state: Path) -> tuple[int, str]:
    env = {"FGO_STATE_DIR": str(state), "FGO_SMI_TIME": str(CAPTURE_TIME), "TZ": "UTC",
           "HOSTNAME": "gpu-pod", "PATH": "/usr/bin:/bin"}  # fmt: skip
    return run_in_utc(args, env)


@pytest.fixture(scope="module", params=NODE_AGENTS)
def installed(
    request: pytest.FixtureRequest, runtime: ContainerRuntime,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:  # fmt: skip
    """The node agent's init step, as the chart runs it: the image's installer, as root, with
    the node's /var/lib/fake-gpu-operator mounted at /host/var/lib/fake-gpu-operator."""
    host = tmp_path_factory.mktemp(f"host-{request.param}")
    host.chmod(0o755)
    done = run(
        runtime, f"install-{request.param}", image(request.param),
        entrypoint=["fgo-install-nvidia-smi", "/host/var/lib/fake-gpu-operator"],
        user=(0, 0), mounts=[Mount(host, "/host/var/lib/fake-gpu-operator", readonly=False)],
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nvidia-smi installed" in done.stdout
    assert (host / "nvidia-smi" / "nvidia-smi").is_file()
    assert (host / "bin" / "nvidia-smi").is_file()
    again = run(
        runtime, f"install-{request.param}", image(request.param),
        entrypoint=["fgo-install-nvidia-smi", "/host/var/lib/fake-gpu-operator"],
        user=(0, 0), mounts=[Mount(host, "/host/var/lib/fake-gpu-operator", readonly=False)],
    )  # fmt: skip
    assert again.returncode == 0 and "already up to date" in again.stdout
    yield host


def _gpu_container(runtime: ContainerRuntime, host: Path, state: Path, command: str) -> Finished:
    return run(
        runtime, "gpu-test", GPU_TEST_IMAGE, entrypoint=["/bin/sh", "-c", command],
        env={"FGO_SMI_TIME": str(CAPTURE_TIME), "TZ": "UTC", "HOSTNAME": "gpu-pod"},
        mounts=[Mount(host / "nvidia-smi", SMI_CONTAINER_DIR),
                Mount(host / "bin" / "nvidia-smi", SMI_CONTAINER_PATH),
                Mount(state, DEFAULT_STATE_DIR)],
    )  # fmt: skip


def test_installed_bundle_runs_in_a_python_less_image(
    runtime: ContainerRuntime, installed: Path, node_state: Path
) -> None:
    probe = _gpu_container(
        runtime, installed, node_state, "for p in python python3 python3.11; do command -v $p; done; echo probe-done"
    )  # fmt: skip
    assert probe.stdout.strip() == "probe-done", f"test image has Python: {probe.stdout}"
    for args in (["-L"], ["--query-gpu=index,uuid,name,memory.total", "--format=csv"]):
        quoted = " ".join(f"'{a}'" for a in args)
        done = _gpu_container(runtime, installed, node_state, f"nvidia-smi {quoted}")
        assert (done.returncode, done.stdout) == _in_process(args, node_state), done.stderr
    listed = _gpu_container(runtime, installed, node_state, "nvidia-smi -L").stdout
    assert listed.count("GPU ") == 8 and "(UUID: GPU-" in listed


def test_installed_bundle_glibc_needs(installed: Path) -> None:
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) reads the bundle's symbol versions"
    bundle = installed / "nvidia-smi"
    needed: set[tuple[int, ...]] = set()
    for path in [bundle / "nvidia-smi", *(p for p in bundle.rglob("*.so*") if p.is_file())]:
        out = subprocess.run(
            [objdump, "-T", str(path)], capture_output=True, text=True, check=False
        ).stdout
        needed |= {tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_([\d.]+)", out)}
    assert needed and max(needed) <= MAX_GLIBC, f"bundle needs glibc {max(needed)}"
