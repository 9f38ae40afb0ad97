"""The images the chart runs: every command it names exists in the image, the node agents'
images ship the standalone nvidia-smi, and the installer their init container runs works.

Here the Dockerfiles are read (tests/repo checks hadolint, COPY sources and ENTRYPOINTs) and the
installer script runs on a bundle-shaped directory; tests/images runs the built images.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from chartlib import ROOT, Rendered

INSTALLER = ROOT / "hack" / "images" / "fgo-install-nvidia-smi"
BUNDLE_IN_IMAGE = "/opt/fake-gpu-operator/nvidia-smi"
NODE_AGENTS = ("device-plugin", "dra-plugin")


def _dockerfile(repository: str) -> str:
    return (ROOT / "services" / repository / "Dockerfile").read_text()


def _console_scripts(repository: str) -> dict[str, str]:
    project = tomllib.loads((ROOT / "services" / repository / "pyproject.toml").read_text())
    return dict(project["project"].get("scripts", {}))


def _copied_executables(dockerfile: str) -> dict[str, str]:
    """Destination -> source of every plain COPY (not --from) into the image."""
    out = {}
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            out[parts[-1]] = parts[-2]
    return out


def test_every_command_the_chart_runs_exists_in_its_image(everything: Rendered) -> None:
    seen = 0
    for workload in everything.workloads():
        spec = workload["spec"]["template"]["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            repository = c["image"].rsplit("/", 1)[-1].split(":", 1)[0]
            command = (c.get("command") or [None])[0]
            if command is None:
                continue  # the image's ENTRYPOINT, checked by tests/repo
            seen += 1
            copied = _copied_executables(_dockerfile(repository))
            on_path = {Path(dest).name: src for dest, src in copied.items()
                       if dest.startswith(("/usr/local/bin/", "/usr/bin/"))}  # fmt: skip
            assert command in _console_scripts(repository) or command in on_path, (
                f"{workload['metadata']['name']}/{c['name']} runs {command!r}, which image "
                f"{repository} has neither as a console script nor copied onto PATH"
            )
            if command in on_path:
                source = ROOT / on_path[command]
                assert source.stat().st_mode & stat.S_IXUSR, f"{source} is not executable"
    assert seen >= 2, "the node agents' init containers were not found"


@pytest.mark.parametrize("repository", NODE_AGENTS)
def test_node_agent_images_ship_the_standalone_nvidia_smi(repository: str) -> None:
    dockerfile = _dockerfile(repository)
    build = (ROOT / "services" / "nvidia-smi" / "build.sh").read_text()
    # build.sh writes <repo>/build/nvidia-smi/dist/nvidia-smi; the stage runs it in /app.
    assert 'out="${FGO_SMI_BUILD_DIR:-$root/build/nvidia-smi}"' in build
    assert "RUN services/nvidia-smi/build.sh" in dockerfile
    assert re.search(r"WORKDIR /app\n(?:.*\n)*RUN services/nvidia-smi/build.sh", dockerfile)
    assert (
        f"COPY --from=nvidia-smi /app/build/nvidia-smi/dist/nvidia-smi {BUNDLE_IN_IMAGE}"
        in dockerfile
    )
    assert "COPY hack/images/fgo-install-nvidia-smi /usr/local/bin/fgo-install-nvidia-smi" in (
        dockerfile
    )
    assert f'DEFAULT_BUNDLE = Path("{BUNDLE_IN_IMAGE}")' in INSTALLER.read_text()


def test_node_agents_mount_what_the_installer_writes(everything: Rendered) -> None:
    """The init container installs into the host dir the main container tells the plugin."""
    for name in ("fgo-device-plugin", "fgo-dra-plugin"):
        spec = everything.get("DaemonSet", name)["spec"]["template"]["spec"]
        init = spec["initContainers"][0]
        dest = init["command"][1]
        host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
        mount = next(m for m in init["volumeMounts"] if m["mountPath"] == dest)
        host_dir = host[mount["name"]]
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["NVIDIA_SMI_HOST_PATH"] == f"{host_dir}/bin/nvidia-smi", name
        if "NVIDIA_SMI_BUNDLE_HOST_DIR" in env:
            assert env["NVIDIA_SMI_BUNDLE_HOST_DIR"] == f"{host_dir}/nvidia-smi", name


def _bundle(tmp_path: Path, payload: str = "v1") -> Path:
    bundle = tmp_path / f"bundle-{payload}"
    (bundle / "_internal").mkdir(parents=True)
    (bundle / "nvidia-smi").write_text(f"#!/bin/sh\necho {payload}\n")
    (bundle / "nvidia-smi").chmod(0o755)
    (bundle / "_internal" / "base_library.zip").write_text(payload)
    (bundle / "launcher").write_text(f"#!/bin/sh\necho launcher {payload}\n")
    return bundle


def _install(dest: Path, bundle: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(INSTALLER), str(dest), "--bundle", str(bundle)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_installer_puts_the_bundle_and_launcher_on_the_host(tmp_path: Path) -> None:
    dest = tmp_path / "host" / "var" / "lib" / "fake-gpu-operator"
    dest.mkdir(parents=True)
    v1 = _bundle(tmp_path)
    first = _install(dest, v1)
    assert first.returncode == 0, first.stderr
    assert "installed" in first.stdout
    home = dest / "nvidia-smi"
    assert home.is_symlink() and (home / "_internal" / "base_library.zip").read_text() == "v1"
    launcher = dest / "bin" / "nvidia-smi"
    assert launcher.read_text() == "#!/bin/sh\necho launcher v1\n"
    assert launcher.stat().st_mode & 0o777 == 0o755
    # Idempotent: a restarted pod does not churn the host files.
    again = _install(dest, v1)
    assert again.returncode == 0 and "already up to date" in again.stdout
    # A new image version replaces it (the previous version is kept for running containers).
    # (install_nvidia_smi identifies a bundle by file sizes and whole-second mtimes: give the
    # new one other sizes, as a rebuilt bundle has, so it is not taken for the same one.)
    upgrade = _install(dest, _bundle(tmp_path, "v2.0"))
    assert upgrade.returncode == 0 and "installed" in upgrade.stdout
    assert (home / "_internal" / "base_library.zip").read_text() == "v2.0"
    assert launcher.read_text().endswith("launcher v2.0\n")


def test_installer_refuses_what_it_cannot_install(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = _install(dest, empty)
    assert bad.returncode == 1 and "is not an nvidia-smi bundle" in bad.stderr
    unmounted = _install(tmp_path / "nowhere", _bundle(tmp_path))
    assert unmounted.returncode == 1 and "is not a directory" in unmounted.stderr


def test_images_script_builds_every_service_under_the_charts_names() -> None:
    script = (ROOT / "hack" / "images.sh").read_text()
    dockerfiles = sorted(p.parent.name for p in ROOT.glob("services/*/Dockerfile"))
    assert set(NODE_AGENTS) <= set(dockerfiles)
    # Every repository the chart can reference has a Dockerfile (kwok capacity reuses
    # device-plugin; nvidia-smi is the extra standalone image).
    defaults = (ROOT / "charts" / "fake-gpu-operator" / "values.yaml").read_text()
    for repository in set(re.findall(r"repository: ([\w-]+)", defaults)):
        assert repository in dockerfiles, repository
    assert 'image="$REGISTRY/$service:$TAG"' in script


def test_images_script_with_docker_forced_fails_clearly_without_an_engine(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    docker = fake_bin / "docker"
    docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    docker.chmod(0o755)
    result = subprocess.run(
        [str(ROOT / "hack" / "images.sh")],
        capture_output=True,
        text=True,
        env={"PATH": f"{fake_bin}:/usr/bin:/bin", "BUILDER": "docker"},
        check=False,
    )
    assert result.returncode == 2
    assert "no Docker engine is reachable" in result.stderr
    assert "Cannot connect to the Docker daemon" in result.stderr


def test_images_script_without_engine_or_buildah_says_what_to_install(tmp_path: Path) -> None:
    # A PATH with a docker client whose engine is down, and no buildah: the daemonless
    # fallback is chosen and names the package to install.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    docker = fake_bin / "docker"
    docker.write_text("#!/bin/sh\nexit 1\n")
    docker.chmod(0o755)
    for tool in ("bash", "sh", "sed", "dirname", "id", "cat", "git", "printf"):
        found = shutil.which(tool)
        if found:
            (fake_bin / tool).symlink_to(found)
    result = subprocess.run(
        [str(ROOT / "hack" / "images.sh")],
        capture_output=True,
        text=True,
        env={"PATH": str(fake_bin), "HOME": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "buildah is not installed" in result.stderr
    assert "make host-deps" in result.stderr
