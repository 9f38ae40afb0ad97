"""The compute-domain.nvidia.com channel driver (DRIVER_MODE=compute-domain) with canned claims:
the shared Driver machinery with channel resolution and channel CDI edits plugged in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fgo_common import computedomain as cdn
from fgo_common.runtime.settings import SettingsError, load_settings
from fgo_dra_plugin import checkpoint as ckpt
from fgo_dra_plugin.cdi import CdiKind, CdiStore, ContainerSetup
from fgo_dra_plugin.channels import ChannelDriver, channel_config, published_channels
from fgo_dra_plugin.driver import ClaimRef, DriverMetrics
from fgo_dra_plugin.settings import Settings
from prometheus_client import CollectorRegistry

NODE = "node-a"
KIND = "k8s.compute-domain.nvidia.com/claim"
DOMAIN = "0d9a0c3e-0000-4000-8000-000000000001"


def channel_claim(
    uid: str,
    *,
    device: str = "channel-0",
    pool: str = NODE,
    mode: str | None = "Single",
    kind: str = cdn.CHANNEL_CONFIG_KIND,
) -> dict[str, Any]:
    allocation: dict[str, Any] = {
        "devices": {
            "results": [
                {"request": "channel", "driver": cdn.DRIVER, "pool": pool, "device": device}
            ]
        }
    }
    if mode is not None:
        params = {"apiVersion": cdn.API_VERSION, "kind": kind, "domainID": DOMAIN}
        params["allocationMode"] = mode
        allocation["devices"]["config"] = [
            {
                "source": "FromClaim",
                "requests": ["channel"],
                "opaque": {"driver": cdn.DRIVER, "parameters": params},
            }
        ]
    return {
        "metadata": {"namespace": "ns", "name": f"claim-{uid}", "uid": uid},
        "status": {"allocation": allocation},
    }


class Api:
    def __init__(self) -> None:
        self.claims: dict[str, dict[str, Any]] = {}

    def add(self, body: dict[str, Any]) -> ClaimRef:
        self.claims[body["metadata"]["name"]] = body
        return ClaimRef("ns", body["metadata"]["name"], body["metadata"]["uid"])

    async def fetch(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.claims.get(name)


def make_driver(tmp_path: Path, api: Api) -> ChannelDriver:
    return ChannelDriver(
        driver_name=cdn.DRIVER,
        node_name=NODE,
        fetch_claim=api.fetch,
        current_devices=lambda: None,
        cdi=CdiStore(tmp_path / "cdi", CdiKind.parse(KIND)),
        setup=ContainerSetup(node_name=NODE),
        checkpoint_path=tmp_path / "plugin" / "checkpoint.json",
        metrics=DriverMetrics(CollectorRegistry()),
    )


def spec_of(tmp_path: Path, uid: str) -> dict[str, Any]:
    path = tmp_path / "cdi" / f"k8s.compute-domain.nvidia.com-claim_{uid}.json"
    return json.loads(path.read_text())


def test_published_device_is_the_kwok_publishers() -> None:
    assert published_channels() == {"channel-0": cdn.channel_device(0)}


async def test_single_channel_prepare_writes_device_node_and_env(tmp_path: Path) -> None:
    api = Api()
    driver = make_driver(tmp_path, api)
    await driver.start()
    ref = api.add(channel_claim("u1"))
    result = (await driver.prepare([ref]))["u1"]
    assert result.error == ""
    (device,) = result.devices
    assert device.device == "channel-0" and device.pool == NODE
    assert device.cdi_device_ids == (f"{KIND}=u1-channel-0",)
    spec = spec_of(tmp_path, "u1")
    assert spec["kind"] == KIND
    (cdi_device,) = spec["devices"]
    assert cdi_device["name"] == "u1-channel-0"
    edits = cdi_device["containerEdits"]
    assert edits["env"] == ["COMPUTE_DOMAIN_DEVICE_channel_0_RESOURCE_CLAIM=u1"]
    assert edits["deviceNodes"] == [
        {
            "path": "/dev/nvidia-caps-imex-channels/channel0",
            "hostPath": "/dev/null",
            "type": "c",
            "major": 1,
            "minor": 3,
            "permissions": "rw",
        }
    ]
    env = spec["containerEdits"]["env"]
    assert f"KUBERNETES_NODE_NAME={NODE}" in env
    assert f"DRA_RESOURCE_DRIVER_NAME={cdn.DRIVER}" in env
    assert "IMEX_CHANNELS=0" in env
    assert f"COMPUTE_DOMAIN_UUID={DOMAIN}" in env
    # the checkpoint keeps mode and domain: the spec can be rebuilt without the API server
    saved = ckpt.load(driver.checkpoint_path, driver=cdn.DRIVER, node=NODE)[0]
    assert dict(saved.claims["u1"].devices[0].sharing) == {
        "allocationMode": "Single",
        "domainID": DOMAIN,
    }


async def test_all_mode_injects_every_channel(tmp_path: Path) -> None:
    api = Api()
    driver = make_driver(tmp_path, api)
    await driver.start()
    ref = api.add(channel_claim("u2", mode="All"))
    assert (await driver.prepare([ref]))["u2"].error == ""
    spec = spec_of(tmp_path, "u2")
    nodes = spec["devices"][0]["containerEdits"]["deviceNodes"]
    assert len(nodes) == cdn.MAX_CHANNELS == 2048
    assert nodes[-1]["path"] == "/dev/nvidia-caps-imex-channels/channel2047"
    assert "IMEX_CHANNELS=all" in spec["containerEdits"]["env"]


async def test_without_config_is_single(tmp_path: Path) -> None:
    api = Api()
    driver = make_driver(tmp_path, api)
    await driver.start()
    ref = api.add(channel_claim("u3", mode=None))
    assert (await driver.prepare([ref]))["u3"].error == ""
    env = spec_of(tmp_path, "u3")["containerEdits"]["env"]
    assert "IMEX_CHANNELS=0" in env
    assert not any(e.startswith("COMPUTE_DOMAIN_UUID=") for e in env)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (channel_claim("e1", mode="Some"), "unknown allocationMode 'Some'"),
        (channel_claim("e1", kind=cdn.DAEMON_CONFIG_KIND), "ComputeDomainDaemonConfig"),
        (channel_claim("e1", kind="GpuConfig"), "unknown opaque config kind 'GpuConfig'"),
        (channel_claim("e1", device="channel-5"), "channel-5 of claim ns/claim-e1 is not a device"),
        (channel_claim("e1", pool="node-b"), "pool 'node-b', not from this node's pool"),
    ],
)
async def test_bad_claims_fail_that_claim(
    tmp_path: Path, body: dict[str, Any], message: str
) -> None:
    api = Api()
    driver = make_driver(tmp_path, api)
    await driver.start()
    ref = api.add(body)
    result = (await driver.prepare([ref]))["e1"]
    assert message in result.error
    assert not (tmp_path / "cdi").exists() or not list((tmp_path / "cdi").iterdir())


async def test_checkpoint_survives_restart_and_restores_spec(tmp_path: Path) -> None:
    api = Api()
    driver = make_driver(tmp_path, api)
    await driver.start()
    ref = api.add(channel_claim("u4", mode="All"))
    first = (await driver.prepare([ref]))["u4"]
    spec_path = tmp_path / "cdi" / "k8s.compute-domain.nvidia.com-claim_u4.json"
    before = spec_path.read_text()
    spec_path.unlink()  # /var/run/cdi is a tmpfs: a reboot loses it
    api.claims.clear()  # the restarted plugin must not need the API server for known claims
    again = make_driver(tmp_path, api)
    await again.start()
    assert spec_path.read_text() == before
    second = (await again.prepare([ref]))["u4"]
    assert second.devices == first.devices
    assert (await again.unprepare([ref])) == {"u4": ""}
    assert not spec_path.exists()
    assert ckpt.load(again.checkpoint_path, driver=cdn.DRIVER, node=NODE)[0].claims == {}


def test_settings_compute_domain_mode(tmp_path: Path) -> None:
    settings = load_settings(
        Settings,
        {
            "NODE_NAME": NODE,
            "DRIVER_MODE": "compute-domain",
            "KUBELET_PLUGINS_DIRECTORY_PATH": str(tmp_path / "plugins"),
            "KUBELET_REGISTRAR_DIRECTORY_PATH": str(tmp_path / "reg"),
        },
    )
    assert settings.driver == cdn.DRIVER
    assert settings.effective_cdi_kind == KIND
    assert settings.dra_socket == tmp_path / "plugins" / cdn.DRIVER / "dra.sock"
    assert settings.registration_socket.name == f"{cdn.DRIVER}-reg.sock"
    gpu = load_settings(Settings, {"NODE_NAME": NODE})
    assert gpu.driver == "gpu.nvidia.com" and gpu.effective_cdi_kind == "k8s.gpu.nvidia.com/claim"
    with pytest.raises(SettingsError, match="DRIVER_MODE"):
        load_settings(Settings, {"NODE_NAME": NODE, "DRIVER_MODE": "imex"})


def test_channel_config_class_then_claim() -> None:
    allocation = channel_claim("x", mode="All")["status"]["allocation"]
    assert channel_config(allocation, "channel") == (DOMAIN, "All")
    assert channel_config(allocation, "other") == ("", "Single")
