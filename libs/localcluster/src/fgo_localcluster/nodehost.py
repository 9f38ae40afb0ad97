"""Host-side plumbing of a real node: namespaces, the veth link, cgroups, and their cleanup.

Everything here is created so that it can be found again from the node's record alone and
removed after a kill -9 of any process: the namespaces are pinned by bind mounts under the
node's state dir, the veth has a name derived from (state dir, node), the kubelet's cgroups
hang below one cgroupRoot per node. Shells out to util-linux and iproute2 (as the kubelet and
CNI do), never to anything that would touch the host's iptables or sysctls.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import time
from pathlib import Path

from fgo_localcluster.nodeconfig import (
    APISERVER_IN_NODE,
    LINK_NET,
    MAX_SLOTS,
    POD_NET,
    PRIVATE_DIRS,
    NodeLayout,
    NodeRecord,
)

CGROUP_FS = Path("/sys/fs/cgroup")


class NodeHostError(RuntimeError):
    """A host operation failed; the message is one line naming cause and fix."""


async def run(argv: list[str], *, what: str, fix: str = "") -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        detail = (err or out).decode(errors="replace").strip().splitlines()
        last = detail[-1] if detail else f"exit {proc.returncode}"
        raise NodeHostError(f"{what} failed: {last}" + (f"; {fix}" if fix else ""))
    return out.decode(errors="replace")


def nsenter(layout: NodeLayout) -> list[str]:
    """Prefix that runs a command in the node's mount and network namespaces."""
    return ["nsenter", f"--mount={layout.mnt_ns}", f"--net={layout.net_ns}", "--"]


# ----------------------------------------------------------------------------- addresses


Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _overlaps_host(cidrs: list[Net], used: list[Net]) -> bool:
    return any(c.version == u.version and c.overlaps(u) for c in cidrs for u in used)


async def host_networks() -> list[Net]:
    """Every IPv4 network the host has an address or a route in (all tables)."""
    found: list[Net] = []
    addrs = json.loads(await run(["ip", "-j", "-4", "addr", "show"], what="ip addr"))
    for link in addrs:
        for info in link.get("addr_info", []):
            found.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
    routes = json.loads(await run(["ip", "-j", "-4", "route", "show", "table", "all"], what="ip"))
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default" and not dst.startswith(("127.", "broadcast")):
            with contextlib.suppress(ValueError):
                found.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
    return found


def slot_is_free(slot: int, taken_slots: set[int], host_nets: list[Net]) -> bool:
    if slot in taken_slots:
        return False
    link = ipaddress.ip_network(f"{LINK_NET.network_address + (slot << 8)}/30")
    pods = ipaddress.ip_network(f"{POD_NET.network_address + (slot << 8)}/24")
    return not _overlaps_host([link, pods], host_nets)


def choose_slot(taken_slots: set[int], host_nets: list[Net]) -> int:
    """First slot whose link /30 and pod /24 overlap nothing on the host or another node."""
    for slot in range(MAX_SLOTS):
        if slot_is_free(slot, taken_slots, host_nets):
            return slot
    raise NodeHostError(
        f"no free address slot in {LINK_NET} / {POD_NET}; remove other real nodes "
        "(`fgo cluster down`) or routes in those ranges"
    )


# ----------------------------------------------------------------------------- namespaces


def _ns_inode(path: Path) -> int | None:
    try:
        st = path.stat()
    except OSError:
        return None
    # A pinned namespace is an nsfs inode; the empty placeholder file is an ordinary one.
    return st.st_ino if st.st_dev != path.parent.stat().st_dev else None


def namespaces_pinned(layout: NodeLayout) -> bool:
    return _ns_inode(layout.mnt_ns) is not None and _ns_inode(layout.net_ns) is not None


def check_state_dir_visible(layout: NodeLayout) -> None:
    """The node's private /var/lib, /var/log and /run must not hide its own state dir."""
    root = str(layout.root.resolve())
    for target in PRIVATE_DIRS:
        for prefix in {target, str(Path(target).resolve())}:
            if root == prefix or root.startswith(prefix + "/"):
                raise NodeHostError(
                    f"state dir {layout.state_dir} is under {target}, which the real node "
                    "replaces with its own; use a state dir elsewhere (--state-dir)"
                )


async def create_namespaces(layout: NodeLayout, record: NodeRecord, veth: str) -> None:
    """Mount + network namespaces pinned under ``<node>/ns``, wired to the host by ``veth``.

    Inside: /var/lib, /var/log and /run are the node's own directories; the veth's node end
    is eth0 with the node IP and the default route; the apiserver's in-cluster address is on
    lo (apiforward listens there); ip_forward is on (for the pods' bridge; per namespace).
    """
    if namespaces_pinned(layout):
        return
    check_state_dir_visible(layout)
    ns = layout.ns_dir
    ns.mkdir(parents=True, exist_ok=True)
    # The pin files must live on a private mount, or binding a mount namespace onto them
    # would create a propagation loop (EINVAL).
    if not _is_mountpoint(ns):
        await run(["mount", "--bind", str(ns), str(ns)], what="bind-mounting the ns dir")
        await run(["mount", "--make-private", str(ns)], what="making the ns dir private")
    for pin in (layout.mnt_ns, layout.net_ns):
        pin.touch()
    for target in PRIVATE_DIRS:
        layout.private_dir(target).mkdir(parents=True, exist_ok=True)
    host = APISERVER_IN_NODE[0]
    binds = "; ".join(f'mount --bind "{layout.private_dir(t)}" "{t}"' for t in PRIVATE_DIRS)
    script = f"""set -e
{binds}
ip link set lo up
ip addr add {host}/32 dev lo
ip link add eth0 type veth peer name {veth} netns {os.getpid()} || {{
  echo "cannot create a veth pair (kernel without veth support?)" >&2; exit 1; }}
ip addr add {record.node_ip}/30 dev eth0
ip link set eth0 up
ip route add default via {record.host_ip}
sysctl -q -w net.ipv4.ip_forward=1
"""
    await run(
        [
            "unshare",
            f"--mount={layout.mnt_ns}",
            f"--net={layout.net_ns}",
            "--propagation",
            "slave",
            "/bin/sh",
            "-c",
            script,
        ],
        what="creating the node's namespaces",
        fix="the real node needs root with mount and network namespaces (unshare -m -n)",
    )
    await run(["ip", "addr", "add", f"{record.host_ip}/30", "dev", veth], what="ip addr add")
    # No IPv6 on the link: nothing to autoconfigure, no router solicitations.
    await run(["sysctl", "-q", "-w", f"net.ipv6.conf.{veth}.disable_ipv6=1"], what="sysctl on veth")
    await run(["ip", "link", "set", veth, "up"], what="ip link set up")
    # Host -> pods (apiserver proxy, scraping pod IPs). Replies go back the same way; the
    # host never forwards anything, and the route goes away with the link.
    await run(
        ["ip", "route", "add", record.pod_cidr, "via", record.node_ip, "dev", veth],
        what="ip route add",
    )


def _is_mountpoint(path: Path) -> bool:
    return str(path.resolve()) in mounts_under(path)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest last."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = _unescape(line.split(" ")[4])
        if mount_point == prefix or mount_point.startswith(prefix + "/"):
            found.append(mount_point)
    return found


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


async def unmount_all(path: Path) -> list[str]:
    """Unmount everything at or below ``path`` (deepest first); returns what was unmounted."""
    done = []
    for _ in range(5):
        mounts = mounts_under(path)
        if not mounts:
            break
        for mount_point in sorted(set(mounts), key=len, reverse=True):
            proc = await asyncio.create_subprocess_exec(
                "umount",
                mount_point,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            if await proc.wait() != 0:
                # Busy (a process still holds it): detach it; the kernel frees it later.
                await run(["umount", "-l", mount_point], what=f"unmounting {mount_point}")
            done.append(mount_point)
    return done


# ----------------------------------------------------------------------------- processes


def pids_in_namespaces(layout: NodeLayout) -> list[int]:
    """Processes living in the node's mount or network namespace (kubelet, containerd,
    shims, a crictl someone ran with nsenter), found by namespace inode."""
    inodes = {i for i in (_ns_inode(layout.mnt_ns), _ns_inode(layout.net_ns)) if i is not None}
    if not inodes:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for kind in ("mnt", "net"):
            with contextlib.suppress(OSError):
                link = str((entry / "ns" / kind).readlink())  # "mnt:[4026532]"
                if int(link[link.index("[") + 1 : -1]) in inodes:
                    found.append(int(entry.name))
                    break
    return found


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


# ----------------------------------------------------------------------------- cgroups


def cgroup_hierarchies(types: tuple[str, ...] = ("cgroup", "cgroup2")) -> list[Path]:
    """Mount points of every cgroup hierarchy: the v1 ones (cpu, memory, ..., name=systemd)
    and, on hybrid hosts, the unified one, where runc's v1 manager creates cgroups too."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] in types:
            found.append(Path(_unescape(left.split(" ")[4])))
    return found


def create_cgroup_root(root: str) -> None:
    """The kubelet's cgroupRoot in every v1 hierarchy (the kubelet checks it exists)."""
    for hierarchy in cgroup_hierarchies(("cgroup",)):
        path = hierarchy / root.lstrip("/")
        path.mkdir(exist_ok=True)
        # cpuset children start with no CPUs and no memory nodes; inherit the parent's.
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (path / knob).exists() and not (path / knob).read_text().strip():
                (path / knob).write_text((path.parent / knob).read_text())


def cgroup_pids(root: str) -> list[int]:
    pids: set[int] = set()
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / root.lstrip("/")
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in os.walk(top):
            with contextlib.suppress(OSError):
                text = (Path(dirpath) / "cgroup.procs").read_text()
                pids.update(int(p) for p in text.split())
    return sorted(pids)


def remove_cgroup_tree(root: str) -> list[str]:
    """rmdir the tree bottom-up in every hierarchy; returns the directories left (busy)."""
    left = []
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / root.lstrip("/")
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            try:
                Path(dirpath).rmdir()
            except OSError:
                left.append(dirpath)
    return left


async def kill_cgroup_tree(root: str, timeout_s: float = 10.0) -> None:
    """SIGKILL every process under the node's cgroupRoot until none is left."""
    deadline = time.monotonic() + timeout_s
    while pids := cgroup_pids(root):
        kill_pids(pids)
        if time.monotonic() > deadline:
            raise NodeHostError(
                f"processes {pids[:5]} under cgroup {root} do not die; "
                "check `ps -o pid,stat,cmd -p ...` for processes stuck in D state"
            )
        await asyncio.sleep(0.1)


# ----------------------------------------------------------------------------- links


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


async def delete_link(name: str) -> bool:
    if not link_exists(name):
        return False
    with contextlib.suppress(NodeHostError):
        await run(["ip", "link", "del", name], what=f"deleting link {name}")
    return True
