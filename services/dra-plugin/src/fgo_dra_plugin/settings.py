"""Every option of the DRA kubelet plugin, read once from the environment into one typed object.

Names and defaults of the container-facing options (visible-devices variable, nvidia-smi and
state mounts, topology ConfigMap) are the device plugin's, so both node agents inject the same
things and write the same node-local snapshot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from fgo_common import computedomain
from fgo_common.dradevices import (
    UNHEALTHY_POLICIES,
    DeviceNaming,
    UnhealthyPolicy,
    device_naming_setting,
)
from fgo_common.names import DRA, DraNames
from fgo_common.nodestate import (
    DEFAULT_STATE_DIR,
    SMI_CONTAINER_DIR,
    SMI_CONTAINER_PATHS,
    SMI_HOST_DIR,
)
from fgo_common.runtime.settings import SettingsError, env_field
from fgo_common.sharing import parse_feature_gates
from fgo_common.topology import node_topology_configmap_name
from fgo_kubelet_api import pluginregistration_v1 as reg

DEFAULT_TOPOLOGY_NAMESPACE = "gpu-operator"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CDI_KIND = re.compile(r"^[a-z0-9]+(?:[.-][a-z0-9]+)*\.[a-z]+/[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


# Which kubelet driver this process serves (one per process, each in its own DaemonSet).
MODE_GPU = "gpu"
MODE_COMPUTE_DOMAIN = "compute-domain"
DRIVER_MODES = (MODE_GPU, MODE_COMPUTE_DOMAIN)
DEFAULT_CDI_KIND = "k8s.gpu.nvidia.com/claim"
# NVIDIA's compute-domain kubelet plugin: vendor k8s.compute-domain.nvidia.com, class claim.
COMPUTE_DOMAIN_CDI_KIND = f"k8s.{computedomain.DRIVER}/claim"


@dataclass(frozen=True)
class Settings:
    driver_mode: str = env_field(
        "DRIVER_MODE", MODE_GPU,
        "which driver this process serves: `gpu` (gpu.nvidia.com: GPUs and MIG from the "
        "topology record) or `compute-domain` (compute-domain.nvidia.com: the node's IMEX "
        "channel slice and channel claims, docs/computedomains.md)",
        choices=DRIVER_MODES,
    )  # fmt: skip
    node_name: str = env_field("NODE_NAME", "", "this node (downward API spec.nodeName); required")
    pod_namespace: str = env_field(
        "POD_NAMESPACE", "", "namespace of this pod (downward API); default topology namespace"
    )
    topology_namespace: str = env_field(
        "TOPOLOGY_CM_NAMESPACE", "",
        f"namespace of the topology ConfigMaps (default: POD_NAMESPACE, else "
        f"{DEFAULT_TOPOLOGY_NAMESPACE})",
    )  # fmt: skip
    topology_name: str = env_field(
        "TOPOLOGY_CM_NAME", "topology", "prefix of the per-node ConfigMaps `<prefix>-<node>`"
    )
    kubeconfig: str = env_field(
        "KUBECONFIG", "", "kubeconfig file (empty: in-cluster config, else ~/.kube/config)"
    )
    registrar_dir: str = env_field(
        "KUBELET_REGISTRAR_DIRECTORY_PATH", reg.KUBELET_PLUGINS_REGISTRY_DIR,
        "the kubelet's plugin registration directory (our `gpu.nvidia.com-reg.sock` goes here)",
    )  # fmt: skip
    plugins_dir: str = env_field(
        "KUBELET_PLUGINS_DIRECTORY_PATH", reg.KUBELET_PLUGINS_DIR,
        "the kubelet's plugins directory; ours is `<dir>/gpu.nvidia.com` (dra.sock, checkpoint)",
    )  # fmt: skip
    socket_check_seconds: float = env_field(
        "SOCKET_CHECK_INTERVAL_SECONDS", 1.0,
        "how often our sockets are checked; a removed one (kubelet restart that wiped the "
        "directory) is re-created, which makes the kubelet register us again",
    )  # fmt: skip
    cdi_root: str = env_field(
        "CDI_ROOT", "/var/run/cdi", "directory of the CDI spec files the container runtime reads"
    )
    cdi_kind: str = env_field(
        "CDI_KIND", DEFAULT_CDI_KIND,
        "CDI `vendor/class` of our per-claim devices (the NVIDIA DRA driver's kind; in "
        f"compute-domain mode the default becomes {COMPUTE_DOMAIN_CDI_KIND})",
    )  # fmt: skip
    visible_devices_env_name: str = env_field(
        "VISIBLE_DEVICES_ENV_NAME", "NVIDIA_VISIBLE_DEVICES",
        "container variable carrying the claim's GPU UUIDs (e.g. FGO_VISIBLE_DEVICES on nodes "
        "that also run the real NVIDIA container runtime)",
    )  # fmt: skip
    nvidia_smi_host_path: str = env_field(
        "NVIDIA_SMI_HOST_PATH", "/var/lib/fake-gpu-operator/bin/nvidia-smi",
        "host path of the fake nvidia-smi mounted into GPU containers (empty: no mount)",
    )  # fmt: skip
    nvidia_smi_container_path: str = env_field(
        "NVIDIA_SMI_CONTAINER_PATH", ",".join(SMI_CONTAINER_PATHS),
        "where GPU containers find nvidia-smi (comma-separated: one mount each; /bin too for "
        "images without a merged /usr)",
    )  # fmt: skip
    nvidia_smi_bundle_host_dir: str = env_field(
        "NVIDIA_SMI_BUNDLE_HOST_DIR", SMI_HOST_DIR,
        "host directory of the nvidia-smi bundle the launcher at NVIDIA_SMI_HOST_PATH executes "
        "(fgo-install-nvidia-smi puts it there), mounted into GPU containers (empty: no mount)",
    )  # fmt: skip
    nvidia_smi_bundle_container_dir: str = env_field(
        "NVIDIA_SMI_BUNDLE_CONTAINER_DIR", SMI_CONTAINER_DIR,
        "where GPU containers see the bundle (exported to them as FGO_NVIDIA_SMI_HOME)",
    )  # fmt: skip
    seed: int = env_field(
        "FGO_SEED", 0,
        "telemetry seed passed to GPU containers (must equal the status-exporter's, so "
        "nvidia-smi in a pod prints the numbers the metrics show)",
    )  # fmt: skip
    state_dir: str = env_field(
        "STATE_DIR", "/var/lib/fake-gpu-operator/state",
        "directory (as this container sees it) the node-local topology snapshot is written to",
    )  # fmt: skip
    state_host_dir: str = env_field(
        "STATE_HOST_DIR", "",
        "host path of STATE_DIR, mounted read-only into GPU containers (empty: same as STATE_DIR)",
    )  # fmt: skip
    state_container_dir: str = env_field(
        "STATE_CONTAINER_DIR", DEFAULT_STATE_DIR,
        "where GPU containers see the snapshot (exported to them as FGO_STATE_DIR)",
    )  # fmt: skip
    publish_slices: bool = env_field(
        "PUBLISH_RESOURCE_SLICES", True,
        "publish this node's ResourceSlices (off: someone else does)",
    )  # fmt: skip
    unhealthy_devices: str = env_field(
        "UNHEALTHY_DEVICES", "taint",
        "what an unhealthy GPU becomes in the slice: `taint` (NoSchedule, as the NVIDIA driver "
        "does), `omit` or `publish`",
        choices=UNHEALTHY_POLICIES,
    )  # fmt: skip
    dra_driver_version: str = env_field(
        "DRA_DRIVER_VERSION", "0.4", "NVIDIA DRA driver release whose attribute names to publish",
        choices=tuple(DRA),
    )  # fmt: skip
    device_naming: str = device_naming_setting()
    instance: str = env_field(
        "INSTANCE", "dra-plugin",
        "value of the `fake-gpu-operator/publisher` label on our slices (and field manager)",
    )  # fmt: skip
    feature_gates: str = env_field(
        "FEATURE_GATES", "",
        "NVIDIA driver feature gates for GPU sharing, `Gate=true|false` comma-separated: "
        "TimeSlicingSettings, MPSSupport (both on by default; off: a claim asking for that "
        "strategy fails to prepare, as with NVIDIA's driver)",
    )  # fmt: skip
    healthcheck_port: int = env_field(
        "HEALTHCHECK_PORT", 51515, "TCP port of the gRPC health service (grpc.health.v1; 0: off)"
    )
    health_port: int = env_field("HEALTH_PORT", 8080, "port of /healthz, /readyz, /metrics")
    log_level: str = env_field("LOG_LEVEL", "INFO", "log level", choices=LOG_LEVELS)

    def validate(self) -> None:
        if not self.node_name:
            raise SettingsError("NODE_NAME is required (downward API spec.nodeName)")
        if self.socket_check_seconds <= 0:
            raise SettingsError("SOCKET_CHECK_INTERVAL_SECONDS must be > 0")
        if not _ENV_NAME.match(self.visible_devices_env_name):
            raise SettingsError(
                f"VISIBLE_DEVICES_ENV_NAME={self.visible_devices_env_name!r}: expected an "
                "environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
            )
        if not _CDI_KIND.match(self.cdi_kind):
            raise SettingsError(
                f"CDI_KIND={self.cdi_kind!r}: expected `<vendor domain>/<class>`, e.g. "
                "k8s.gpu.nvidia.com/claim"
            )
        if not _LABEL_VALUE.match(self.instance):
            raise SettingsError(f"INSTANCE={self.instance!r}: must be a label value (1-63 chars)")
        if not 0 <= self.healthcheck_port <= 65535:
            raise SettingsError(f"HEALTHCHECK_PORT={self.healthcheck_port}: not a port")
        try:
            parse_feature_gates(self.feature_gates)
        except ValueError as exc:
            raise SettingsError(f"FEATURE_GATES={self.feature_gates!r}: {exc}") from None

    @property
    def gates(self) -> dict[str, bool]:
        return parse_feature_gates(self.feature_gates)

    @property
    def names(self) -> DraNames:
        return DRA[self.dra_driver_version]

    @property
    def compute_domain(self) -> bool:
        return self.driver_mode == MODE_COMPUTE_DOMAIN

    @property
    def driver(self) -> str:
        return computedomain.DRIVER if self.compute_domain else self.names.driver

    @property
    def effective_cdi_kind(self) -> str:
        if self.compute_domain and self.cdi_kind == DEFAULT_CDI_KIND:
            return COMPUTE_DOMAIN_CDI_KIND
        return self.cdi_kind

    @property
    def unhealthy_policy(self) -> UnhealthyPolicy:
        return cast("UnhealthyPolicy", self.unhealthy_devices)

    @property
    def naming(self) -> DeviceNaming:
        return cast("DeviceNaming", self.device_naming)

    @property
    def effective_topology_namespace(self) -> str:
        return self.topology_namespace or self.pod_namespace or DEFAULT_TOPOLOGY_NAMESPACE

    @property
    def topology_configmap(self) -> str:
        return node_topology_configmap_name(self.topology_name, self.node_name)

    @property
    def effective_state_host_dir(self) -> str:
        return self.state_host_dir or self.state_dir

    @property
    def plugin_data_dir(self) -> Path:
        return Path(self.plugins_dir) / self.driver

    @property
    def dra_socket(self) -> Path:
        return self.plugin_data_dir / reg.DRA_SOCKET_NAME

    @property
    def registration_socket(self) -> Path:
        return Path(self.registrar_dir) / reg.registration_socket_name(self.driver)

    @property
    def checkpoint_path(self) -> Path:
        return self.plugin_data_dir / "checkpoint.json"

    @property
    def mps_root(self) -> Path:
        """Per-claim MPS pipe/shm/log directories (NVIDIA's driver keeps them here too)."""
        return self.plugin_data_dir / "mps"
