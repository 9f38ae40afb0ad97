"""``fgo cluster ...``: the local control plane from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from fgo_common.runtime.settings import SettingsError

from fgo_localcluster import nodehost, nodes, operator, realnode
from fgo_localcluster.cluster import ClusterError, ClusterStatus, LocalCluster
from fgo_localcluster.layout import COMPONENTS, Ports
from fgo_localcluster.nodeconfig import SANDBOX_IMAGE
from fgo_localcluster.nodetools import NodeToolsError
from fgo_localcluster.operator import WorkloadStatus
from fgo_localcluster.tools import ToolsError


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def format_operator(workloads: list[WorkloadStatus]) -> list[str]:
    """The operator's local processes (``fgo demo``): pid, health, ports, log; metrics URLs."""
    if not workloads:
        return []
    lines = [
        "",
        "The operator's services run as local processes under the chart's ServiceAccounts "
        "(their pods stay Pending: KWOK nodes run no containers):",
        f"{'SERVICE':<38} {'PID':>7}  {'HEALTH':<8} {'PORTS':<28} LOG",
    ]
    for w in workloads:
        ports = " ".join(f"{name}={port}" for name, port in sorted(w.ports.items())) or "-"
        health = w.health if w.health in ("ok", "down") else "unhealthy"
        lines.append(
            f"{w.namespace + '/' + w.name:<38} {w.pid or '-':>7}  {health:<8} {ports:<28} {w.log}"
        )
        if health == "unhealthy":
            lines.append(f"{'':<38} {'':>7}  {w.health}")
    urls = [
        f"  {w.name}: http://127.0.0.1:{w.ports['metrics']}/metrics"
        for w in workloads
        if "metrics" in w.ports
    ]
    if urls:
        lines += ["metrics (ports kept in the state dir across restarts):", *urls]
    return lines


def format_status(st: ClusterStatus, workloads: list[WorkloadStatus] | None = None) -> str:
    lines = [
        f"state dir:  {st.state_dir}",
        f"kubeconfig: {st.kubeconfig}",
        f"server:     {st.server or '-'}",
        "",
        f"{'COMPONENT':<25} {'PID':>7}  {'HEALTH':<8} {'RSS':>9}  LOG",
    ]
    for c in st.components:
        state = "ok" if c.healthy else ("down" if not c.running else "unhealthy")
        lines.append(f"{c.name:<25} {c.pid or '-':>7}  {state:<8} {_mib(c.rss_bytes):>9}  {c.log}")
        if c.running and not c.healthy:
            lines.append(f"{'':<25} {'':>7}  {c.detail}")
    lines.append(f"{'total':<25} {'':>7}  {'':<8} {_mib(st.total_rss_bytes):>9}")
    if st.nodes_total is not None:
        pools = ", ".join(f"{p or '(none)'}={n}" for p, n in sorted(st.kwok_nodes_by_pool.items()))
        lines.append("")
        lines.append(
            f"nodes: {st.nodes_total} ({st.nodes_ready} Ready)"
            + (f"; KWOK nodes by pool: {pools}" if pools else "")
        )
    lines += format_operator(workloads or [])
    return "\n".join(lines)


async def _up(cluster: LocalCluster, args: argparse.Namespace) -> int:
    started = time.monotonic()
    st = await cluster.start(wait=args.wait)
    print(format_status(st))
    print(
        f"\nup took {time.monotonic() - started:.1f}s; "
        f'run `eval "$(fgo cluster env)"` to use kubectl'
    )
    return 0


async def _down(cluster: LocalCluster, args: argparse.Namespace) -> int:
    # Looked at first: a `down` that finds nothing says so instead of exiting silently (a
    # wrong --state-dir / STATE_DIR otherwise looks like success).
    found = (
        any(cluster.is_running(n) for n in COMPONENTS)
        or bool(realnode.active_node_names(cluster.state_dir))
        or any(w.pid for w in await operator.workload_statuses(cluster.state_dir))
    )
    # The operator's processes (`fgo demo`) first: they would only log errors without the API.
    for outcome in await operator.stop_all(cluster.state_dir):
        if not outcome.endswith(": not running"):
            print(f"fgo: {outcome}", file=sys.stderr)
    await cluster.stop(purge=args.purge)
    if not found:
        where = "no cluster state there" if not cluster.state_dir.exists() else "nothing running"
        print(f"fgo: nothing to stop in {cluster.state_dir} ({where})", file=sys.stderr)
    else:
        print(f"fgo: stopped everything of {cluster.state_dir}", file=sys.stderr)
    return 0


async def _demo(cluster: LocalCluster, args: argparse.Namespace) -> int:
    from fgo_localcluster.demo import run_demo

    return await run_demo(cluster, node_count=args.nodes, real_node=args.real_node)


async def _status(cluster: LocalCluster, args: argparse.Namespace) -> int:
    await cluster.resolve_bin_dir()
    st, workloads = await asyncio.gather(
        cluster.status(), operator.workload_statuses(cluster.state_dir)
    )
    print(format_status(st, workloads))
    return 0 if st.healthy and all(w.healthy for w in workloads) else 1


async def _nvidia_smi(cluster: LocalCluster, args: argparse.Namespace) -> int:
    from fgo_localcluster import smi
    from fgo_localcluster.rest import Rest, RestError

    if bool(args.pod) == bool(args.node):
        print("fgo: say what to show: <namespace>/<pod> or --node NODE", file=sys.stderr)
        return 2
    ns = args.operator_namespace
    try:
        async with Rest(cluster.server, cluster.layout.pki) as api:
            workloads = []
            for kind in ("deployments", "daemonsets"):
                workloads += (await api.get(f"/apis/apps/v1/namespaces/{ns}/{kind}"))["items"]
            settings = smi.operator_settings(workloads)
            pod: dict[str, Any] | None = None
            if args.pod:
                pod_ns, _, pod_name = args.pod.rpartition("/")
                pod_ns = pod_ns or "default"
                pod = await api.get(f"/api/v1/namespaces/{pod_ns}/pods/{pod_name}")
                node = str((pod.get("spec") or {}).get("nodeName") or "")
                if not node:
                    raise smi.SmiError(f"pod {pod_ns}/{pod_name} is not scheduled to a node yet")
            else:
                node = args.node
            record = smi.record_name(settings, node)
            try:
                topology = smi.record_of(
                    await api.get(f"/api/v1/namespaces/{ns}/configmaps/{record}"), node
                )
            except RestError as exc:
                if exc.status != 404:
                    raise
                raise smi.SmiError(
                    f"node {node} has no topology record ({ns}/{record}): is it in a GPU pool "
                    "(run.ai/simulated-gpu-node-pool) and is the operator running (`fgo cluster "
                    "status`)?"
                ) from exc
            if pod is not None:
                container = smi.container_name(pod, args.container)
                claims: dict[str, Any] = {}
                used = smi.container_claims(pod, container)
                if used:
                    # The newest version served: an older apiserver may serve no v1 yet.
                    group = await api.get("/apis/resource.k8s.io")
                    version = group["preferredVersion"]["groupVersion"]
                for claim, _ in used:
                    try:
                        claims[claim] = await api.get(
                            f"/apis/{version}/namespaces/{pod_ns}/resourceclaims/{claim}"
                        )
                    except RestError as exc:
                        if exc.status != 404:
                            raise
                env = smi.pod_env(pod, container, topology, claims, settings)
                what = f"{pod_ns}/{pod_name} (container {container}) on {node}"
            else:
                env = {smi.SEED_ENV: settings.seed}
                what = f"node {node} (every GPU)"
    except RestError as exc:
        print(f"fgo: {exc}", file=sys.stderr)
        return 1
    except smi.SmiError as exc:
        print(f"fgo: {exc}", file=sys.stderr)
        return 1
    inputs = " ".join(f"{k}={v}" for k, v in sorted(env.items()))
    print(f"fgo: nvidia-smi as {what} sees it: {inputs}", file=sys.stderr, flush=True)
    return await smi.run_smi(topology, env, args.smi_args, args.smi)


async def _env(cluster: LocalCluster, args: argparse.Namespace) -> int:
    bin_dir = await cluster.resolve_bin_dir()
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    print(f'export PATH="{bin_dir}:$PATH"')
    return 0


async def _add_nodes(cluster: LocalCluster, args: argparse.Namespace) -> int:
    labels = dict(item.split("=", 1) for item in args.label)
    started = time.monotonic()
    from kubernetes_asyncio import client

    async with nodes.api_client(cluster.kubeconfig) as api:
        existing = [n.metadata.name for n in (await client.CoreV1Api(api).list_node()).items]
        names = nodes.next_names(args.prefix, args.count, existing)
        bodies = [
            nodes.kwok_node(
                n, args.pool, cpu=args.cpu, memory=args.memory, pods=args.pods, labels=labels
            )
            for n in names
        ]
        await nodes.create_nodes(api, bodies, concurrency=args.concurrency)
        print(
            f"created {len(names)} KWOK nodes ({names[0]} .. {names[-1]}) in pool "
            f"{args.pool!r} in {time.monotonic() - started:.1f}s",
            file=sys.stderr,
        )
        if args.wait:
            wanted = set(names)
            while True:
                ready = {
                    n.metadata.name
                    for n in await nodes.list_kwok_nodes(api, args.pool)
                    if nodes.node_is_ready(n)
                }
                if wanted <= ready:
                    break
                await asyncio.sleep(0.5)
            print(
                f"all {len(names)} Ready after {time.monotonic() - started:.1f}s", file=sys.stderr
            )
    return 0


async def _delete_nodes(cluster: LocalCluster, args: argparse.Namespace) -> int:
    if not (args.names or args.pool or args.all or args.prefix):
        print("fgo: say which nodes: NAME..., --pool, --prefix or --all", file=sys.stderr)
        return 2
    async with nodes.api_client(cluster.kubeconfig) as api:
        # Only ever KWOK nodes: a real node that happens to match a name is left alone.
        candidates = [n.metadata.name for n in await nodes.list_kwok_nodes(api, args.pool)]
        if args.names:
            candidates = [n for n in candidates if n in set(args.names)]
        if args.prefix:
            candidates = [n for n in candidates if n.startswith(args.prefix)]
        deleted = await nodes.delete_nodes(api, candidates, concurrency=args.concurrency)
    print(f"deleted {len(deleted)} KWOK nodes", file=sys.stderr)
    return 0


async def _add_real_node(cluster: LocalCluster, args: argparse.Namespace) -> int:
    started = time.monotonic()
    progress = _progress
    bin_dir = await realnode.resolve_node_bin_dir(progress)
    images: list[tuple[str, Path]] = []
    if not args.no_images:
        images = realnode.images_from_index()
        if not images:
            print(
                f"fgo: no image index at {realnode.image_index_path()}; pods on the node need "
                "`fgo cluster load-images ARCHIVE...` (at least the sandbox image "
                f"{SANDBOX_IMAGE})",
                file=sys.stderr,
            )
    node = realnode.RealNode(cluster.state_dir, args.name, progress)
    await node.add(args.pool, bin_dir, images=images, timeout_s=args.timeout)
    record = node.record
    assert record is not None
    print(
        f"real node {args.name} Ready in {time.monotonic() - started:.1f}s: InternalIP "
        f"{record.node_ip}, pods {record.pod_cidr}, pool {args.pool!r}; state {node.layout.root}"
    )
    return 0


async def _load_images(cluster: LocalCluster, args: argparse.Namespace) -> int:
    if args.archives:
        images = [(str(a), a.resolve()) for a in args.archives]
    else:
        images = realnode.images_from_index()
        if not images:
            print(f"fgo: no archives given and no index at {realnode.image_index_path()}")
            return 1
    names = [args.node] if args.node else realnode.active_node_names(cluster.state_dir)
    if not names:
        print("fgo: no real node running; run `fgo cluster add-real-node` first", file=sys.stderr)
        return 1
    for name in names:
        await realnode.RealNode(cluster.state_dir, name, _progress).load_images(images)
    return 0


async def _node_exec(cluster: LocalCluster, args: argparse.Namespace) -> int:
    names = realnode.active_node_names(cluster.state_dir)
    name = args.node or (names[0] if names else realnode.DEFAULT_NODE_NAME)
    node = realnode.RealNode(cluster.state_dir, name, _progress)
    record = node.record
    if record is None or name not in names:
        print(f"fgo: real node {name} is not running", file=sys.stderr)
        return 1
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    argv = [*nodehost.nsenter(node.layout), *(command or ["/bin/sh"])]
    # stdin/stdout/stderr inherited: interactive shells and pipes work; its status is ours.
    proc = await asyncio.create_subprocess_exec(*argv, env=realnode.exec_env(node.layout, record))
    return await proc.wait()


def _progress(message: str) -> None:
    print(f"fgo: {message}", file=sys.stderr, flush=True)


async def _logs(cluster: LocalCluster, args: argparse.Namespace) -> int:
    path = cluster.log_path(args.component)
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        print(f"fgo: no log at {path}", file=sys.stderr)
        return 1
    print("\n".join(text.splitlines()[-args.lines :]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fgo", description="fake-gpu-operator developer tool")
    top = parser.add_subparsers(dest="group", required=True)
    cluster = top.add_parser("cluster", help="local Kubernetes control plane with KWOK nodes")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="cluster state dir (default: $FGO_STATE_DIR or <repo>/.fgo/cluster)",
    )
    common.add_argument(
        "--bin-dir",
        type=Path,
        default=None,
        help="binaries dir (default: $FGO_BIN_DIR or hack/build-tools.sh's)",
    )
    raw_sub = cluster.add_subparsers(dest="command", required=True)

    class _Sub:
        """add_parser with the common options on every subcommand."""

        def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
            return raw_sub.add_parser(name, parents=[common], **kwargs)

    sub = _Sub()

    up = sub.add_parser("up", help="start the control plane (no-op if it is running)")
    up.add_argument(
        "--wait",
        action="store_true",
        help="also wait for controllers to settle and KWOK nodes to be Ready",
    )
    up.add_argument("--apiserver-port", type=int, default=0, help="default: a free port")
    up.add_argument("--etcd-port", type=int, default=0, help="default: a free port")
    up.set_defaults(func=_up)

    down = sub.add_parser("down", help="stop every component")
    down.add_argument("--purge", action="store_true", help="also delete the state dir")
    down.set_defaults(func=_down)

    sub.add_parser("status", help="component health, kubeconfig, nodes").set_defaults(func=_status)
    sub.add_parser("env", help="print shell exports for KUBECONFIG and PATH").set_defaults(
        func=_env
    )

    add = sub.add_parser("add-nodes", help="create KWOK nodes")
    add.add_argument("count", type=int)
    add.add_argument("--pool", default="default", help="run.ai/simulated-gpu-node-pool label")
    add.add_argument("--prefix", default=nodes.DEFAULT_PREFIX)
    add.add_argument("--cpu", default="32")
    add.add_argument("--memory", default="128Gi")
    add.add_argument("--pods", default="110")
    add.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra node label (repeatable)",
    )
    add.add_argument("--concurrency", type=int, default=nodes.DEFAULT_CONCURRENCY)
    add.add_argument("--wait", action="store_true", help="wait until the nodes are Ready")
    add.set_defaults(func=_add_nodes)

    delete = sub.add_parser("delete-nodes", help="delete KWOK nodes")
    delete.add_argument("names", nargs="*")
    delete.add_argument("--pool", default=None)
    delete.add_argument("--prefix", default=None)
    delete.add_argument("--all", action="store_true")
    delete.add_argument("--concurrency", type=int, default=nodes.DEFAULT_CONCURRENCY)
    delete.set_defaults(func=_delete_nodes)

    real = sub.add_parser(
        "add-real-node",
        help="add a real node (kubelet + containerd + runc, in its own namespaces; needs root)",
    )
    real.add_argument("--name", default=realnode.DEFAULT_NODE_NAME)
    real.add_argument("--pool", default="default", help="run.ai/simulated-gpu-node-pool label")
    real.add_argument(
        "--no-images",
        action="store_true",
        help=f"do not import the images listed in {realnode.image_index_path()}",
    )
    real.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for Ready")
    real.set_defaults(func=_add_real_node)

    load = sub.add_parser(
        "load-images", help="import image archives into the real nodes' containerd"
    )
    load.add_argument(
        "archives",
        nargs="*",
        type=Path,
        help=f"OCI/Docker archives (default: every image in {realnode.image_index_path()})",
    )
    load.add_argument("--node", default=None, help="one real node (default: all running)")
    load.set_defaults(func=_load_images)

    nexec = sub.add_parser(
        "node-exec",
        help="run a command in a real node's namespaces (crictl, ctr, ip ...; default: a shell)",
    )
    nexec.add_argument("--node", default=None, help="default: the first running real node")
    nexec.add_argument("command", nargs=argparse.REMAINDER)
    nexec.set_defaults(func=_node_exec)

    logs = sub.add_parser("logs", help="print the tail of a component's log")
    logs.add_argument("component", choices=COMPONENTS)
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.set_defaults(func=_logs)

    demo = top.add_parser(
        "demo",
        parents=[common],
        help="control plane + the chart (services as local processes) + KWOK GPU nodes + a GPU pod",
    )
    demo.add_argument("--nodes", type=int, default=2, help="KWOK GPU nodes in pool default")
    demo.add_argument(
        "--real-node",
        action="store_true",
        help="also add a real node (root; make node-tools images): the chart's pods run there "
        "from their images, with a GPU pod to `kubectl exec ... nvidia-smi` into",
    )
    demo.set_defaults(func=_demo)

    nsmi = top.add_parser(
        "nvidia-smi",
        parents=[common],
        help="run nvidia-smi as a GPU pod sees it (its GPUs, its node's record, the seed), on "
        "KWOK and real nodes alike; arguments for nvidia-smi go after --",
        usage="fgo nvidia-smi [options] (NAMESPACE/POD | --node NODE) [-- NVIDIA-SMI-ARGS...]",
    )
    nsmi.add_argument("pod", nargs="?", help="NAMESPACE/POD (namespace default if omitted)")
    nsmi.add_argument("--node", default=None, help="a whole node: every GPU of its record")
    nsmi.add_argument(
        "-c", "--container", default=None, help="default: the one `kubectl exec` picks"
    )
    nsmi.add_argument(
        "--operator-namespace",
        default="gpu-operator",
        help="namespace of the chart (its settings and the node records)",
    )
    nsmi.add_argument(
        "--smi",
        type=Path,
        default=None,
        help="nvidia-smi executable to run (default: the workspace's; e.g. the bundle "
        "build/nvidia-smi/dist/nvidia-smi/nvidia-smi)",
    )
    nsmi.set_defaults(func=_nvidia_smi)
    return parser


def split_smi_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(fgo's arguments, nvidia-smi's): in ``fgo nvidia-smi POD -- -L`` everything after the
    first ``--`` belongs to nvidia-smi, whose options argparse must not try to read."""
    if argv[:1] == ["nvidia-smi"] and "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    own, smi_args = split_smi_args(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(own)
    args.smi_args = smi_args
    ports = Ports(
        apiserver=getattr(args, "apiserver_port", 0), etcd_client=getattr(args, "etcd_port", 0)
    )
    cluster = LocalCluster(args.state_dir, bin_dir=args.bin_dir, ports=ports)
    try:
        code: int = asyncio.run(args.func(cluster, args))
    except (ClusterError, ToolsError, SettingsError, NodeToolsError) as exc:
        print(f"fgo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
