"""CDI spec files: how a prepared claim reaches the container.

The kubelet hands the CDI device IDs we return to the container runtime, which looks them up in
the spec files under ``CDI_ROOT`` and applies their container edits. One spec file per prepared
claim (kind ``k8s.gpu.nvidia.com/claim``, the NVIDIA DRA driver's; device names
``<claimUID>-<device>``, so two claims never collide):

* every device of the claim sets the visible-devices variable (``NVIDIA_VISIBLE_DEVICES`` by
  default) to *all* GPU UUIDs of the claim: a container that gets two devices gets two edits
  setting the same variable, and they must agree (a container referencing several claims sees
  the last claim's list; a known limit of environment-based device lists);
* every device also sets ``GPU_DEVICE_<name>=<device name>`` (the device name with characters
  outside ``[A-Za-z0-9_]`` as ``_``: ``GPU_DEVICE_gpu_0=gpu-0``), the variable
  run-ai/fake-gpu-operator's (and dra-example-driver's) containers get; scripts that list
  ``GPU_DEVICE_*`` to see their devices keep working;
* the spec-wide edits add what the fake nvidia-smi needs (design principle 5, the contract of
  docs/nvidia-smi.md, the same as the device plugin's Allocate): ``NODE_NAME``,
  ``FGO_STATE_DIR``, ``FGO_NVIDIA_SMI_HOME`` and the telemetry seed ``FGO_SEED``; read-only bind
  mounts of the nvidia-smi bundle directory, of the launcher (at the path users call; it execs
  the bundle, whose executable needs its ``_internal/`` next to it) and of the node-state
  *directory* (the snapshot file is replaced by rename; a file bind mount would keep showing
  the old inode).

Spec files are written atomically (temp file + rename) because runtimes watch the directory and
may read a half-written file otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgo_common.nodestate import (
    NVML_CONTAINER_PATH,
    SMI_CONTAINER_PATHS,
    SMI_HOME_ENV,
    STATE_DIR_ENV,
)

from fgo_dra_plugin.checkpoint import write_atomically

# 0.5.0 is the oldest version with everything we use (env, bind mounts with options) that
# containerd 1.7+ and CRI-O 1.28+ accept; the CDI library validates against the minimum needed.
CDI_VERSION = "0.5.0"
NODE_NAME_ENV = "NODE_NAME"
# Read by the fake nvidia-smi (services/nvidia-smi settings); the device plugin sets it too.
SEED_ENV = "FGO_SEED"
_BIND_RO = ["ro", "nosuid", "nodev", "bind"]
# NVIDIA's options for the MPS pipe and shm directories.
_BIND_RW = ["rw", "nosuid", "nodev", "bind"]
_NOT_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_NOT_ENV_CHARS = re.compile(r"[^A-Za-z0-9_]")
# run-ai/fake-gpu-operator 0.2 (after dra-example-driver): one variable per allocated device.
DEVICE_ENV_PREFIX = "GPU_DEVICE_"


def device_env(device: str) -> str:
    """``GPU_DEVICE_<device, - as _>=<device>``, as the reference's CDI edits spell it."""
    return f"{DEVICE_ENV_PREFIX}{_NOT_ENV_CHARS.sub('_', device)}={device}"


@dataclass(frozen=True, slots=True)
class ContainerSetup:
    """What every GPU container gets besides its device list (same as the device plugin's)."""

    node_name: str
    visible_devices_env: str = "NVIDIA_VISIBLE_DEVICES"
    nvidia_smi_host_path: str = ""
    nvidia_smi_container_path: str = ",".join(SMI_CONTAINER_PATHS)  # comma-separated
    state_host_dir: str = ""
    state_container_dir: str = ""
    bundle_host_dir: str = ""
    bundle_container_dir: str = ""
    seed: int = 0
    # The bundle's libnvidia-ml.so.1 on the host ("" = none: no NVML mount; docs/nvml.md).
    nvml_host_path: str = ""

    def common_edits(self) -> dict[str, Any]:
        env = [f"{NODE_NAME_ENV}={self.node_name}", f"{SEED_ENV}={self.seed}"]
        mounts: list[dict[str, Any]] = []
        if self.bundle_host_dir and self.bundle_container_dir:
            env.append(f"{SMI_HOME_ENV}={self.bundle_container_dir}")
            mounts.append(
                {
                    "hostPath": self.bundle_host_dir,
                    "containerPath": self.bundle_container_dir,
                    "options": list(_BIND_RO),
                }
            )
        if self.nvidia_smi_host_path:
            for path in filter(None, self.nvidia_smi_container_path.split(",")):
                mounts.append(
                    {
                        "hostPath": self.nvidia_smi_host_path,
                        "containerPath": path.strip(),
                        "options": list(_BIND_RO),
                    }
                )
        if self.state_host_dir and self.state_container_dir:
            env.append(f"{STATE_DIR_ENV}={self.state_container_dir}")
            mounts.append(
                {
                    "hostPath": self.state_host_dir,
                    "containerPath": self.state_container_dir,
                    "options": list(_BIND_RO),
                }
            )
        # NVML_CONTAINER_PATH: the fake NVML library, where NVIDIA's toolkit puts the real one;
        # it runs the bundle's nvidia-smi ($FGO_NVIDIA_SMI_HOME) for its data.
        if self.nvml_host_path and self.bundle_host_dir and self.bundle_container_dir:
            mounts.append(
                {
                    "hostPath": self.nvml_host_path,
                    "containerPath": NVML_CONTAINER_PATH,
                    "options": list(_BIND_RO),
                }
            )
        edits: dict[str, Any] = {"env": env}
        if mounts:
            edits["mounts"] = mounts
        return edits


@dataclass(frozen=True, slots=True)
class CdiKind:
    vendor: str
    device_class: str

    @classmethod
    def parse(cls, kind: str) -> CdiKind:
        vendor, _, device_class = kind.partition("/")
        return cls(vendor, device_class)

    def __str__(self) -> str:
        return f"{self.vendor}/{self.device_class}"

    def device_name(self, claim_uid: str, device: str) -> str:
        return _NOT_NAME_CHARS.sub("-", f"{claim_uid}-{device}")

    def device_id(self, claim_uid: str, device: str) -> str:
        """The fully qualified CDI device ID the kubelet passes to the runtime."""
        return f"{self}={self.device_name(claim_uid, device)}"

    @property
    def file_prefix(self) -> str:
        return f"{self.vendor}-{self.device_class}_"

    def spec_file_name(self, claim_uid: str) -> str:
        return f"{self.file_prefix}{_NOT_NAME_CHARS.sub('-', claim_uid)}.json"

    def claim_of_spec_file(self, file_name: str) -> str | None:
        if file_name.startswith(self.file_prefix) and file_name.endswith(".json"):
            return file_name[len(self.file_prefix) : -len(".json")]
        return None


@dataclass(frozen=True, slots=True)
class SharingEdits:
    """What a device's sharing config adds to its container edits (fgo_common.sharing)."""

    env: tuple[str, ...] = ()
    mounts: tuple[tuple[str, str], ...] = ()  # (host path, container path), read-write


def claim_spec(
    kind: CdiKind,
    claim_uid: str,
    devices: Sequence[tuple[str, str]],
    setup: ContainerSetup,
    sharing: Mapping[str, SharingEdits] | None = None,
) -> dict[str, Any]:
    """The CDI spec of one claim; ``devices`` = (device name, GPU/MIG UUID) per result,
    ``sharing`` = the extra edits of devices whose config asks for sharing."""
    uuids = list(dict.fromkeys(uuid for _, uuid in devices))
    visible = f"{setup.visible_devices_env}={','.join(uuids)}"
    cdi_devices = []
    for name in dict.fromkeys(name for name, _ in devices):
        edits: dict[str, Any] = {"env": [visible, device_env(name)]}
        extra = (sharing or {}).get(name)
        if extra is not None:
            edits["env"].extend(extra.env)
            if extra.mounts:
                edits["mounts"] = [
                    {"hostPath": host, "containerPath": path, "options": list(_BIND_RW)}
                    for host, path in extra.mounts
                ]
        cdi_devices.append({"name": kind.device_name(claim_uid, name), "containerEdits": edits})
    return {
        "cdiVersion": CDI_VERSION,
        "kind": str(kind),
        "devices": cdi_devices,
        "containerEdits": setup.common_edits(),
    }


class CdiStore:
    """The spec files of our kind in ``root``."""

    def __init__(self, root: Path, kind: CdiKind) -> None:
        self.root = root
        self.kind = kind

    def path(self, claim_uid: str) -> Path:
        return self.root / self.kind.spec_file_name(claim_uid)

    def write(self, claim_uid: str, spec: dict[str, Any]) -> Path:
        path = self.path(claim_uid)
        write_atomically(path, json.dumps(spec, indent=1).encode())
        path.chmod(0o644)  # runtimes read it; nothing secret in it
        return path

    def remove(self, claim_uid: str) -> bool:
        try:
            self.path(claim_uid).unlink()
        except FileNotFoundError:
            return False
        return True

    def claim_uids(self) -> set[str]:
        """Claims that have a spec file of ours."""
        try:
            names = [p.name for p in self.root.iterdir()]
        except FileNotFoundError:
            return set()
        return {uid for n in names if (uid := self.kind.claim_of_spec_file(n)) is not None}

    def remove_all_but(self, keep: Iterable[str]) -> list[str]:
        """Delete spec files of claims not in ``keep`` (left behind by a crash); their uids."""
        wanted = set(keep)
        removed = []
        for uid in sorted(self.claim_uids() - wanted):
            if self.remove(uid):
                removed.append(uid)
        return removed
