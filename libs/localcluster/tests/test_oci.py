"""The OCI runtime spec written for an image (pure; tests/images runs real containers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fgo_localcluster.oci import ContainerError, ImageConfig, Mount, runtime_spec

SERVICE = ImageConfig.from_oci(
    {
        "Entrypoint": ["fgo-status-updater"],
        "Env": ["PATH=/app/.venv/bin:/usr/bin", "PYTHONUNBUFFERED=1"],
        "User": "65532:65532",
        "Labels": {"org.opencontainers.image.title": "fgo-status-updater"},
    }
)


def _env(spec: dict[str, object]) -> dict[str, str]:
    return dict(e.partition("=")[::2] for e in spec["process"]["env"])  # type: ignore[index]


def test_runs_the_entrypoint_as_the_images_user_with_a_read_only_root() -> None:
    spec = runtime_spec(Path("/rootfs"), SERVICE, args=["--help"])
    process = spec["process"]
    assert process["args"] == ["fgo-status-updater", "--help"]
    assert process["user"] == {"uid": 65532, "gid": 65532}
    assert process["noNewPrivileges"] is True
    assert all(caps == [] for caps in process["capabilities"].values())
    assert spec["root"] == {"path": "/rootfs", "readonly": True}
    assert {"type": "network"} not in spec["linux"]["namespaces"]  # host network
    assert {m["destination"] for m in spec["mounts"]} >= {"/proc", "/dev", "/tmp", "/sys"}


def test_entrypoint_override_drops_the_images_cmd_and_env_is_merged() -> None:
    config = ImageConfig(entrypoint=["/pause"], cmd=["-v"], env=["A=1", "B=2"])
    spec = runtime_spec(Path("/r"), config, entrypoint=["id", "-u"], env={"B": "3", "C": "4"})
    assert spec["process"]["args"] == ["id", "-u"]
    assert _env(spec) == {"A": "1", "B": "3", "C": "4", "PATH": _env(spec)["PATH"]}
    assert runtime_spec(Path("/r"), config)["process"]["args"] == ["/pause", "-v"]
    assert runtime_spec(Path("/r"), config, args=[])["process"]["args"] == ["/pause"]


def test_bind_mounts_and_user_override() -> None:
    spec = runtime_spec(
        Path("/r"), SERVICE, user=(0, 0),
        mounts=[Mount(Path("/host/k"), "/var/run/fgo/kubeconfig"),
                Mount(Path("/host/d"), "/host/dir", readonly=False)],
        cgroup="/fgo-containers/x",
    )  # fmt: skip
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}
    binds = [m for m in spec["mounts"] if m["type"] == "bind"]
    assert binds == [
        {"destination": "/var/run/fgo/kubeconfig", "type": "bind", "source": "/host/k",
         "options": ["rbind", "ro"]},
        {"destination": "/host/dir", "type": "bind", "source": "/host/d",
         "options": ["rbind", "rw"]},
    ]  # fmt: skip
    assert spec["linux"]["cgroupsPath"] == "/fgo-containers/x"


@pytest.mark.parametrize(
    ("user", "expected"), [("", (0, 0)), ("65532", (65532, 65532)), ("1:2", (1, 2))]
)
def test_numeric_users(user: str, expected: tuple[int, int]) -> None:
    assert ImageConfig(user=user).uid_gid() == expected


def test_named_user_and_empty_command_are_refused() -> None:
    with pytest.raises(ContainerError, match="not numeric"):
        ImageConfig(user="nobody").uid_gid()
    with pytest.raises(ContainerError, match="neither ENTRYPOINT nor CMD"):
        runtime_spec(Path("/r"), ImageConfig())
