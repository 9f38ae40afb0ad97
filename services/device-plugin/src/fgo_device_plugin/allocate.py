"""What a container gets for its devices: the environment and mounts of the Allocate response.

Mirrors the NVIDIA device plugin's ``envvar`` device-list strategy (the allocated UUIDs in
``NVIDIA_VISIBLE_DEVICES``, or another name on nodes that also run the real NVIDIA runtime) and
adds what the fake nvidia-smi needs (design principle 5, contract in docs/nvidia-smi.md): the
bundle directory and the launcher at ``/usr/bin/nvidia-smi``, the node-local state directory
(read-only; a directory rather than the file, because the file is replaced by rename and a file
bind mount would keep showing the old inode), ``FGO_STATE_DIR``, ``FGO_NVIDIA_SMI_HOME`` and the
telemetry seed ``FGO_SEED``. ``NODE_NAME`` is set for tools written for the reference
implementation. All mounts are read-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fgo_common.nodestate import NVML_CONTAINER_PATH, SMI_CONTAINER_PATHS, STATE_DIR_ENV

NODE_NAME_ENV = "NODE_NAME"
# Read by the nvidia-smi launcher / CLI (docs/nvidia-smi.md, "Mounts").
NVIDIA_SMI_HOME_ENV = "FGO_NVIDIA_SMI_HOME"
SEED_ENV = "FGO_SEED"


@dataclass(frozen=True, slots=True)
class MountSpec:
    container_path: str
    host_path: str
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class ContainerSetup:
    """Everything but the device IDs that goes into every ContainerAllocateResponse."""

    node_name: str
    visible_devices_env: str = "NVIDIA_VISIBLE_DEVICES"
    nvidia_smi_host_path: str = ""
    nvidia_smi_container_path: str = ",".join(SMI_CONTAINER_PATHS)  # comma-separated
    bundle_host_dir: str = ""
    bundle_container_dir: str = ""
    state_host_dir: str = ""
    state_container_dir: str = ""
    seed: int = 0
    # The bundle's libnvidia-ml.so.1 on the host ("" = none: no NVML mount; docs/nvml.md).
    nvml_host_path: str = ""

    def envs(self, device_ids: Sequence[str]) -> dict[str, str]:
        out = {self.visible_devices_env: ",".join(device_ids), NODE_NAME_ENV: self.node_name}
        if self.state_host_dir and self.state_container_dir:
            out[STATE_DIR_ENV] = self.state_container_dir
        if self.bundle_host_dir and self.bundle_container_dir:
            out[NVIDIA_SMI_HOME_ENV] = self.bundle_container_dir
        out[SEED_ENV] = str(self.seed)
        return out

    def mounts(self) -> list[MountSpec]:
        out = []
        # The bundle directory and the launcher (a file mount) that execs it: a file mount of
        # the bundle's own executable would look for its _internal/ next to /usr/bin.
        if self.bundle_host_dir and self.bundle_container_dir:
            out.append(MountSpec(self.bundle_container_dir, self.bundle_host_dir))
        if self.nvidia_smi_host_path:
            for path in filter(None, self.nvidia_smi_container_path.split(",")):
                out.append(MountSpec(path.strip(), self.nvidia_smi_host_path))
        if self.state_host_dir and self.state_container_dir:
            out.append(MountSpec(self.state_container_dir, self.state_host_dir))
        # NVML_CONTAINER_PATH: the fake NVML library, where NVIDIA's toolkit puts the real one;
        # it runs the bundle's nvidia-smi ($FGO_NVIDIA_SMI_HOME) for its data.
        if self.nvml_host_path and self.bundle_host_dir and self.bundle_container_dir:
            out.append(MountSpec(NVML_CONTAINER_PATH, self.nvml_host_path))
        return out
