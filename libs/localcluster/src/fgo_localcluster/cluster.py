"""``LocalCluster``: start, inspect, fault-inject and stop one local control plane.

Used by the ``fgo cluster`` CLI and by the pytest fixtures. All state lives in the state
directory (see :mod:`fgo_localcluster.layout`), so a ``LocalCluster`` object can attach to a
cluster another process started: ``start()`` is idempotent, starting only what is not running,
and ``stop()`` works from the pid files alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import TracebackType

import aiohttp

from fgo_localcluster import (
    components,
    health,
    manifests,
    nodehost,
    nodes,
    process,
    realnode,
    tools,
)
from fgo_localcluster.kubeconfig import render_kubeconfig, write_kubeconfig
from fgo_localcluster.layout import (
    COMPONENTS,
    ClusterRecord,
    Ports,
    StateLayout,
    choose_ports,
    write_atomic,
)
from fgo_localcluster.pki import ADMIN, CONTROLLER_MANAGER, KWOK, SCHEDULER
from fgo_localcluster.rest import MERGE_PATCH, Rest, RestError

Progress = Callable[[str], None]

FIELD_MANAGER = "fgo-localcluster"

# Generous on a loaded 2-core machine: the apiserver's first start (etcd bootstrap + RBAC
# bootstrap policy) takes ~10s idle and several times that next to a Go build.
_HEALTH_TIMEOUT_S = {"etcd": 60.0, "kube-apiserver": 180.0}
_DEFAULT_HEALTH_TIMEOUT_S = 90.0
_KUBECONFIG_IDENTITIES = {
    "kube-scheduler": SCHEDULER,
    "kube-controller-manager": CONTROLLER_MANAGER,
    "kwok": KWOK,
}


class ClusterError(RuntimeError):
    """The cluster could not be started or is not in the state asked for."""


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool
    detail: str
    rss_bytes: int | None
    log: Path


@dataclass(frozen=True)
class ClusterStatus:
    state_dir: Path
    kubeconfig: Path
    server: str | None
    components: list[ComponentStatus]
    nodes_total: int | None = None
    nodes_ready: int | None = None
    kwok_nodes_by_pool: dict[str, int] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return all(c.running for c in self.components)

    @property
    def healthy(self) -> bool:
        return all(c.healthy for c in self.components)

    @property
    def total_rss_bytes(self) -> int:
        return sum(c.rss_bytes or 0 for c in self.components)


def default_progress(message: str) -> None:
    print(f"fgo: {message}", file=sys.stderr, flush=True)


def default_state_dir() -> Path:
    settings = tools.env_settings()
    if settings.state_dir:
        return Path(settings.state_dir).expanduser().resolve()
    repo = tools.find_repo_root()
    if repo is not None:
        return repo / ".fgo" / "cluster"
    return Path.home() / ".cache" / "fgo" / "cluster"


def _rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class LocalCluster:
    """One local control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK)."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        bin_dir: Path | None = None,
        ports: Ports | None = None,
        progress: Progress | None = None,
        build: bool = True,
    ) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.layout = StateLayout(self.state_dir)
        self._explicit_bin_dir = bin_dir
        self._bin_dir: Path | None = bin_dir.resolve() if bin_dir else None
        self._wanted_ports = ports or Ports()
        self._progress = progress or default_progress
        self._build = build
        self._t0 = time.monotonic()

    # ----------------------------------------------------------------- paths and facts

    @property
    def kubeconfig(self) -> Path:
        return self.layout.kubeconfig

    @property
    def bin_dir(self) -> Path:
        """Directory of the binaries this cluster runs (known after ``start``/``resolve``)."""
        if self._bin_dir is None:
            raise ClusterError("bin dir not resolved yet; call start() or resolve_bin_dir()")
        return self._bin_dir

    def log_path(self, component: str) -> Path:
        self._check_name(component)
        return self.layout.log(component)

    @property
    def log_paths(self) -> dict[str, Path]:
        return {name: self.layout.log(name) for name in COMPONENTS}

    @property
    def ports(self) -> Ports:
        return ClusterRecord.load(self.layout.record).ports

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def feature_gates(self) -> dict[str, bool]:
        return dict(ClusterRecord.load(self.layout.record).feature_gates)

    def pid(self, component: str) -> int | None:
        record = self._pid_record(component)
        return record.pid if record and process.is_running(record) else None

    def is_running(self, component: str) -> bool:
        return self.pid(component) is not None

    async def resolve_bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = await tools.resolve_bin_dir(self._explicit_bin_dir)
        return self._bin_dir

    # ----------------------------------------------------------------- lifecycle

    async def start(self, *, wait: bool = False) -> ClusterStatus:
        """Start whatever is not running; a fully running cluster is left untouched.

        With ``wait``, also wait until the controllers have done their first work (default
        ServiceAccounts exist) and every existing KWOK node is Ready.
        """
        self._t0 = time.monotonic()
        bin_dir = await self.resolve_bin_dir()
        await tools.ensure_binaries(bin_dir, self._say, build=self._build)

        running = {name for name in COMPONENTS if self.is_running(name)}
        if running == set(COMPONENTS):
            result = await health.probe(self._spec("kube-apiserver").health, self.layout.pki)
            if result.ok:
                self._say(f"already running (state {self.state_dir})")
                if wait:
                    await self._wait_settled()
                return await self.status()

        await self._prepare(fresh=not running)
        for name in ("etcd", "kube-apiserver"):
            await self._ensure_component(name)
        await asyncio.gather(
            *(
                self._ensure_component(name)
                for name in ("kube-controller-manager", "kube-scheduler", "kwok")
            )
        )
        await self._apply_bootstrap_objects()
        if wait:
            await self._wait_settled()
        self._say(
            f"cluster ready in {time.monotonic() - self._t0:.1f}s; KUBECONFIG={self.kubeconfig}"
        )
        return await self.status()

    async def stop(self, *, purge: bool = False) -> None:
        """SIGTERM every component (dependents first), SIGKILL stragglers; optionally purge.

        Real nodes go first (their kubelets would only log errors without the API), and are
        cleaned completely: processes, mounts, link, cgroups. If that fails, the control plane
        is still stopped, then the node's error is raised (nothing is purged).
        """
        node_error: realnode.RealNodeError | None = None
        try:
            await realnode.stop_all(self.state_dir, self._progress)
        except realnode.RealNodeError as exc:
            node_error = exc

        async def stop_one(name: str) -> None:
            record = self._pid_record(name)
            if record is None:
                return
            outcome = await process.terminate(record)
            if outcome != "not running":
                self._say(f"{name}: {outcome} (pid {record.pid})")
            self.layout.pid_file(name).unlink(missing_ok=True)

        await asyncio.gather(
            *(stop_one(n) for n in ("kwok", "kube-scheduler", "kube-controller-manager"))
        )
        await stop_one("kube-apiserver")
        await stop_one("etcd")
        if node_error is not None:
            raise node_error
        if purge:
            self._purge()

    async def restart_component(self, name: str) -> None:
        """Stop (SIGTERM, then SIGKILL) and start one component; waits until it is healthy."""
        self._check_name(name)
        await self.resolve_bin_dir()  # an attached cluster object has not resolved it yet
        record = self._pid_record(name)
        if record is not None:
            await process.terminate(record)
            self.layout.pid_file(name).unlink(missing_ok=True)
        await self._ensure_component(name)

    async def restart_clients_of_apiserver(self) -> None:
        """Restart the controller-manager, scheduler and KWOK, one after another.

        After an apiserver restart their client-go informers can sit in reflector backoff
        (30 s cap, jitter up to 2x) for a minute or more, so namespaces get no default
        ServiceAccount and pods stay unscheduled meanwhile. Tests that restart the apiserver
        call this afterwards so the tests after them start from a settled control plane.
        """
        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            await self.restart_component(name)

    def kill_component(self, name: str, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` to a component (fault injection); True if it was running."""
        self._check_name(name)
        record = self._pid_record(name)
        return record is not None and process.send_signal(record, sig)

    async def wait_component_healthy(self, name: str, timeout_s: float = 120.0) -> None:
        self._check_name(name)
        result = await health.wait_for(
            lambda: health.probe(self._spec(name).health, self.layout.pki), timeout_s
        )
        if not result.ok:
            raise ClusterError(f"{name} not healthy: {result.detail}")

    async def status(self, *, include_nodes: bool = True) -> ClusterStatus:
        record = ClusterRecord.load(self.layout.record)
        specs = self._specs_or_none()

        async def one(name: str) -> ComponentStatus:
            pid_record = self._pid_record(name)
            running = pid_record is not None and process.is_running(pid_record)
            pid = pid_record.pid if pid_record and running else None
            if not running or specs is None:
                return ComponentStatus(
                    name, None, False, False, "not running", None, self.layout.log(name)
                )
            result = await health.probe(specs[name].health, self.layout.pki)
            return ComponentStatus(
                name,
                pid,
                True,
                result.ok,
                result.detail,
                _rss_bytes(pid) if pid else None,
                self.layout.log(name),
            )

        statuses = list(await asyncio.gather(*(one(n) for n in COMPONENTS)))
        for node_name in realnode.active_node_names(self.state_dir):
            for c in await realnode.RealNode(self.state_dir, node_name, self._say).status():
                statuses.append(
                    ComponentStatus(
                        c.name,
                        c.pid,
                        c.running,
                        c.healthy,
                        c.detail,
                        _rss_bytes(c.pid) if c.pid else None,
                        c.log,
                    )
                )
        server = f"https://127.0.0.1:{record.ports.apiserver}" if record.ports.apiserver else None
        st = ClusterStatus(self.state_dir, self.kubeconfig, server, statuses)
        apiserver = next(c for c in statuses if c.name == "kube-apiserver")
        if include_nodes and apiserver.healthy:
            with contextlib.suppress(RestError, aiohttp.ClientError, OSError, TimeoutError):
                async with self._rest() as api:
                    all_nodes = (await api.get("/api/v1/nodes"))["items"]
                pools: dict[str, int] = {}
                for n in all_nodes:
                    if nodes.is_kwok_node(n):
                        pool = n["metadata"].get("labels", {}).get(nodes.POOL_LABEL, "")
                        pools[pool] = pools.get(pool, 0) + 1
                st = ClusterStatus(
                    self.state_dir,
                    self.kubeconfig,
                    server,
                    statuses,
                    len(all_nodes),
                    sum(1 for n in all_nodes if nodes.is_ready(n)),
                    pools,
                )
        return st

    # sync wrappers for scripts and sync pytest fixtures

    def start_sync(self, *, wait: bool = False) -> ClusterStatus:
        return asyncio.run(self.start(wait=wait))

    def stop_sync(self, *, purge: bool = False) -> None:
        asyncio.run(self.stop(purge=purge))

    def status_sync(self) -> ClusterStatus:
        return asyncio.run(self.status())

    def restart_component_sync(self, name: str) -> None:
        asyncio.run(self.restart_component(name))

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ----------------------------------------------------------------- internals

    def _say(self, message: str) -> None:
        self._progress(f"[{time.monotonic() - self._t0:5.1f}s] {message}")

    @staticmethod
    def _check_name(name: str) -> None:
        if name not in COMPONENTS:
            raise ValueError(f"unknown component {name!r}; one of {', '.join(COMPONENTS)}")

    def _pid_record(self, name: str) -> process.PidRecord | None:
        return process.PidRecord.read(self.layout.pid_file(name))

    def _specs_or_none(self) -> dict[str, components.ComponentSpec] | None:
        record = ClusterRecord.load(self.layout.record)
        if not record.ports.apiserver:
            return None
        # Health URLs do not depend on the binaries' location.
        bin_dir = self._bin_dir or Path("/nonexistent")
        return components.all_specs(
            bin_dir,
            self.layout,
            record.ports,
            record.feature_gates,
            tools.env_settings().kwok_log_level,
            runtime_config=(
                components.RUNTIME_CONFIG
                if record.runtime_config is None
                else record.runtime_config
            ),
        )

    def _spec(self, name: str) -> components.ComponentSpec:
        specs = self._specs_or_none()
        if specs is None:
            raise ClusterError(f"no cluster in {self.state_dir}; run `fgo cluster up` first")
        return specs[name]

    async def _prepare(self, *, fresh: bool) -> None:
        """Ports, PKI, kubeconfigs, KWOK stages and feature gates, before any process starts.

        ``fresh`` (nothing running) allows new ports; with some components still running the
        recorded ports must be kept, since those processes are listening on them.
        """
        layout = self.layout
        for directory in (layout.root, layout.logs, layout.run, layout.kwok_dir):
            directory.mkdir(parents=True, exist_ok=True)
        record = ClusterRecord.load(layout.record)
        if fresh:
            record.ports = choose_ports(self._wanted_ports, record.ports)
            # One log generation back: the previous run's logs survive one restart.
            for name in COMPONENTS:
                log = layout.log(name)
                if log.exists():
                    log.replace(log.with_name(log.name + ".1"))
        if layout.pki.ensure():
            self._say(f"generated CA and certificates in {layout.pki.root}")
        self._write_kubeconfigs(record.ports)
        stages = resources.files("fgo_localcluster").joinpath("kwok-stages.yaml").read_text()
        write_atomic(layout.kwok_stages, stages)
        record.feature_gates, record.feature_gates_key = await self._feature_gates(record)
        if fresh or record.runtime_config is None:
            record.kubernetes_minor = await self._apiserver_minor()
            wanted = tools.env_settings().runtime_config
            record.runtime_config = (
                components.default_runtime_config(record.kubernetes_minor)
                if wanted is None
                else wanted
            )
            if record.runtime_config != components.RUNTIME_CONFIG:
                self._say(
                    f"kube-apiserver v1.{record.kubernetes_minor}: "
                    f"--runtime-config={record.runtime_config or '(none)'}"
                )
        record.save(layout.record)

    def _write_kubeconfigs(self, ports: Ports) -> None:
        pki = self.layout.pki
        server = f"https://127.0.0.1:{ports.apiserver}"
        write_kubeconfig(
            self.kubeconfig,
            render_kubeconfig(
                server,
                pki.ca_cert,
                pki.cert(ADMIN.file_stem),
                pki.key(ADMIN.file_stem),
                ADMIN.common_name,
            ),
        )
        for component, ident in _KUBECONFIG_IDENTITIES.items():
            write_kubeconfig(
                self.layout.component_kubeconfig(component),
                render_kubeconfig(
                    server,
                    pki.ca_cert,
                    pki.cert(ident.file_stem),
                    pki.key(ident.file_stem),
                    ident.common_name,
                ),
            )

    async def _apiserver_minor(self) -> int | None:
        proc = await asyncio.create_subprocess_exec(
            str(self.bin_dir / "kube-apiserver"),
            "--version",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        return components.kubernetes_minor(out.decode(errors="replace"))

    async def _feature_gates(self, record: ClusterRecord) -> tuple[dict[str, bool], str]:
        binary = self.bin_dir / "kube-apiserver"
        st = binary.stat()
        key = f"{binary}:{st.st_size}:{st.st_mtime_ns}"
        if key == record.feature_gates_key:
            return record.feature_gates, key
        proc = await asyncio.create_subprocess_exec(
            str(binary), "--help", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        help_text = out.decode(errors="replace")
        available = components.parse_feature_gates(help_text)
        if not available:
            raise ClusterError(f"could not read the feature gates from `{binary} --help`")
        gates = components.select_feature_gates(available)
        skipped = [g for g in components.WANTED_FEATURE_GATES if g not in gates]
        self._say(
            "feature gates: "
            + ", ".join(sorted(gates))
            + (
                f" (not passed, GA/locked or unknown to this binary: {', '.join(skipped)})"
                if skipped
                else ""
            )
        )
        return gates, key

    async def _ensure_component(self, name: str) -> None:
        record = self._pid_record(name)
        if record is not None and process.is_running(record):
            self._say(f"{name}: already running (pid {record.pid})")
            await self.wait_component_healthy(
                name, _HEALTH_TIMEOUT_S.get(name, _DEFAULT_HEALTH_TIMEOUT_S)
            )
            return
        spec = self._spec(name)
        if name == "kwok":
            await self._release_kwok_leases()
        started = time.monotonic()
        pid_record = await process.spawn(
            spec.argv, self.layout.log(name), self.layout.pid_file(name), spec.env
        )
        self._say(f"{name}: started (pid {pid_record.pid}), waiting for {spec.health.url}")
        result = await health.wait_for(
            lambda: health.probe(spec.health, self.layout.pki),
            _HEALTH_TIMEOUT_S.get(name, _DEFAULT_HEALTH_TIMEOUT_S),
            alive=lambda: process.is_running(pid_record),
        )
        if not result.ok:
            log = self.layout.log(name)
            raise ClusterError(
                f"{name} did not become healthy: {result.detail}\n"
                f"--- last lines of {log} ---\n{_log_tail(log)}"
            )
        self._say(f"{name}: healthy after {time.monotonic() - started:.1f}s")

    def _rest(self) -> Rest:
        return Rest(self.server, self.layout.pki)

    async def _release_kwok_leases(self) -> None:
        """Let a new KWOK process take over the node Leases its predecessor held.

        KWOK's lease holder identity is new for every process, so a restarted KWOK would wait
        a whole lease duration per node (no pod on it moving meanwhile). A Lease with no holder
        is taken at once, and its renewTime stays recent, so the node-lifecycle controller sees
        no gap. Called only while no KWOK process runs.
        """
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        async with self._rest() as api:
            stale = nodes.stale_kwok_leases((await api.get(path))["items"])
            sem = asyncio.Semaphore(nodes.DEFAULT_CONCURRENCY)

            async def release(name: str) -> None:
                async with sem:
                    await api.request(
                        "PATCH",
                        f"{path}/{name}",
                        body={"spec": {"holderIdentity": None}},
                        content_type=MERGE_PATCH,
                    )

            await asyncio.gather(*(release(n) for n in stale))
        if stale:
            self._say(f"kwok: released {len(stale)} node leases of the previous KWOK process")

    async def _apply_bootstrap_objects(self) -> None:
        async with self._rest() as api:
            await api.apply(manifests.operator_namespace(), FIELD_MANAGER)
            # The DeviceClasses in the newest DRA version served (the chart does the same);
            # none on an apiserver that serves no DRA version we speak.
            try:
                group = await api.get("/apis/resource.k8s.io")
                served = [str(v["version"]) for v in group.get("versions") or []]
            except RestError as exc:
                if exc.status != 404:
                    raise
                served = []
            version = next((v for v in ("v1", "v1beta2", "v1beta1") if v in served), None)
            classes = manifests.nvidia_device_classes()
            if version is not None:
                for obj in classes:
                    await api.apply(
                        {**obj, "apiVersion": f"resource.k8s.io/{version}"}, FIELD_MANAGER
                    )
        names = ", ".join(d["metadata"]["name"] for d in classes)
        self._say(
            f"namespace {manifests.OPERATOR_NAMESPACE} and DeviceClasses {names} "
            f"(resource.k8s.io/{version}) applied"
            if version
            else f"namespace {manifests.OPERATOR_NAMESPACE} applied; no DeviceClasses "
            "(resource.k8s.io v1/v1beta2/v1beta1 not served)"
        )

    async def _wait_settled(self, timeout_s: float = 120.0) -> None:
        """Controllers working (ServiceAccounts made) and every KWOK node Ready."""
        deadline = time.monotonic() + timeout_s
        async with self._rest() as api:
            for ns in ("default", manifests.OPERATOR_NAMESPACE):
                while True:
                    try:
                        await api.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default")
                        break
                    except RestError as exc:
                        if exc.status != 404 or time.monotonic() > deadline:
                            raise ClusterError(
                                f"ServiceAccount {ns}/default never appeared "
                                "(is kube-controller-manager working?)"
                            ) from exc
                    await asyncio.sleep(0.5)
            while True:
                listed = await api.get("/api/v1/nodes", {"labelSelector": "type=kwok"})
                not_ready = [
                    n["metadata"]["name"]
                    for n in listed["items"]
                    if nodes.is_kwok_node(n) and not nodes.is_ready(n)
                ]
                if not not_ready:
                    break
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{len(not_ready)} KWOK nodes not Ready, e.g. "
                        f"{', '.join(not_ready[:5])} (is kwok running?)"
                    )
                await asyncio.sleep(1.0)
        self._say("controllers settled; all KWOK nodes Ready")

    def _purge(self) -> None:
        root = self.state_dir
        if not root.exists():
            return
        if nodehost.mounts_under(root):
            raise ClusterError(f"mounts left under {root}; not purging (run `fgo cluster down`)")
        # Refuse to delete a directory that does not look like one of ours.
        if not (self.layout.record.exists() or self.layout.pki.root.exists()):
            raise ClusterError(f"{root} does not look like an fgo cluster state dir; not purging")
        shutil.rmtree(root)
        self._say(f"purged {root}")
