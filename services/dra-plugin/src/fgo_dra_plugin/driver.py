"""NodePrepareResources / NodeUnprepareResources, independent of the gRPC API version.

Prepare of one claim:

1. already in the checkpoint -> the recorded answer (idempotent; the CDI spec is rewritten from
   the checkpoint if it went missing, e.g. /var/run/cdi is a tmpfs and the node rebooted);
2. read the ResourceClaim by namespace/name and check its UID is the one the kubelet asked for
   (a claim deleted and re-created under the same name is a different claim);
3. take the allocation results of our driver; each must come from our pool (the node name) and
   name a device this node publishes right now;
4. write the claim's CDI spec, save the checkpoint with the claim (fsync'd), and only then
   publish it in the in-memory checkpoint and answer.

A claim's lock is held from the first look at the checkpoint until the save is done, so a
concurrent prepare of the same claim waits and then answers from what was saved, never from a
claim whose save failed. Failures are per claim (``error`` in the claim's response) and never
fail the batch: the kubelet retries just those claims' pods. Unprepare saves the checkpoint
without the claim, then removes it from memory and its CDI spec; a claim we do not know is fine
(already unprepared). A claim's lock exists only while someone holds or waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog
from fgo_common import sharing
from fgo_common.dradevices import PublishedDevice
from fgo_common.names import DRA_NAMES
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fgo_dra_plugin import checkpoint as ckpt
from fgo_dra_plugin.cdi import CdiStore, ContainerSetup, SharingEdits, claim_spec
from fgo_dra_plugin.checkpoint import Checkpoint, PreparedClaim, PreparedDevice

log = structlog.get_logger(__name__)

Obj = dict[str, Any]
# (namespace, name) -> the claim as the API server has it, or None if it does not exist.
FetchClaim = Callable[[str, str], Awaitable[Obj | None]]
# Device name -> device, for the node's current record; None while the record is unknown.
CurrentDevices = Callable[[], Mapping[str, PublishedDevice] | None]


@dataclass(frozen=True, slots=True)
class ClaimRef:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} ({self.uid})"


@dataclass(frozen=True, slots=True)
class PrepareResult:
    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


class ClaimError(Exception):
    """Why one claim cannot be prepared; becomes that claim's ``error``."""


@dataclass(slots=True)
class _ClaimLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting


class DriverMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "fgo_dra_plugin_claims", "Claims handled, by operation and outcome.",
            ["operation", "outcome"], registry=registry,
        )  # fmt: skip
        self.prepare_seconds = Histogram(
            "fgo_dra_plugin_prepare_claim_duration_seconds",
            "Time to prepare one claim (API read, CDI spec, checkpoint).",
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )  # fmt: skip
        self.prepared = Gauge(
            "fgo_dra_plugin_prepared_claims", "Claims currently prepared on this node.",
            registry=registry,
        )  # fmt: skip


class Driver:
    def __init__(
        self,
        *,
        driver_name: str,
        node_name: str,
        fetch_claim: FetchClaim,
        current_devices: CurrentDevices,
        cdi: CdiStore,
        setup: ContainerSetup,
        checkpoint_path: Path,
        metrics: DriverMetrics,
        mps_root: Path | None = None,
        feature_gates: Mapping[str, bool] = sharing.FEATURE_GATES,
    ) -> None:
        self.driver_name = driver_name
        self.node_name = node_name
        self._fetch_claim = fetch_claim
        self._current_devices = current_devices
        self.cdi = cdi
        self.setup = setup
        self.checkpoint_path = checkpoint_path
        self.metrics = metrics
        self.mps_root = mps_root or checkpoint_path.parent / "mps"
        self.feature_gates = dict(feature_gates)
        self.checkpoint = Checkpoint(driver=driver_name, node=node_name)
        self._claim_locks: dict[str, _ClaimLock] = {}
        self._save_lock = asyncio.Lock()

    # -- start-up ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the checkpoint, drop CDI specs of claims it does not know (a crash between
        writing the spec and the checkpoint) and restore specs of claims it does know."""
        loaded, warning = await asyncio.to_thread(
            ckpt.load, self.checkpoint_path, driver=self.driver_name, node=self.node_name
        )
        if warning:
            log.error("checkpoint.corrupt", warning=warning)
        self.checkpoint = loaded
        removed = await asyncio.to_thread(self.cdi.remove_all_but, loaded.claims)
        if removed:
            log.info("cdi.stale_removed", claims=removed)
        present = await asyncio.to_thread(self.cdi.claim_uids)
        for claim in loaded.claims.values():
            if claim.uid not in present:
                await self._write_spec(claim.uid, claim.devices)
                log.info("cdi.restored", claim_uid=claim.uid)
        self.metrics.prepared.set(len(loaded.claims))
        log.info("checkpoint.loaded", claims=len(loaded.claims), path=str(self.checkpoint_path))

    # -- prepare ----------------------------------------------------------------------------

    async def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        unique: dict[str, ClaimRef] = {}
        for ref in claims:
            unique.setdefault(ref.uid, ref)  # a UID asked twice is prepared once
        async with self._locked(unique):
            results = await asyncio.gather(*(self._prepare_one(c) for c in unique.values()))
            answers = {uid: r for uid, (r, _) in zip(unique, results, strict=True)}
            fresh = {uid: new for uid, (_, new) in zip(unique, results, strict=True) if new}
            if fresh:
                try:
                    await self._commit(add=fresh)
                except OSError as exc:
                    # Not saved means not prepared: answer errors so the kubelet retries.
                    log.error("checkpoint.write_failed", error=str(exc))
                    for uid in fresh:
                        answers[uid] = PrepareResult(error=f"cannot write checkpoint: {exc}")
                        self.metrics.calls.labels("prepare", "error").inc()
                    fresh = {}
            for uid, new in fresh.items():
                self.metrics.calls.labels("prepare", "ok").inc()
                log.info(
                    "claim.prepared",
                    namespace=new.namespace,
                    name=new.name,
                    claim_uid=uid,
                    devices=[d.device for d in new.devices],
                )
        self.metrics.prepared.set(len(self.checkpoint.claims))
        return {c.uid: answers[c.uid] for c in claims}

    @contextlib.asynccontextmanager
    async def _locked(self, uids: Iterable[str]) -> AsyncIterator[None]:
        """Hold the locks of these claims (in UID order, so two batches never deadlock)."""
        entries = []
        for uid in sorted(set(uids)):
            entry = self._claim_locks.setdefault(uid, _ClaimLock())
            entry.users += 1
            entries.append((uid, entry))
        held: list[asyncio.Lock] = []
        try:
            for _, entry in entries:
                await entry.lock.acquire()
                held.append(entry.lock)
            yield
        finally:
            for lock in held:
                lock.release()
            for uid, entry in entries:
                entry.users -= 1
                if entry.users == 0 and self._claim_locks.get(uid) is entry:
                    del self._claim_locks[uid]

    async def _prepare_one(self, ref: ClaimRef) -> tuple[PrepareResult, PreparedClaim | None]:
        """(result, the claim to save if newly prepared). The caller holds the claim's lock."""
        started = time.perf_counter()
        bound = log.bind(namespace=ref.namespace, name=ref.name, claim_uid=ref.uid)
        try:
            known = self.checkpoint.claims.get(ref.uid)
            if known is not None:
                if not self.cdi.path(ref.uid).exists():
                    await self._write_spec(ref.uid, known.devices)
                self.metrics.calls.labels("prepare", "cached").inc()
                return PrepareResult(known.devices), None
            devices = await self._resolve(ref)
            await self._write_spec(ref.uid, devices)
        except ClaimError as exc:
            self.metrics.calls.labels("prepare", "error").inc()
            bound.warning("claim.prepare_failed", error=str(exc))
            return PrepareResult(error=str(exc)), None
        except Exception as exc:
            self.metrics.calls.labels("prepare", "error").inc()
            bound.exception("claim.prepare_crashed")
            return PrepareResult(error=f"internal error preparing {ref}: {exc}"), None
        finally:
            self.metrics.prepare_seconds.observe(time.perf_counter() - started)
        new = PreparedClaim(
            uid=ref.uid,
            namespace=ref.namespace,
            name=ref.name,
            devices=devices,
            cdi_spec_file=self.cdi.path(ref.uid).name,
            prepared_at=time.time(),
        )
        return PrepareResult(devices), new

    async def _resolve(self, ref: ClaimRef) -> tuple[PreparedDevice, ...]:
        claim = await self._fetch_claim(ref.namespace, ref.name)
        if claim is None:
            raise ClaimError(f"ResourceClaim {ref.namespace}/{ref.name} not found")
        uid = (claim.get("metadata") or {}).get("uid", "")
        if uid != ref.uid:
            raise ClaimError(
                f"ResourceClaim {ref.namespace}/{ref.name} has UID {uid}, not {ref.uid} "
                "(deleted and re-created?)"
            )
        allocation = (claim.get("status") or {}).get("allocation")
        if not allocation:
            raise ClaimError(f"ResourceClaim {ref.namespace}/{ref.name} is not allocated")
        results: list[Obj] = [
            r
            for r in ((allocation.get("devices") or {}).get("results") or [])
            if r.get("driver") == self.driver_name
        ]
        return await self._prepare_results(ref, allocation, results)

    async def _prepare_results(
        self, ref: ClaimRef, allocation: Obj, results: Sequence[Obj]
    ) -> tuple[PreparedDevice, ...]:
        """The claim's allocation results of our driver -> prepared devices (what the
        checkpoint keeps and :meth:`claim_spec` turns into CDI edits). GPUs here; the
        compute-domain channel driver overrides it (``fgo_dra_plugin.channels``)."""
        current = self._current_devices()
        if results and current is None:
            raise ClaimError(
                f"node {self.node_name} has no topology record yet; cannot map devices"
            )
        prepared: list[PreparedDevice] = []
        kinds: dict[str, sharing.DeviceType] = {}
        for result in results:
            pool, name = str(result.get("pool", "")), str(result.get("device", ""))
            if pool != self.node_name:
                raise ClaimError(
                    f"device {name} of claim {ref.namespace}/{ref.name} is allocated from pool "
                    f"{pool!r}, not from this node's pool {self.node_name!r}"
                )
            device = current.get(name) if current is not None else None
            if device is None:
                known = ", ".join(sorted(current or ())) or "none"
                raise ClaimError(
                    f"device {name} of claim {ref.namespace}/{ref.name} is not a device of node "
                    f"{self.node_name} (it has: {known})"
                )
            prepared.append(
                PreparedDevice(
                    request=str(result.get("request", "")),
                    pool=pool,
                    device=name,
                    cdi_device_ids=(self.cdi.kind.device_id(ref.uid, name),),
                    uuid=device.uuid,
                    share_id=str(result.get("shareID") or ""),
                )
            )
            kinds[name] = _device_type(device)
        return await self._apply_sharing(ref, allocation, prepared, kinds)

    async def _apply_sharing(
        self,
        ref: ClaimRef,
        allocation: Obj,
        prepared: list[PreparedDevice],
        kinds: Mapping[str, sharing.DeviceType],
    ) -> tuple[PreparedDevice, ...]:
        """The claim's opaque configs (NVIDIA's GpuConfig/MigDeviceConfig, the reference's
        example GpuConfig) -> per-device sharing record and container edits; MPS directories
        created. A config we cannot read or that is invalid fails the claim."""
        results = [
            sharing.AllocationResult(d.request, d.device, kinds[d.device], d.uuid) for d in prepared
        ]
        try:
            groups = sharing.group_results(
                allocation, self.driver_name, results, self.feature_gates
            )
        except sharing.SharingConfigError as exc:
            raise ClaimError(f"prepare devices failed: {exc}") from None
        by_device: dict[str, PreparedDevice] = {}
        for group in groups:
            config = group.config
            summary = tuple(sorted((k, str(v)) for k, v in sharing.sharing_summary(config).items()))
            mounts: tuple[tuple[str, str], ...] = ()
            env: list[str] = []
            daemon_id = ""
            if config.strategy == sharing.MPS:
                assert config.mps is not None  # normalised: MPS always has settings
                try:
                    config.mps.pinned_limits(group.uuids)
                except sharing.SharingConfigError as exc:
                    raise ClaimError(
                        "prepare devices failed: error applying config: error transforming "
                        f"DefaultPerDevicePinnedMemoryLimit into string: {exc}"
                    ) from None
                daemon_id = sharing.mps_daemon_id(ref.uid, group.uuids)
                mounts = await asyncio.to_thread(self._mps_dirs, daemon_id)
                env.append(f"CUDA_MPS_PIPE_DIRECTORY={sharing.MPS_PIPE_CONTAINER_DIR}")
            for result in group.results:
                device = next(d for d in prepared if d.device == result.device)
                by_device[result.device] = replace(
                    device,
                    sharing=summary,
                    env=tuple(env + sharing.reference_env(config, result.device)),
                    mounts=mounts,
                    mps_daemon_id=daemon_id,
                )
        return tuple(by_device[d.device] for d in prepared)

    def _mps_dirs(self, daemon_id: str) -> tuple[tuple[str, str], ...]:
        """The MPS control daemon's directories for one claim group (NVIDIA's layout), as
        (host path, container path) mounts: pipe -> /tmp/nvidia-mps, shm -> /dev/shm."""
        root = self.mps_root / daemon_id
        for sub in ("pipe", "shm", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        return (
            (str(root / "shm"), sharing.MPS_SHM_CONTAINER_DIR),
            (str(root / "pipe"), sharing.MPS_PIPE_CONTAINER_DIR),
        )

    def _remove_mps_dirs(self, devices: Iterable[PreparedDevice]) -> None:
        for daemon_id in {d.mps_daemon_id for d in devices if d.mps_daemon_id}:
            shutil.rmtree(self.mps_root / daemon_id, ignore_errors=True)

    def claim_spec(self, uid: str, devices: Sequence[PreparedDevice]) -> dict[str, Any]:
        """The CDI spec of one prepared claim (rebuilt from the checkpoint after a restart).
        GPUs here; the channel driver overrides it."""
        edits = {d.device: SharingEdits(d.env, d.mounts) for d in devices if d.env or d.mounts}
        return claim_spec(
            self.cdi.kind, uid, [(d.device, d.uuid) for d in devices], self.setup, edits
        )

    async def _write_spec(self, uid: str, devices: Sequence[PreparedDevice]) -> None:
        spec = self.claim_spec(uid, devices)
        await asyncio.to_thread(self.cdi.write, uid, spec)

    async def _commit(
        self, *, add: Mapping[str, PreparedClaim] | None = None, remove: Iterable[str] = ()
    ) -> None:
        """Save the checkpoint with these changes, then publish them in memory (OSError if the
        save failed; memory is then unchanged). The callers hold the claims' locks."""
        async with self._save_lock:
            gone = set(remove)
            claims = {uid: c for uid, c in self.checkpoint.claims.items() if uid not in gone}
            claims.update(add or {})
            data = Checkpoint(self.driver_name, self.node_name, claims).encode()
            await asyncio.to_thread(ckpt.write_atomically, self.checkpoint_path, data)
            self.checkpoint.claims = claims

    # -- unprepare --------------------------------------------------------------------------

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, str]:
        """claim UID -> error ("" = done)."""
        out: dict[str, str] = {ref.uid: "" for ref in claims}
        async with self._locked(out):
            known = {uid for uid in out if uid in self.checkpoint.claims}
            gone = {uid: self.checkpoint.claims[uid] for uid in known}
            if known:
                try:
                    await self._commit(remove=known)
                except OSError as exc:
                    # Still prepared as far as the disk knows: keep it so a retry does the work.
                    log.error("checkpoint.write_failed", error=str(exc))
                    for uid in known:
                        out[uid] = f"cannot write checkpoint: {exc}"
            for ref in claims:
                if out[ref.uid]:
                    self.metrics.calls.labels("unprepare", "error").inc()
                    continue
                try:
                    await asyncio.to_thread(self.cdi.remove, ref.uid)
                    if ref.uid in known:
                        await asyncio.to_thread(self._remove_mps_dirs, gone[ref.uid].devices)
                except OSError as exc:
                    out[ref.uid] = f"cannot remove CDI spec of {ref}: {exc}"
                    self.metrics.calls.labels("unprepare", "error").inc()
                    continue
                self.metrics.calls.labels("unprepare", "ok").inc()
                log.info(
                    "claim.unprepared",
                    namespace=ref.namespace,
                    name=ref.name,
                    claim_uid=ref.uid,
                    known=ref.uid in known,
                )
        self.metrics.prepared.set(len(self.checkpoint.claims))
        return out


def _device_type(device: PublishedDevice) -> sharing.DeviceType:
    kind = ((device.device.get("attributes") or {}).get(DRA_NAMES.attr_type) or {}).get("string")
    return "mig" if kind == DRA_NAMES.type_mig else "gpu"
