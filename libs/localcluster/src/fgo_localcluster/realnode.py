"""A real node in the local cluster: kubelet + containerd + runc + CNI, as local processes.

``RealNode.add`` issues the kubelet's certificates from the cluster CA, writes the configs
(:mod:`fgo_localcluster.nodeconfig`), creates the node's namespaces, veth and cgroup root
(:mod:`fgo_localcluster.nodehost`), starts apiforward, containerd and the kubelet, imports
the local images and waits for the Node to be Ready. ``RealNode.stop`` undoes all of it from
the node's record alone, also after a kill -9 of any of those processes. Needs root.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from fgo_localcluster import health, nodehost, process
from fgo_localcluster.components import Health
from fgo_localcluster.kubeconfig import render_kubeconfig, write_kubeconfig
from fgo_localcluster.layout import ClusterRecord, StateLayout
from fgo_localcluster.nodeconfig import (
    APISERVER_IN_NODE,
    CONTAINERD_SOCKET,
    NodeLayout,
    NodeRecord,
    cgroup_root,
    host_veth,
    write_configs,
)
from fgo_localcluster.nodes import POOL_LABEL
from fgo_localcluster.nodetools import (
    NODE_BINARIES,
    NodeToolsError,
    archive_digests,
    image_index_path,
    images_from_index,
    parse_ctr_images,
    resolve_node_bin_dir,
)
from fgo_localcluster.rest import Rest, RestError

Progress = Callable[[str], None]

NODE_COMPONENTS = ("apiforward", "containerd", "kubelet")
DEFAULT_NODE_NAME = "real-node-1"
HOST_COMMANDS = ("unshare", "nsenter", "mount", "umount", "ip", "sysctl")


class RealNodeError(NodeToolsError):
    """The real node could not be set up or cleaned; the message names cause and fix."""


__all__ = [
    "DEFAULT_NODE_NAME",
    "NODE_COMPONENTS",
    "RealNode",
    "RealNodeError",
    "active_node_names",
    "image_index_path",
    "images_from_index",
    "node_names",
    "resolve_node_bin_dir",
    "stop_all",
]


@dataclass(frozen=True)
class NodeComponentStatus:
    name: str  # e.g. "real-node-1/kubelet"
    pid: int | None
    running: bool
    healthy: bool
    detail: str
    log: Path


def node_names(state_dir: Path) -> list[str]:
    """Real nodes that have a record under ``<state>/nodes``."""
    nodes_dir = state_dir / "nodes"
    if not nodes_dir.is_dir():
        return []
    return sorted(p.name for p in nodes_dir.iterdir() if (p / "node.json").is_file())


def active_node_names(state_dir: Path) -> list[str]:
    """Real nodes that were added and not stopped since (pid files or pinned namespaces)."""
    active = []
    for name in node_names(state_dir):
        layout = NodeLayout(state_dir, name)
        if nodehost.namespaces_pinned(layout) or any(
            layout.pid_file(c).exists() for c in NODE_COMPONENTS
        ):
            active.append(name)
    return active


def _log_error_line(path: Path) -> str:
    """The last line that looks like an error in a component's log (kubelet: "E1207 ...")."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    for line in reversed(lines):
        if (line.startswith(("E", "F")) and line[1:5].isdigit()) or "level=error" in line:
            return line.strip()[:400]
        if "level=fatal" in line or "error" in line.lower():
            return line.strip()[:400]
    return (lines[-1] if lines else "(empty log)")[:400]


def _path_env(bin_dir: str) -> dict[str, str]:
    # The node's binaries first: containerd finds its runc shim on PATH.
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}


def _fresh(condition: dict[str, str], since: dt.datetime | None) -> bool:
    if since is None:
        return True
    stamp = condition.get("lastHeartbeatTime") or ""
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")) >= since
    except ValueError:
        return False


def exec_env(layout: NodeLayout, record: NodeRecord) -> dict[str, str]:
    """Environment for debugging commands in the node (crictl, ctr find their endpoints)."""
    return {
        **os.environ,
        **_path_env(record.bin_dir),
        "CRI_CONFIG_FILE": str(layout.crictl_config),
        "CONTAINERD_ADDRESS": CONTAINERD_SOCKET,
        "CONTAINERD_NAMESPACE": "k8s.io",
    }


class RealNode:
    """One real node of the cluster in ``state_dir``."""

    def __init__(self, state_dir: Path, name: str, progress: Progress) -> None:
        self.state_dir = state_dir
        self.name = name
        self.layout = NodeLayout(state_dir, name)
        self.cluster = StateLayout(state_dir)
        self._progress = progress
        self._t0 = time.monotonic()

    @property
    def record(self) -> NodeRecord | None:
        return NodeRecord.load(self.layout.record)

    @property
    def veth(self) -> str:
        return host_veth(self.state_dir, self.name)

    @property
    def cgroup_root(self) -> str:
        return cgroup_root(self.state_dir, self.name)

    def _say(self, message: str) -> None:
        self._progress(f"[{time.monotonic() - self._t0:5.1f}s] {self.name}: {message}")

    def pid_record(self, component: str) -> process.PidRecord | None:
        return process.PidRecord.read(self.layout.pid_file(component))

    def running(self, component: str) -> bool:
        rec = self.pid_record(component)
        return rec is not None and process.is_running(rec)

    # ------------------------------------------------------------------ add

    async def add(
        self,
        pool: str,
        bin_dir: Path,
        *,
        images: list[tuple[str, Path]],
        timeout_s: float = 180.0,
    ) -> None:
        self._t0 = time.monotonic()
        self._preflight(bin_dir)
        cluster = ClusterRecord.load(self.cluster.record)
        if not cluster.ports.apiserver or not (await self._apiserver_ok()):
            raise RealNodeError(
                f"no running control plane in {self.state_dir}; run `fgo cluster up` first"
            )
        if all(self.running(c) for c in NODE_COMPONENTS):
            self._say("already running")
            return
        previous = self.record
        if (
            previous is not None
            and nodehost.namespaces_pinned(self.layout)
            and previous.apiserver_port == cluster.ports.apiserver
            and previous.pool == pool
        ):
            # Like `cluster up`: start only what is not running (e.g. after a kill -9 of one
            # component); running pods are kept.
            await self._start_missing(previous, timeout_s)
            return
        if nodehost.namespaces_pinned(self.layout) or any(self.running(c) for c in NODE_COMPONENTS):
            self._say("cleaning up a previous instance that cannot be resumed")
            await self.stop()

        record = await self._new_record(pool, bin_dir, cluster.ports.apiserver)
        record.save(self.layout.record)
        self._issue_certificates(record)
        write_configs(
            self.layout,
            record,
            ca_cert=self.cluster.pki.ca_cert,
            feature_gates=cluster.feature_gates,
        )
        for directory in (self.layout.containerd_root, self.layout.root / "logs"):
            directory.mkdir(parents=True, exist_ok=True)
        try:
            nodehost.create_cgroup_root(self.cgroup_root)
            await nodehost.create_namespaces(self.layout, record, self.veth)
            self._say(
                f"namespaces and link ready: node IP {record.node_ip} (host end {self.veth} "
                f"{record.host_ip}), pods {record.pod_cidr}, cgroups under {self.cgroup_root}"
            )
            await self._start_apiforward(record)
            await self._start_containerd(record)
            if images:
                await self.load_images(images)
            await self._start_kubelet(record)
            await self._wait_ready(timeout_s)
        except (nodehost.NodeHostError, RealNodeError) as exc:
            # One line for the user; the half-made node is removed so a retry starts clean.
            with contextlib.suppress(Exception):
                await self.stop(quiet=True)
            raise RealNodeError(str(exc)) from None

    def _starters(self) -> dict[str, Callable[[NodeRecord], Awaitable[None]]]:
        return {
            "apiforward": self._start_apiforward,
            "containerd": self._start_containerd,
            "kubelet": self._start_kubelet,
        }

    async def _start_missing(self, record: NodeRecord, timeout_s: float) -> None:
        since = dt.datetime.now(dt.UTC).replace(microsecond=0)
        starters = self._starters()
        missing = [c for c in NODE_COMPONENTS if not self.running(c)]
        self._say(f"resuming: starting {', '.join(missing)}")
        try:
            for component in missing:
                await starters[component](record)
            await self._wait_ready(timeout_s, since=since if "kubelet" in missing else None)
        except (nodehost.NodeHostError, RealNodeError) as exc:
            raise RealNodeError(str(exc)) from None

    def _preflight(self, bin_dir: Path) -> None:
        if os.geteuid() != 0:
            raise RealNodeError(
                "a real node needs root (namespaces, mounts, a veth link, cgroups); run as root"
            )
        missing = [c for c in HOST_COMMANDS if shutil.which(c) is None]
        if missing:
            raise RealNodeError(
                f"missing host commands: {', '.join(missing)}; install util-linux and iproute2"
            )
        absent = [b for b in NODE_BINARIES if not os.access(bin_dir / b, os.X_OK)]
        if absent:
            raise RealNodeError(f"{', '.join(absent)} missing in {bin_dir}; run `make node-tools`")
        if not nodehost.cgroup_hierarchies(("cgroup",)):
            raise RealNodeError(
                "no cgroup v1 hierarchy mounted under /sys/fs/cgroup; the real node is made "
                "for cgroup v1 hosts (kubelet cgroupfs driver)"
            )
        nodehost.check_state_dir_visible(self.layout)

    async def _apiserver_ok(self) -> bool:
        port = ClusterRecord.load(self.cluster.record).ports.apiserver
        result = await health.probe(
            Health(f"https://127.0.0.1:{port}/readyz", tls=True, client_cert=True),
            self.cluster.pki,
        )
        return result.ok

    async def _new_record(self, pool: str, bin_dir: Path, apiserver_port: int) -> NodeRecord:
        previous = self.record
        taken = {
            r.slot
            for n in node_names(self.state_dir)
            if n != self.name and (r := NodeRecord.load(NodeLayout(self.state_dir, n).record))
        }
        host_nets = await nodehost.host_networks()
        # Keep the previous addresses when they are still free (same node IP as last time).
        if previous is not None and nodehost.slot_is_free(previous.slot, taken, host_nets):
            slot = previous.slot
        else:
            slot = nodehost.choose_slot(taken, host_nets)
        return NodeRecord(self.name, pool, slot, str(bin_dir), apiserver_port)

    def _issue_certificates(self, record: NodeRecord) -> None:
        pki = self.cluster.pki
        subject = f"system:node:{self.name}"
        # NodeRestriction: the kubelet may only touch its own Node and pods as system:node:<name>.
        pki.issue_leaf(self.layout.pki / "kubelet-client", subject, ("system:nodes",))
        pki.issue_leaf(
            self.layout.pki / "kubelet-serving",
            subject,
            ("system:nodes",),
            dns=(self.name,),
            ips=(record.node_ip,),
            server=True,
        )
        host, port = APISERVER_IN_NODE
        write_kubeconfig(
            self.layout.kubeconfig,
            render_kubeconfig(
                f"https://{host}:{port}",
                pki.ca_cert,
                self.layout.pki / "kubelet-client.crt",
                self.layout.pki / "kubelet-client.key",
                subject,
            ),
        )

    async def _spawn(
        self, component: str, argv: list[str], *, executable: str, env: dict[str, str] | None = None
    ) -> process.PidRecord:
        rec = await process.spawn(
            argv,
            self.layout.log(component),
            self.layout.pid_file(component),
            env,
            executable=executable,
        )
        # nsenter execs into the component: wait until the pid runs it.
        deadline = time.monotonic() + 5.0
        while True:
            if process.is_running(rec) or time.monotonic() > deadline:
                break
            if not process.pid_exists(rec.pid):
                break  # already exited; the caller reports it with its log line
            await asyncio.sleep(0.05)
        self._say(f"{component}: started (pid {rec.pid}), log {self.layout.log(component)}")
        return rec

    def _died(self, component: str, fix: str) -> RealNodeError:
        log = self.layout.log(component)
        return RealNodeError(f"{component} exited: {_log_error_line(log)} ({fix}; log: {log})")

    async def _start_apiforward(self, record: NodeRecord) -> None:
        host, port = APISERVER_IN_NODE
        log = self.layout.log("apiforward")
        start = log.stat().st_size if log.exists() else 0
        rec = await self._spawn(
            "apiforward",
            [
                sys.executable,
                "-m",
                "fgo_localcluster.apiforward",
                f"--netns={self.layout.net_ns}",
                f"--listen={host}:{port}",
                f"--connect=127.0.0.1:{record.apiserver_port}",
            ],
            executable=sys.executable,
        )
        deadline = time.monotonic() + 30.0
        while "apiforward: serving" not in log.read_text(errors="replace")[start:]:
            if not process.is_running(rec):
                raise self._died("apiforward", "is the node's network namespace gone?")
            if time.monotonic() > deadline:
                raise RealNodeError(f"apiforward did not start listening in 30s; see {log}")
            await asyncio.sleep(0.1)

    async def _start_containerd(self, record: NodeRecord) -> None:
        bin_dir = Path(record.bin_dir)
        # The runc shim is found on PATH (containerd's own rule).
        env = _path_env(str(bin_dir))
        rec = await self._spawn(
            "containerd",
            [
                *nodehost.nsenter(self.layout),
                str(bin_dir / "containerd"),
                f"--config={self.layout.containerd_config}",
            ],
            executable=str(bin_dir / "containerd"),
            env=env,
        )
        socket_path = self.layout.host_path(CONTAINERD_SOCKET)
        deadline = time.monotonic() + 60.0
        while True:
            if not process.is_running(rec):
                raise self._died("containerd", "see its log for the failing plugin")
            if socket_path.exists():
                with contextlib.suppress(nodehost.NodeHostError):
                    await self.ctr(["version"])
                    break
            if time.monotonic() > deadline:
                raise RealNodeError(
                    f"containerd not answering on {socket_path} after 60s; "
                    f"see {self.layout.log('containerd')}"
                )
            await asyncio.sleep(0.2)
        self._say("containerd: ready")

    async def ctr(self, args: list[str], stdin_path: Path | None = None) -> str:
        record = self.record
        if record is None:
            raise RealNodeError(f"no real node {self.name!r} in {self.state_dir}")
        argv = [
            *nodehost.nsenter(self.layout),
            str(Path(record.bin_dir) / "ctr"),
            f"--address={CONTAINERD_SOCKET}",
            "--namespace=k8s.io",
            *args,
        ]
        if stdin_path is None:
            return await nodehost.run(argv, what=f"ctr {' '.join(args[:2])}")
        with stdin_path.open("rb") as fh:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=fh, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            last = text.strip().splitlines()[-1] if text.strip() else f"exit {proc.returncode}"
            raise RealNodeError(f"ctr {' '.join(args[:2])} failed: {last}")
        return text

    async def load_images(self, images: list[tuple[str, Path]]) -> list[str]:
        """Import OCI/Docker archives into the node's containerd (k8s.io namespace)."""
        if not self.running("containerd"):
            raise RealNodeError(
                f"containerd of {self.name} is not running; run `fgo cluster add-real-node` first"
            )
        loaded = []
        present = parse_ctr_images(await self.ctr(["images", "ls"]))
        for name, archive in images:
            if not archive.is_file():
                raise RealNodeError(f"image archive {archive} ({name}) does not exist; rebuild it")
            digests = archive_digests(archive)
            if digests and all(present.get(n) == d for n, d in digests.items()):
                self._say(f"image {name} already present")
                continue
            started = time.monotonic()
            # Streamed on stdin: the archive need not be visible inside the node's mounts.
            await self.ctr(["images", "import", "--snapshotter=overlayfs", "-"], archive)
            loaded.append(name)
            self._say(f"image {name} imported in {time.monotonic() - started:.1f}s")
        return loaded

    async def _start_kubelet(self, record: NodeRecord) -> None:
        bin_dir = Path(record.bin_dir)
        env = _path_env(str(bin_dir))
        await self._spawn(
            "kubelet",
            [
                *nodehost.nsenter(self.layout),
                str(bin_dir / "kubelet"),
                f"--config={self.layout.kubelet_config}",
                f"--kubeconfig={self.layout.kubeconfig}",
                f"--hostname-override={self.name}",
                f"--node-ip={record.node_ip}",
                f"--node-labels={POOL_LABEL}={record.pool}",
                "--v=2",
            ],
            executable=str(bin_dir / "kubelet"),
            env=env,
        )

    async def _wait_ready(self, timeout_s: float, *, since: dt.datetime | None = None) -> None:
        """Until the Node is Ready (with a heartbeat at or after ``since``, if given)."""
        cluster = ClusterRecord.load(self.cluster.record)
        deadline = time.monotonic() + timeout_s
        detail = "not registered yet"
        async with Rest(f"https://127.0.0.1:{cluster.ports.apiserver}", self.cluster.pki) as api:
            while True:
                if not self.running("kubelet"):
                    raise self._died("kubelet", "fix that and add the node again")
                for component in ("containerd", "apiforward"):
                    if not self.running(component):
                        raise self._died(component, "fix that and add the node again")
                try:
                    node = await api.get(f"/api/v1/nodes/{self.name}")
                    ready = [
                        c
                        for c in node.get("status", {}).get("conditions", [])
                        if c.get("type") == "Ready"
                    ]
                    if ready and ready[0].get("status") == "True" and _fresh(ready[0], since):
                        break
                    if ready:
                        detail = f"Ready={ready[0].get('status')}: {ready[0].get('message', '')}"
                except RestError as exc:
                    if exc.status != 404:
                        raise
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    detail = f"apiserver: {exc}"
                if time.monotonic() > deadline:
                    raise RealNodeError(
                        f"node {self.name} not Ready after {timeout_s:.0f}s ({detail}); "
                        f"see {self.layout.log('kubelet')}"
                    )
                await asyncio.sleep(0.25)
        self._say(f"Ready after {time.monotonic() - self._t0:.1f}s")

    # ------------------------------------------------------------------ stop

    async def stop(self, *, quiet: bool = False) -> list[str]:
        """Stop every process of the node and remove its mounts, link and cgroups."""
        say = (lambda _m: None) if quiet else self._say
        done: list[str] = []

        async def terminate(component: str, grace_s: float) -> None:
            rec = self.pid_record(component)
            if rec is not None:
                outcome = await process.terminate(rec, grace_s)
                if outcome != "not running":
                    done.append(f"{component} {outcome}")
                self.layout.pid_file(component).unlink(missing_ok=True)

        await terminate("kubelet", 10.0)
        await self._delete_node_object()
        # Containers (pods) next: they live under the kubelet's cgroupRoot.
        await nodehost.kill_cgroup_tree(self.cgroup_root)
        await terminate("containerd", 10.0)
        # Whatever else runs in the node's namespaces: shims, a debugging crictl, ...
        leftovers = nodehost.pids_in_namespaces(self.layout)
        if leftovers:
            nodehost.kill_pids(leftovers)
            done.append(f"{len(leftovers)} other processes killed")
            deadline = time.monotonic() + 10.0
            while True:
                if not nodehost.pids_in_namespaces(self.layout) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
        await terminate("apiforward", 5.0)
        await nodehost.kill_cgroup_tree(self.cgroup_root)
        busy = nodehost.remove_cgroup_tree(self.cgroup_root)
        unmounted = await nodehost.unmount_all(self.layout.root)
        if unmounted:
            done.append(f"{len(unmounted)} mounts removed")
        if await nodehost.delete_link(self.veth):
            done.append(f"link {self.veth} deleted")
        if done:
            say("stopped: " + ", ".join(done))
        problems = []
        if busy:
            problems.append(f"cgroups still busy: {', '.join(busy[:3])}")
        if nodehost.mounts_under(self.layout.root):
            problems.append(f"mounts left under {self.layout.root}")
        if nodehost.link_exists(self.veth):
            problems.append(f"link {self.veth} still exists")
        if problems:
            raise RealNodeError(
                f"real node {self.name} not fully cleaned: {'; '.join(problems)}; "
                "run `fgo cluster down` again"
            )
        return done

    async def _delete_node_object(self) -> None:
        """A stopped real node does not come back with `fgo cluster up`: remove its Node (and
        so, through pod GC, its pods) while the apiserver is still there. Best effort."""
        port = ClusterRecord.load(self.cluster.record).ports.apiserver
        if not port or not self.layout.record.exists():
            return
        with contextlib.suppress(RestError, aiohttp.ClientError, OSError, TimeoutError):
            async with Rest(f"https://127.0.0.1:{port}", self.cluster.pki, timeout_s=5.0) as api:
                await api.request("DELETE", f"/api/v1/nodes/{self.name}")

    async def restart(self, component: str, timeout_s: float = 120.0) -> None:
        """Stop (SIGTERM, then SIGKILL) and start one component of a running node; for the
        kubelet, wait until the Node is Ready again. Pods keep running meanwhile."""
        if component not in NODE_COMPONENTS:
            raise ValueError(f"unknown component {component!r}; one of {NODE_COMPONENTS}")
        record = self.record
        if record is None or not nodehost.namespaces_pinned(self.layout):
            raise RealNodeError(f"real node {self.name} is not running; add it first")
        self._t0 = time.monotonic()
        since = dt.datetime.now(dt.UTC).replace(microsecond=0)
        rec = self.pid_record(component)
        if rec is not None:
            await process.terminate(rec, 10.0)
        await self._starters()[component](record)
        if component == "kubelet":
            # The Node still looks Ready from before; wait for the new kubelet's heartbeat.
            await self._wait_ready(timeout_s, since=since)

    # ------------------------------------------------------------------ status

    async def status(self) -> list[NodeComponentStatus]:
        record = self.record
        result = []
        for component in NODE_COMPONENTS:
            rec = self.pid_record(component)
            running = rec is not None and process.is_running(rec)
            healthy, detail = running, "ok" if running else "not running"
            if running and component == "kubelet" and record is not None:
                # The kubelet's secure port, verified against the cluster CA (its serving
                # certificate) and authorised by webhook (the admin is allowed).
                probe = await health.probe(
                    Health(f"https://{record.node_ip}:10250/healthz", tls=True, client_cert=True),
                    self.cluster.pki,
                )
                healthy, detail = probe.ok, probe.detail
            elif running and component == "containerd":
                sock = self.layout.host_path(CONTAINERD_SOCKET)
                healthy = sock.exists()
                detail = "ok" if healthy else f"no socket at {sock}"
            result.append(
                NodeComponentStatus(
                    f"{self.name}/{component}",
                    rec.pid if rec and running else None,
                    running,
                    healthy,
                    detail,
                    self.layout.log(component),
                )
            )
        return result


async def stop_all(state_dir: Path, progress: Progress) -> None:
    """Stop and clean every real node of the cluster (``fgo cluster down``)."""
    errors = []
    for name in node_names(state_dir):
        try:
            await RealNode(state_dir, name, progress).stop()
        except (RealNodeError, nodehost.NodeHostError) as exc:
            errors.append(str(exc))
    if errors:
        raise RealNodeError("; ".join(errors))
