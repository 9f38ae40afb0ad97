"""CDI specs carry the claim's GPUs and the nvidia-smi plumbing; files come and go cleanly."""

from __future__ import annotations

import json
from pathlib import Path

from fgo_dra_plugin.cdi import CdiKind, CdiStore, ContainerSetup, claim_spec, device_env

KIND = CdiKind.parse("k8s.gpu.nvidia.com/claim")
SETUP = ContainerSetup(
    node_name="node-a",
    nvidia_smi_host_path="/var/lib/fake-gpu-operator/bin/nvidia-smi",
    state_host_dir="/var/lib/fake-gpu-operator/state",
    state_container_dir="/run/fake-gpu-operator",
    bundle_host_dir="/var/lib/fake-gpu-operator/nvidia-smi",
    bundle_container_dir="/usr/local/fake-gpu",
    seed=7,
)


def test_claim_spec_sets_all_uuids_on_every_device_and_common_mounts() -> None:
    spec = claim_spec(KIND, "uid-1", [("gpu-0", "GPU-a"), ("gpu-1", "GPU-b")], SETUP)
    assert spec["cdiVersion"] == "0.5.0"
    assert spec["kind"] == "k8s.gpu.nvidia.com/claim"
    assert [d["name"] for d in spec["devices"]] == ["uid-1-gpu-0", "uid-1-gpu-1"]
    assert [d["containerEdits"]["env"] for d in spec["devices"]] == [
        ["NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-b", "GPU_DEVICE_gpu_0=gpu-0"],
        ["NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-b", "GPU_DEVICE_gpu_1=gpu-1"],
    ]
    common = spec["containerEdits"]
    assert common["env"] == [
        "NODE_NAME=node-a",
        "FGO_SEED=7",
        "FGO_NVIDIA_SMI_HOME=/usr/local/fake-gpu",
        "FGO_STATE_DIR=/run/fake-gpu-operator",
    ]
    assert common["mounts"] == [
        # The bundle the launcher execs, then the launcher where users call nvidia-smi.
        {
            "hostPath": "/var/lib/fake-gpu-operator/nvidia-smi",
            "containerPath": "/usr/local/fake-gpu",
            "options": ["ro", "nosuid", "nodev", "bind"],
        },
        {
            "hostPath": "/var/lib/fake-gpu-operator/bin/nvidia-smi",
            "containerPath": "/usr/bin/nvidia-smi",
            "options": ["ro", "nosuid", "nodev", "bind"],
        },
        # ... also at /bin, for images without a merged /usr (the reference's path).
        {
            "hostPath": "/var/lib/fake-gpu-operator/bin/nvidia-smi",
            "containerPath": "/bin/nvidia-smi",
            "options": ["ro", "nosuid", "nodev", "bind"],
        },
        {
            "hostPath": "/var/lib/fake-gpu-operator/state",
            "containerPath": "/run/fake-gpu-operator",
            "options": ["ro", "nosuid", "nodev", "bind"],
        },
    ]


def test_configurable_env_name_and_no_mounts_when_paths_are_empty() -> None:
    setup = ContainerSetup(node_name="n", visible_devices_env="FGO_VISIBLE_DEVICES")
    spec = claim_spec(KIND, "u", [("gpu-0", "GPU-a"), ("gpu-0", "GPU-a")], setup)
    assert [d["name"] for d in spec["devices"]] == ["u-gpu-0"]  # one CDI device per device
    assert spec["devices"][0]["containerEdits"]["env"] == [
        "FGO_VISIBLE_DEVICES=GPU-a",
        "GPU_DEVICE_gpu_0=gpu-0",
    ]
    assert spec["containerEdits"] == {"env": ["NODE_NAME=n", "FGO_SEED=0"]}


def test_gpu_device_env_in_both_namings_and_for_mig_devices() -> None:
    """The reference's GPU_DEVICE_<name, - as _>=<name> next to NVIDIA_VISIBLE_DEVICES."""
    uuid_name = "gpu-2a1b4c3d-0000-5111-8222-333344445555"
    spec = claim_spec(
        KIND,
        "u",
        [
            (uuid_name, "GPU-2A1B4C3D-0000-5111-8222-333344445555"),
            ("gpu-0-mig-1g10gb-19-0", "MIG-x"),
        ],
        ContainerSetup(node_name="n"),
    )
    envs = [d["containerEdits"]["env"] for d in spec["devices"]]
    assert envs[0][1] == "GPU_DEVICE_gpu_2a1b4c3d_0000_5111_8222_333344445555=" + uuid_name
    assert envs[1][1] == "GPU_DEVICE_gpu_0_mig_1g10gb_19_0=gpu-0-mig-1g10gb-19-0"
    assert all(e[0].startswith("NVIDIA_VISIBLE_DEVICES=") for e in envs)
    assert device_env("gpu-7") == "GPU_DEVICE_gpu_7=gpu-7"


def test_device_ids_are_fully_qualified() -> None:
    assert KIND.device_id("uid-1", "gpu-0") == "k8s.gpu.nvidia.com/claim=uid-1-gpu-0"
    assert KIND.spec_file_name("uid-1") == "k8s.gpu.nvidia.com-claim_uid-1.json"


def test_store_writes_lists_and_removes(tmp_path: Path) -> None:
    store = CdiStore(tmp_path, KIND)
    (tmp_path / "someone-else.json").write_text("{}")
    for uid in ("a", "b", "c"):
        store.write(uid, claim_spec(KIND, uid, [("gpu-0", "GPU-a")], SETUP))
    assert store.claim_uids() == {"a", "b", "c"}
    assert json.loads(store.path("a").read_text())["devices"][0]["name"] == "a-gpu-0"
    assert store.path("a").stat().st_mode & 0o777 == 0o644
    assert store.remove_all_but({"b"}) == ["a", "c"]
    assert store.claim_uids() == {"b"}
    assert store.remove("b") and not store.remove("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["someone-else.json"]


def test_store_of_missing_directory_is_empty(tmp_path: Path) -> None:
    assert CdiStore(tmp_path / "nope", KIND).claim_uids() == set()
