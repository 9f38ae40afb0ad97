"""Helpers behind the pytest fixtures of tests/integration and tests/e2e.

Kept here (typed, importable) rather than in conftest files so both test trees and ad-hoc
scripts share one implementation: polling with a deadline, per-test namespaces, KWOK nodes
that are cleaned up, and the component-log excerpts attached to failing tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import secrets
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fgo_common.runtime.settings import env_field, load_settings

from fgo_localcluster import nodehost, nodes

if TYPE_CHECKING:
    from kubernetes_asyncio import client

    from fgo_localcluster.realnode import RealNode

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class TestClusterSettings:
    """How the test session gets its control plane."""

    __test__ = False  # not a pytest test class despite the name

    state_dir: str | None = env_field(
        "FGO_TEST_CLUSTER_STATE_DIR",
        None,
        "Reuse (start if needed, never stop) the cluster in this state dir instead of a "
        "throw-away one per session; makes repeated local runs start instantly.",
    )
    log_tail_lines: int = env_field(
        "FGO_TEST_LOG_TAIL_LINES",
        40,
        "Lines of each component's log shown for a failing test (0 turns it off).",
    )


def test_cluster_settings() -> TestClusterSettings:
    return load_settings(TestClusterSettings)


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.25,
) -> T:
    """Poll ``probe`` until it returns something other than None/False; fail with ``what``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            result = await probe()
            if result is not None and result is not False:
                return result
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            suffix = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{suffix}")
        await asyncio.sleep(interval_s)


async def wait_service_ready(
    readiness: Any, task: asyncio.Task[Any], *, condition: str, what: str, timeout_s: float = 60
) -> None:
    """Wait until a service run in-process is Ready (or fail with what its task raised).

    ``condition`` must be among the required ones: before the service requires any, its
    Readiness is vacuously true."""
    await eventually(
        lambda: asyncio.sleep(
            0, (condition in readiness.describe() and readiness.ready) or task.done()
        ),
        timeout_s=timeout_s,
        what=what,
    )
    if task.done():
        raise AssertionError(f"{what}: the service ended ({task.result()!r})")


def dns_label(text: str, max_len: int = 40) -> str:
    """A lower-case DNS-1123 label made from ``text`` (e.g. a test name)."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:max_len].rstrip("-") or "x"


def unique_name(base: str, max_len: int = 50) -> str:
    suffix = secrets.token_hex(3)
    return f"{dns_label(base, max_len - len(suffix) - 1)}-{suffix}"


async def create_namespace(api: client.ApiClient, name: str) -> None:
    """Create a namespace and wait for its default ServiceAccount.

    Pods are rejected by the ServiceAccount admission plugin until the controller-manager has
    created that account, so a test that creates pods right away would flake without this.
    The wait is long because right after an apiserver restart the controller-manager's
    informers sit in client-go's reflector backoff (30 s cap, jitter up to 2x), so a namespace
    created then can wait about a minute for its account; CI saw 60 s run out once.
    """
    from kubernetes_asyncio import client

    core: Any = client.CoreV1Api(api)  # dict bodies; the stubs only know model objects
    await core.create_namespace({"metadata": {"name": name, "labels": {"fgo.test": "true"}}})
    await eventually(
        lambda: core.read_namespaced_service_account("default", name),
        timeout_s=180,
        what=f"ServiceAccount {name}/default",
    )


async def delete_namespace(api: client.ApiClient, name: str) -> None:
    """Delete without waiting: namespace cleanup runs in the controller-manager."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        await client.CoreV1Api(api).delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


class KwokNodeFactory:
    """Creates KWOK nodes with a per-test name prefix and deletes them all at the end."""

    def __init__(self, api: client.ApiClient, prefix: str) -> None:
        self._api = api
        self._prefix = prefix
        self._created: list[str] = []

    @property
    def created(self) -> list[str]:
        return list(self._created)

    async def __call__(
        self,
        count: int = 1,
        *,
        pool: str = "default",
        labels: dict[str, str] | None = None,
        extra_capacity: dict[str, str] | None = None,
        cpu: str = "32",
        memory: str = "128Gi",
        pods: str = "110",
        wait_ready: bool = True,
        timeout_s: float = 60.0,
    ) -> list[str]:
        names = nodes.next_names(self._prefix, count, self._created)
        bodies = [
            nodes.kwok_node(
                n,
                pool,
                cpu=cpu,
                memory=memory,
                pods=pods,
                labels=labels,
                extra_capacity=extra_capacity,
            )
            for n in names
        ]
        self._created += names
        await nodes.create_nodes(self._api, bodies)
        if wait_ready:
            await self.wait_ready(names, timeout_s=timeout_s)
        return names

    async def wait_ready(self, names: list[str], *, timeout_s: float = 60.0) -> None:
        """Ready *and* schedulable: the not-ready taint the node-lifecycle controller put on
        the new node is gone, otherwise the scheduler would still refuse it."""
        from kubernetes_asyncio import client

        core = client.CoreV1Api(self._api)

        async def all_ready() -> bool:
            for name in names:
                node = await core.read_node(name)
                taints = {t.key for t in (node.spec.taints or [])}
                if not nodes.node_is_ready(node) or "node.kubernetes.io/not-ready" in taints:
                    return False
            return True

        await eventually(all_ready, timeout_s=timeout_s, what=f"nodes {names} Ready")

    async def cleanup(self) -> None:
        await nodes.delete_nodes(self._api, self._created)
        self._created.clear()


def log_offsets(paths: dict[str, Path]) -> dict[str, int]:
    """Current size of each log, to show later only what a test's run added."""
    offsets: dict[str, int] = {}
    for name, path in paths.items():
        try:
            offsets[name] = path.stat().st_size
        except FileNotFoundError:
            offsets[name] = 0
    return offsets


def log_excerpts(paths: dict[str, Path], offsets: dict[str, int], lines: int) -> str:
    """The last ``lines`` lines each component logged since ``offsets`` was taken."""
    parts: list[str] = []
    for name, path in paths.items():
        try:
            with path.open("rb") as fh:
                size = path.stat().st_size
                start = offsets.get(name, 0)
                # A log that shrank was rotated by a cluster restart: show its new content.
                fh.seek(start if start <= size else 0)
                text = fh.read().decode(errors="replace")
        except FileNotFoundError:
            continue
        tail = text.splitlines()[-lines:]
        header = f"----- {name} ({path}), last {len(tail)} lines during the test -----"
        parts.append("\n".join([header, *tail]) if tail else f"{header}\n(nothing logged)")
    return "\n".join(parts)


def pod_phase(pod: Any) -> str | None:
    return pod.status.phase if pod is not None and pod.status is not None else None


# ----------------------------------------------------------------------------- real nodes

# Host paths the kubelet, CNI and containerd would write if a real node were not isolated.
HOST_PATHS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/var/run/cdi",
    "/etc/containerd",
    "/opt/containerd",
)


def _iptables_rules() -> str:
    # Counters change with traffic; the rules are what matters.
    out = subprocess.run(["iptables-save"], check=True, capture_output=True, text=True).stdout
    return "\n".join(ln for ln in out.splitlines() if ln and ln[0] not in "#:")


@dataclasses.dataclass(frozen=True)
class HostSnapshot:
    """What a real node must leave as it was on the host."""

    ip_forward: str
    iptables: str
    links: frozenset[str]
    existing_paths: frozenset[str]

    @classmethod
    def take(cls) -> HostSnapshot:
        return cls(
            Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
            _iptables_rules(),
            frozenset(p.name for p in Path("/sys/class/net").iterdir()),
            frozenset(p for p in HOST_PATHS if os.path.lexists(p)),
        )


def pids_in_namespaces(inodes: set[int]) -> list[str]:
    """Processes whose mount or network namespace is one of ``inodes``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        for kind in ("mnt", "net"):
            try:
                if (proc / "ns" / kind).stat().st_ino in inodes:
                    found.append(proc.name)
                    break
            except OSError:
                continue
    return found


def _describe_pid(pid: str) -> str:
    """``(state) command line`` of a process, for a failure message."""
    try:
        cmdline = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        stat = (Path("/proc") / pid / "stat").read_text()
        state = stat[stat.rindex(")") + 2 :].split()[0]
        ppid = stat[stat.rindex(")") + 2 :].split()[1]
    except (OSError, ValueError, IndexError):
        return "(gone)"
    return f"({state}, ppid {ppid}) {cmdline.decode(errors='replace')[:200]}"


@dataclasses.dataclass(frozen=True)
class NodeTraces:
    """A running real node's marks on the host, taken before ``fgo cluster down``.

    Holds open file descriptors of the node's mount and network namespaces until ``close``:
    a namespace's inode number is reused by the next namespace anyone creates once it is
    freed, so without them a process of an unrelated new namespace could look like a leftover.
    """

    state_dir: Path
    cgroup_root: str
    veth: str
    namespace_inodes: frozenset[int]
    fds: tuple[int, ...]

    @classmethod
    def of(cls, node: RealNode) -> NodeTraces:
        pins = (node.layout.net_ns, node.layout.mnt_ns)
        fds = tuple(os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in pins)
        return cls(
            node.state_dir,
            node.cgroup_root,
            node.veth,
            frozenset(os.fstat(fd).st_ino for fd in fds),
            fds,
        )

    def processes(self) -> list[str]:
        return pids_in_namespaces(set(self.namespace_inodes))

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def leftovers(traces: NodeTraces, before: HostSnapshot) -> list[str]:
    """What a stopped real node left behind (empty: nothing): mounts under the state dir,
    processes in its namespaces, its cgroups, links, and any change to ``ip_forward``, the
    iptables rules or the host paths of :data:`HOST_PATHS`."""
    problems = []
    if mounts := nodehost.mounts_under(traces.state_dir):
        problems.append(f"mounts under the state dir: {mounts[:5]}")
    if pids := nodehost.cgroup_pids(traces.cgroup_root):
        problems.append(f"processes in the node's cgroups: {pids[:10]}")
    rel = traces.cgroup_root.lstrip("/")
    if cgroups := [str(h / rel) for h in nodehost.cgroup_hierarchies() if (h / rel).exists()]:
        problems.append(f"cgroups: {cgroups[:5]}")
    if kubepods := [str(h) for h in nodehost.cgroup_hierarchies() if (h / "kubepods").exists()]:
        problems.append(f"kubepods cgroups at the root of {kubepods[:3]}")
    # Other real nodes on this machine share the binaries, not the namespaces.
    if pids_ns := traces.processes():
        problems.append(
            "processes in the node's namespaces: "
            + ", ".join(f"{p} {_describe_pid(p)}" for p in pids_ns[:10])
        )
    after = HostSnapshot.take()
    if nodehost.link_exists(traces.veth):
        problems.append(f"link {traces.veth}")
    # Links others create meanwhile are not ours; ours all start with "fgo".
    if links := {n for n in after.links if n.startswith("fgo")} - before.links:
        problems.append(f"links {sorted(links)}")
    if after.ip_forward != before.ip_forward:
        problems.append(f"ip_forward {before.ip_forward} -> {after.ip_forward}")
    if after.iptables != before.iptables:
        problems.append("iptables rules changed")
    if after.existing_paths != before.existing_paths:
        problems.append(
            f"host paths: {sorted(after.existing_paths ^ before.existing_paths)} appeared/vanished"
        )
    return problems
