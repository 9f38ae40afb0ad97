"""The real node's paths, addresses and config files, as pure functions of its record.

A real node (``fgo cluster add-real-node``) keeps everything under ``<state>/nodes/<name>/``.
Its kubelet, containerd and pods run in a private mount namespace where three directories of
that tree are bind-mounted over the host's ``/var/lib``, ``/var/log`` and ``/run`` (the paths
the kubelet, CNI and containerd write whatever their config says), and in a network namespace
of their own joined to the host by a veth pair. docs/local-cluster.md ("Real node") has the
whole picture.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from fgo_localcluster.layout import write_atomic

# Inside the node's network namespace the apiserver is reached at the `kubernetes` Service's
# ClusterIP: that address sits on the namespace's loopback and apiforward listens on it, so the
# kubelet and every pod (hostNetwork or not) use the in-cluster address the apiserver's
# certificate already names.
APISERVER_IN_NODE = ("10.96.0.1", 443)
# Per node slot s: the veth pair is 10.250.s.0/30 (host .1, node .2 = the Node's InternalIP)
# and the pods' bridge 10.244.s.0/24 (gateway .1).
LINK_NET = ipaddress.ip_network("10.250.0.0/16")
POD_NET = ipaddress.ip_network("10.244.0.0/16")
MAX_SLOTS = 256
SANDBOX_IMAGE = "localhost/fgo/pause:3.10"
# The node's view of these host directories is its own tree under <node>/fs.
PRIVATE_DIRS = ("/var/lib", "/var/log", "/run")
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"  # path inside the node's mount namespace
KUBELET_ROOT = "/var/lib/kubelet"  # idem: the standard path, so the chart's hostPaths match


@dataclass(frozen=True)
class NodeRecord:
    """``node.json``: what is needed to run, inspect and clean up one real node."""

    name: str
    pool: str
    slot: int
    bin_dir: str
    apiserver_port: int

    @property
    def host_ip(self) -> str:
        return str(LINK_NET.network_address + (self.slot << 8) + 1)

    @property
    def node_ip(self) -> str:
        return str(LINK_NET.network_address + (self.slot << 8) + 2)

    @property
    def link_cidr(self) -> str:
        return f"{LINK_NET.network_address + (self.slot << 8)}/30"

    @property
    def pod_cidr(self) -> str:
        return f"{POD_NET.network_address + (self.slot << 8)}/24"

    @property
    def pod_gateway(self) -> str:
        return str(POD_NET.network_address + (self.slot << 8) + 1)

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> NodeRecord | None:
        try:
            raw = json.loads(path.read_text())
            return cls(
                str(raw["name"]),
                str(raw["pool"]),
                int(raw["slot"]),
                str(raw["bin_dir"]),
                int(raw["apiserver_port"]),
            )
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class NodeLayout:
    """Paths of one real node under ``<state>/nodes/<name>``."""

    state_dir: Path
    name: str

    @property
    def root(self) -> Path:
        return self.state_dir / "nodes" / self.name

    @property
    def record(self) -> Path:
        return self.root / "node.json"

    @property
    def ns_dir(self) -> Path:
        return self.root / "ns"

    @property
    def mnt_ns(self) -> Path:
        return self.ns_dir / "mnt"

    @property
    def net_ns(self) -> Path:
        return self.ns_dir / "net"

    def private_dir(self, target: str) -> Path:
        """Where the node's ``/var/lib``, ``/var/log`` or ``/run`` is on the host."""
        return self.root / "fs" / target.lstrip("/")

    def host_path(self, node_path: str) -> Path:
        """Where a path the node's processes see (e.g. a hostPath) is on the host."""
        for target in PRIVATE_DIRS:
            if node_path == target or node_path.startswith(target + "/"):
                return self.private_dir(target) / node_path[len(target) :].lstrip("/")
        if node_path.startswith("/var/run/"):
            return self.host_path("/run/" + node_path.removeprefix("/var/run/"))
        return Path(node_path)

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubelet.kubeconfig"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cdi_dir(self) -> Path:
        """The node's /var/run/cdi (the DRA plugin's hostPath), seen from the host."""
        return self.host_path("/var/run/cdi")

    @property
    def crictl_config(self) -> Path:
        return self.root / "crictl.yaml"

    def log(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.root / "run" / f"{component}.pid"


def host_veth(state_dir: Path, name: str) -> str:
    """Host end of the node's veth pair: unique per (state dir, node), at most 15 chars."""
    digest = hashlib.sha256(f"{state_dir.resolve()}\0{name}".encode()).hexdigest()[:10]
    return f"fgo{digest}"


def cgroup_root(state_dir: Path, name: str) -> str:
    """The kubelet's cgroupRoot: its kubepods tree lives under it, never at /kubepods."""
    digest = hashlib.sha256(f"{state_dir.resolve()}\0{name}".encode()).hexdigest()[:8]
    return f"/fgo-{digest}-{name}"


def containerd_config(layout: NodeLayout, record: NodeRecord) -> str:
    """containerd 2.x config (version 3): CRI with CDI, runc, CNI, a pinned sandbox image."""
    bin_dir = Path(record.bin_dir)
    runtime = "plugins.'io.containerd.cri.v1.runtime'"
    return f"""# Written by fgo (fgo_localcluster.nodeconfig); rewritten at every add-real-node.
version = 3
root = "{layout.containerd_root}"
state = "{layout.containerd_state}"
# Only the CRI needs what these would start or write outside the state dir.
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[debug]
  level = "info"

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "{layout.root / "containerd" / "opt"}"

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{SANDBOX_IMAGE}"

  [{runtime}]
    # These machines withhold CAP_SYS_RESOURCE: runc cannot lower oom_score_adj, and every
    # sandbox would fail ("can't get final child's PID from pipe: EOF").
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    # CDI is always on in containerd 2.x; the DRA plugin writes its specs to the node's
    # /var/run/cdi (its hostPath), which is this directory.
    cdi_spec_dirs = ["{layout.cdi_dir}"]
    [{runtime}.containerd]
      default_runtime_name = "runc"
      [{runtime}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [{runtime}.containerd.runtimes.runc.options]
          BinaryName = "{bin_dir / "runc"}"
          Root = "/run/containerd/runc"
          SystemdCgroup = false
    [{runtime}.cni]
      bin_dirs = ["{bin_dir / "cni"}"]
      conf_dir = "{layout.cni_conf_dir}"
      max_conf_num = 1

  [plugins.'io.containerd.grpc.v1.cri']
    # exec/attach/port-forward streams: loopback of the node's network namespace, where the
    # kubelet (which proxies them for the apiserver) runs too.
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
"""


def cni_conflist(record: NodeRecord) -> dict[str, Any]:
    """One bridge inside the node's network namespace; no masquerade, no port mapping.

    ``isGateway`` turns on ip_forward, but only in the node's namespace (the sysctl is per
    namespace); the host's stays as it was, so pod traffic cannot leave the machine.
    """
    return {
        "cniVersion": "1.0.0",
        "name": "fgo-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": record.pod_cidr, "gateway": record.pod_gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ],
    }


def kubelet_config(
    layout: NodeLayout,
    record: NodeRecord,
    *,
    ca_cert: Path,
    feature_gates: dict[str, bool],
) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # cgroup v1 machines: 1.35+ kubelets refuse v1 unless told otherwise.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root(layout.state_dir, record.name),
        # Otherwise the kubelet adds KUBE-FIREWALL chains (a DROP for 127.0.0.0/8).
        "makeIPTablesUtilChains": False,
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        "address": record.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(layout.pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(layout.pki / "kubelet-serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "registerNode": True,
        "clusterDomain": "cluster.local",
        # No cluster DNS, and never the host's resolvers: pods get an empty resolv.conf.
        "resolvConf": str(layout.resolv_conf),
        "failSwapOn": False,
        # Lowering its own oom_score_adj needs CAP_SYS_RESOURCE, which is withheld here.
        "oomScoreAdj": 0,
        # Images cannot be pulled again (no registry): never garbage-collect them, and do not
        # evict for a host disk that is merely fuller than a node's defaults like.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "serializeImagePulls": False,
        "featureGates": dict(sorted(feature_gates.items())),
    }


def crictl_config() -> dict[str, Any]:
    return {
        "runtime-endpoint": f"unix://{CONTAINERD_SOCKET}",
        "image-endpoint": f"unix://{CONTAINERD_SOCKET}",
        "timeout": 10,
    }


def write_configs(
    layout: NodeLayout, record: NodeRecord, *, ca_cert: Path, feature_gates: dict[str, bool]
) -> None:
    write_atomic(layout.containerd_config, containerd_config(layout, record))
    write_atomic(
        layout.cni_conf_dir / "10-fgo-pods.conflist", json.dumps(cni_conflist(record), indent=2)
    )
    write_atomic(
        layout.kubelet_config,
        yaml.safe_dump(
            kubelet_config(layout, record, ca_cert=ca_cert, feature_gates=feature_gates),
            sort_keys=False,
        ),
    )
    write_atomic(layout.crictl_config, yaml.safe_dump(crictl_config(), sort_keys=False))
    write_atomic(layout.resolv_conf, "# fgo real node: no DNS (names never leave this machine)\n")
