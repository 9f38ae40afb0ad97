"""NodePrepareResources / NodeUnprepareResources, independent of the gRPC API version.

Prepare of one claim:

1. already in the checkpoint -> the recorded answer (idempotent; the CDI spec is rewritten from
   the checkpoint if it went missing, e.g. /var/run/cdi is a tmpfs and the node rebooted);
2. read the ResourceClaim by namespace/name and check its UID is the one the kubelet asked for
   (a claim deleted and re-created under the same name is a different claim);
3. take the allocation results of our driver; each must come from our pool (the node name) and
   name a device this node publishes right now;
4. write the claim's CDI spec, record the claim in the checkpoint (fsync'd) and answer.

Failures are per claim (``error`` in the claim's response) and never fail the batch: the kubelet
retries just those claims' pods. Unprepare removes the checkpoint entry and the CDI spec; a claim
we do not know is fine (already unprepared).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from fgo_common.dra import PublishedDevice
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fgo_dra_plugin import checkpoint as ckpt
from fgo_dra_plugin.cdi import CdiStore, ContainerSetup, claim_spec
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
    ) -> None:
        self.driver_name = driver_name
        self.node_name = node_name
        self._fetch_claim = fetch_claim
        self._current_devices = current_devices
        self.cdi = cdi
        self.setup = setup
        self.checkpoint_path = checkpoint_path
        self.metrics = metrics
        self.checkpoint = Checkpoint(driver=driver_name, node=node_name)
        self._claim_locks: dict[str, asyncio.Lock] = {}
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
        results = await asyncio.gather(*(self._prepare_one(c) for c in claims))
        fresh = [uid for uid, (_, new) in zip((c.uid for c in claims), results, strict=True) if new]
        out = {c.uid: r for c, (r, _) in zip(claims, results, strict=True)}
        if fresh:
            try:
                await self._save()
            except OSError as exc:
                # Not recorded means not prepared: answer errors so the kubelet retries.
                for uid in fresh:
                    self.checkpoint.claims.pop(uid, None)
                    out[uid] = PrepareResult(error=f"cannot write checkpoint: {exc}")
                log.error("checkpoint.write_failed", error=str(exc))
        self.metrics.prepared.set(len(self.checkpoint.claims))
        return out

    def _lock(self, uid: str) -> asyncio.Lock:
        return self._claim_locks.setdefault(uid, asyncio.Lock())

    async def _prepare_one(self, ref: ClaimRef) -> tuple[PrepareResult, bool]:
        """(result, True if newly prepared and not yet in the saved checkpoint)."""
        started = time.perf_counter()
        bound = log.bind(namespace=ref.namespace, name=ref.name, claim_uid=ref.uid)
        async with self._lock(ref.uid):
            try:
                known = self.checkpoint.claims.get(ref.uid)
                if known is not None:
                    if not self.cdi.path(ref.uid).exists():
                        await self._write_spec(ref.uid, known.devices)
                    self.metrics.calls.labels("prepare", "cached").inc()
                    return PrepareResult(known.devices), False
                devices = await self._resolve(ref)
                await self._write_spec(ref.uid, devices)
                self.checkpoint.claims[ref.uid] = PreparedClaim(
                    uid=ref.uid,
                    namespace=ref.namespace,
                    name=ref.name,
                    devices=devices,
                    cdi_spec_file=self.cdi.path(ref.uid).name,
                    prepared_at=time.time(),
                )
            except ClaimError as exc:
                self.metrics.calls.labels("prepare", "error").inc()
                bound.warning("claim.prepare_failed", error=str(exc))
                return PrepareResult(error=str(exc)), False
            except Exception as exc:
                self.metrics.calls.labels("prepare", "error").inc()
                bound.exception("claim.prepare_crashed")
                return PrepareResult(error=f"internal error preparing {ref}: {exc}"), False
            finally:
                self.metrics.prepare_seconds.observe(time.perf_counter() - started)
        self.metrics.calls.labels("prepare", "ok").inc()
        bound.info("claim.prepared", devices=[d.device for d in devices])
        return PrepareResult(devices), True

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
        results = [
            r
            for r in ((allocation.get("devices") or {}).get("results") or [])
            if r.get("driver") == self.driver_name
        ]
        current = self._current_devices()
        if results and current is None:
            raise ClaimError(
                f"node {self.node_name} has no topology record yet; cannot map devices"
            )
        prepared: list[PreparedDevice] = []
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
        return tuple(prepared)

    async def _write_spec(self, uid: str, devices: Sequence[PreparedDevice]) -> None:
        spec = claim_spec(self.cdi.kind, uid, [(d.device, d.uuid) for d in devices], self.setup)
        await asyncio.to_thread(self.cdi.write, uid, spec)

    async def _save(self) -> None:
        async with self._save_lock:
            data = self.checkpoint.encode()  # snapshot in the loop thread
            await asyncio.to_thread(ckpt.write_atomically, self.checkpoint_path, data)

    # -- unprepare --------------------------------------------------------------------------

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, str]:
        """claim UID -> error ("" = done)."""
        out: dict[str, str] = {}
        removed: dict[str, PreparedClaim] = {}
        for ref in claims:
            async with self._lock(ref.uid):
                known = self.checkpoint.claims.pop(ref.uid, None)
                if known is not None:
                    removed[ref.uid] = known
                out[ref.uid] = ""
        if removed:
            try:
                await self._save()
            except OSError as exc:
                log.error("checkpoint.write_failed", error=str(exc))
                # Still prepared as far as the disk knows: keep it so a retry does the work.
                for uid, known in removed.items():
                    self.checkpoint.claims.setdefault(uid, known)
                    out[uid] = f"cannot write checkpoint: {exc}"
        for ref in claims:
            if out[ref.uid]:
                self.metrics.calls.labels("unprepare", "error").inc()
                continue
            try:
                await asyncio.to_thread(self.cdi.remove, ref.uid)
            except OSError as exc:
                out[ref.uid] = f"cannot remove CDI spec of {ref}: {exc}"
                self.metrics.calls.labels("unprepare", "error").inc()
                continue
            lock = self._claim_locks.get(ref.uid)
            if lock is not None and not lock.locked():
                del self._claim_locks[ref.uid]
            self.metrics.calls.labels("unprepare", "ok").inc()
            log.info(
                "claim.unprepared",
                namespace=ref.namespace,
                name=ref.name,
                claim_uid=ref.uid,
                known=ref.uid in removed,
            )
        self.metrics.prepared.set(len(self.checkpoint.claims))
        return out
