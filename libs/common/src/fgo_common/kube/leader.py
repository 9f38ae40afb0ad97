"""Leader election through a ``coordination.k8s.io/v1`` Lease, with client-go's semantics.

Every replica of a central service runs a :class:`LeaderElector` for the same Lease:

* A candidate reads the Lease every ``retry_period``. A Lease held by another identity is taken
  over only once its record has stayed unchanged for ``lease_duration`` **as measured by our own
  monotonic clock** since we first saw that record. The holder's ``renewTime`` is never compared
  with our clock: clocks of two nodes disagree, their rates do not (client-go's assumption too).
* Every write (create, take over, renew, release) is an update with the resourceVersion we read,
  so of two candidates racing for an expired Lease exactly one wins (the other gets a 409).
* The leader renews every ``retry_period``. If no renewal has succeeded for ``renew_deadline``
  it stops leading. :meth:`LeaderElector.may_write` — the fence writers check right before each
  write — is true only while the last successful renewal *started* less than ``renew_deadline``
  ago. Since ``renew_deadline < lease_duration``, an old leader's fence has closed before any
  standby can have watched the Lease stand still for ``lease_duration``: no two writers overlap.
* On a graceful stop the leader releases the Lease (holder cleared, duration 1 s), so a standby
  takes over within about one ``retry_period`` instead of a whole ``lease_duration``.

A leader that loses the Lease does not exit (client-go's default): it becomes a standby again
with its caches warm, and :meth:`LeaderElector.lead` cancels the leader-only work it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry, Counter, Gauge

from fgo_common.kube.client import api_client
from fgo_common.kube.errors import describe_error, is_conflict, is_not_found, raise_for_status
from fgo_common.runtime.health import Readiness
from fgo_common.runtime.runner import ServiceContext
from fgo_common.runtime.settings import SettingsError, env_field

log = structlog.get_logger(__name__)

Obj = dict[str, Any]
LeaderWork = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class LeaseSettingsError(ValueError):
    """Lease timings that cannot fence (e.g. a renew deadline not below the lease duration)."""


@dataclass(frozen=True)
class LeaseConfig:
    """Which Lease, who we are, and the three timings (seconds, client-go's defaults)."""

    namespace: str
    name: str
    identity: str
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def validate(self) -> None:
        if not self.identity:
            raise LeaseSettingsError("leader election needs an identity (e.g. the pod name)")
        if not self.name or not self.namespace:
            raise LeaseSettingsError("leader election needs a Lease name and namespace")
        if self.retry_period_s <= 0:
            raise LeaseSettingsError("the retry period must be > 0")
        if not self.renew_deadline_s > self.retry_period_s:
            raise LeaseSettingsError(
                f"the renew deadline ({self.renew_deadline_s:g} s) must be longer than the retry "
                f"period ({self.retry_period_s:g} s), or one slow renewal loses the Lease"
            )
        if not self.lease_duration_s > self.renew_deadline_s:
            raise LeaseSettingsError(
                f"the lease duration ({self.lease_duration_s:g} s) must be longer than the renew "
                f"deadline ({self.renew_deadline_s:g} s): that gap is what keeps an old leader "
                "from writing once a standby may take over"
            )


@dataclass(frozen=True)
class LeaderElectionSettings:
    """The leader-election settings every central service shares (its Settings extend this)."""

    leader_election: bool = env_field(
        "LEADER_ELECTION", False,
        "elect one writer among the replicas through a coordination.k8s.io Lease (the chart "
        "turns it on when replicas > 1); standbys keep their caches warm and write nothing",
    )  # fmt: skip
    lease_name: str = env_field("LEASE_NAME", "", "name of the Lease (empty: the service's own)")
    lease_namespace: str = env_field(
        "LEASE_NAMESPACE", "default", "namespace of the Lease (the chart: the release namespace)"
    )
    lease_identity: str = env_field(
        "LEASE_IDENTITY",
        "",
        "this replica's identity in the Lease (the chart: the pod name; empty: host name + pid)",
    )
    lease_duration_seconds: float = env_field(
        "LEASE_DURATION_SECONDS", 15.0,
        "how long a standby waits after the Lease last changed before taking it over",
    )  # fmt: skip
    renew_deadline_seconds: float = env_field(
        "RENEW_DEADLINE_SECONDS", 10.0,
        "a leader that has not renewed for this long stops writing (must be < the duration)",
    )  # fmt: skip
    retry_period_seconds: float = env_field(
        "RETRY_PERIOD_SECONDS", 2.0, "period of the leader's renewals and the standbys' checks"
    )

    def lease_config(self, default_name: str) -> LeaseConfig:
        namespace = self.lease_namespace or "default"
        identity = self.lease_identity or f"{socket.gethostname()}-{os.getpid()}"
        return LeaseConfig(
            namespace,
            self.lease_name or default_name,
            identity,
            self.lease_duration_seconds,
            self.renew_deadline_seconds,
            self.retry_period_seconds,
        )

    def elector(
        self,
        lease_api: client.ApiClient,
        api: client.ApiClient,
        default_name: str,
        registry: CollectorRegistry | None = None,
        readiness: Readiness | None = None,
    ) -> LeaderElector | None:
        """The elector when ``LEADER_ELECTION`` is on (else None), with ``api``'s writes fenced
        by it. The Lease needs a client of its own: the fence must not stop its renewals."""
        if not self.leader_election:
            return None
        elector = LeaderElector(
            lease_api, self.lease_config(default_name), registry=registry, readiness=readiness
        )
        fence_writes(api, elector.may_write)
        return elector

    def validate_leader_election(self) -> None:
        if not self.leader_election:
            return
        try:
            self.lease_config("check").validate()
        except LeaseSettingsError as exc:
            raise SettingsError(
                f"LEASE_DURATION_SECONDS / RENEW_DEADLINE_SECONDS / RETRY_PERIOD_SECONDS: {exc}"
            ) from None


class NotLeading(RuntimeError):
    """A write refused because this replica is not (or no longer surely) the leader."""


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def fence_writes(api: client.ApiClient, may_write: Callable[[], bool]) -> None:
    """Make every write through ``api`` raise :class:`NotLeading` unless ``may_write()``.

    Checked at the last moment before the request leaves, so no code path of the service can
    write after its fence closed (reads, lists and watches go on: that keeps caches warm)."""
    send = api.request

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if method.upper() not in SAFE_METHODS and not may_write():
            raise NotLeading(f"{method} {url.split('?', maxsplit=1)[0]}: not the leader")
        return send(method, url, *args, **kwargs)

    api.request = request  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def elected_client(
    kubeconfig: str | None,
    settings: LeaderElectionSettings,
    default_lease: str,
    ctx: ServiceContext,
) -> AsyncIterator[tuple[client.ApiClient, LeaderElector | None]]:
    """A service's API client and, with ``LEADER_ELECTION``, its elector: the client's writes
    fenced, the Lease renewed through a small client of its own (never fenced)."""
    async with api_client(kubeconfig) as api:
        if not settings.leader_election:
            yield api, None
            return
        async with api_client(kubeconfig, qps_connections=2) as lease_api:
            yield api, settings.elector(lease_api, api, default_lease, ctx.registry, ctx.readiness)


def micro_time(moment: datetime) -> str:
    """A ``metav1.MicroTime`` as the apiserver writes it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderMetrics:
    """``fgo_leader`` (1 while this replica may write) and the transitions it has seen."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.leader = Gauge(
            "fgo_leader",
            "1 while this replica holds its Lease and may write, else 0",
            ["lease"],
            registry=registry,
        )
        self.transitions = Counter(
            "fgo_leader_transitions",
            "times this replica started or stopped leading",
            ["lease", "to"],
            registry=registry,
        )


class LeaderElector:
    """Runs the election for one Lease; see the module docstring for the guarantees."""

    def __init__(
        self,
        api: client.ApiClient,
        config: LeaseConfig,
        *,
        registry: CollectorRegistry | None = None,
        readiness: Readiness | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config.validate()
        self.config = config
        self._leases: Any = client.CoordinationV1Api(api)
        self._clock = clock
        self._metrics = LeaderMetrics(registry)
        self._metrics.leader.labels(config.name).set(0)
        # A standby is Ready (it serves what it serves); /readyz?verbose says it is not leading.
        self._readiness = readiness
        if readiness is not None:
            readiness.notes["leader"] = "false"
        self.leading = asyncio.Event()
        self.changed = asyncio.Event()  # set on every start/stop of leading
        self.holder = ""  # the identity the Lease named when we last read it
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None  # clock() when the last good renewal started
        self.renewals = 0
        self.conflicts = 0

    # -- the fence ------------------------------------------------------------------------------

    def may_write(self) -> bool:
        """True while we lead and our last renewal started less than ``renew_deadline`` ago."""
        renewed = self._renewed_at
        return (
            self.leading.is_set()
            and renewed is not None
            and self._clock() - renewed < self.config.renew_deadline_s
        )

    # -- one round --------------------------------------------------------------------------------

    async def _read(self) -> Obj | None:
        try:
            resp = await self._leases.read_namespaced_lease(
                self.config.name, self.config.namespace, _preload_content=False
            )
            await raise_for_status(resp)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise
        try:
            lease: Obj = json.loads(await resp.read())
        finally:
            resp.release()
        return lease

    def _spec(self, previous: Obj, now: datetime) -> Obj:
        me = self.config.identity
        holder = previous.get("holderIdentity") or ""
        transitions = int(previous.get("leaseTransitions") or 0)
        return {
            "holderIdentity": me,
            "leaseDurationSeconds": max(1, round(self.config.lease_duration_s)),
            "acquireTime": previous.get("acquireTime") if holder == me else micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions if holder in (me, "") else transitions + 1,
        }

    async def _write(self, lease: Obj | None, spec: Obj) -> bool:
        try:
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.config.name, "namespace": self.config.namespace},
                    "spec": spec,
                }
                resp = await self._leases.create_namespaced_lease(
                    self.config.namespace, body, _preload_content=False
                )
            else:
                body = {**lease, "spec": spec}
                resp = await self._leases.replace_namespaced_lease(
                    self.config.name, self.config.namespace, body, _preload_content=False
                )
            await raise_for_status(resp)
            resp.release()
        except Exception as exc:
            if is_conflict(exc):  # 409: someone wrote since we read (or created it first)
                self.conflicts += 1
                return False
            raise
        return True

    async def try_acquire_or_renew(self) -> bool:
        """One round: True if we hold the Lease after it (renewed or newly taken)."""
        started = self._clock()
        lease = await self._read()
        spec: Obj = (lease or {}).get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        self.holder = holder
        if lease is not None:
            record = (
                holder,
                spec.get("renewTime"),
                spec.get("leaseDurationSeconds"),
                spec.get("leaseTransitions"),
            )
            # A change is dated when our read returned (never earlier): a slow read must not
            # let us take over sooner. Our own renewals are dated when the round started
            # (never later): the fence closes early rather than late.
            read_at = self._clock()
            if record != self._observed:
                self._observed, self._observed_at = record, read_at
            duration = float(spec.get("leaseDurationSeconds") or self.config.lease_duration_s)
            held_by_other = holder not in ("", self.config.identity)
            if held_by_other and read_at < self._observed_at + duration:
                return False
        if not await self._write(lease, self._spec(spec, datetime.now(UTC))):
            return False
        self.holder = self.config.identity
        self._renewed_at = started
        self.renewals += 1
        return True

    # -- the loop ---------------------------------------------------------------------------------

    def _set_leading(self, leading: bool, reason: str) -> None:
        if leading == self.leading.is_set():
            return
        if leading:
            self.leading.set()
        else:
            self.leading.clear()
        self.changed.set()
        self._metrics.leader.labels(self.config.name).set(1 if leading else 0)
        if self._readiness is not None:
            self._readiness.notes["leader"] = "true" if leading else "false"
        self._metrics.transitions.labels(self.config.name, "leader" if leading else "standby").inc()
        log.info(
            "leader.started" if leading else "leader.stopped",
            lease=f"{self.config.namespace}/{self.config.name}",
            identity=self.config.identity,
            reason=reason,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign and renew until ``stop``; then release the Lease if we hold it."""
        try:
            while not stop.is_set():
                try:
                    held = await asyncio.wait_for(
                        self.try_acquire_or_renew(), timeout=self.config.renew_deadline_s
                    )
                    error = ""
                except Exception as exc:
                    held, error = False, describe_error(exc)
                if held:
                    self._set_leading(True, "acquired")
                elif self.leading.is_set():
                    if not self.may_write():
                        self._set_leading(False, error or f"Lease held by {self.holder!r}")
                    else:
                        log.warning("leader.renew_failed", error=error or "conflict")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._next_round_in())
        finally:
            if self.leading.is_set():
                self._set_leading(False, "stopping")
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.release(), timeout=self.config.retry_period_s)

    def _next_round_in(self) -> float:
        """The retry period, but never past the moment our fence would close unnoticed."""
        if self.leading.is_set() and self._renewed_at is not None:
            left = self._renewed_at + self.config.renew_deadline_s - self._clock()
            return max(0.0, min(self.config.retry_period_s, left))
        return self.config.retry_period_s

    async def release(self) -> bool:
        """Give the Lease up (holder cleared, 1 s duration) so a standby need not wait it out."""
        lease = await self._read()
        spec: Obj = (lease or {}).get("spec") or {}
        if lease is None or spec.get("holderIdentity") != self.config.identity:
            return False
        released = {
            **spec,
            "holderIdentity": None,
            "leaseDurationSeconds": 1,
            "renewTime": micro_time(datetime.now(UTC)),
        }
        self._renewed_at = None
        return await self._write(lease, released)

    async def lead(self, stop: asyncio.Event, work: LeaderWork) -> None:
        """Run :meth:`run` and, each time we lead, ``work(lost)``: ``lost`` is set and the work
        cancelled when leading stops. Returns on ``stop``; re-raises what the work raised."""
        election = asyncio.create_task(self.run(stop), name=f"lease-{self.config.name}")
        try:
            while not stop.is_set():
                if not await _first_of(self.leading.wait(), stop.wait()):
                    break
                lost = asyncio.Event()
                job = asyncio.create_task(work(lost), name=f"leader-{self.config.name}")
                try:
                    while self.leading.is_set() and not stop.is_set():
                        self.changed.clear()
                        await _first_of(self.changed.wait(), stop.wait(), _done(job))
                        if job.done():
                            job.result()  # a crash of the leader's work ends the service
                finally:
                    # Also when we are cancelled: the work must never outlive its leadership.
                    lost.set()
                    job.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await job
        finally:
            if not stop.is_set():
                election.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await election


async def _done(task: asyncio.Task[Any]) -> None:
    """Wait for ``task`` without cancelling it when the waiter is cancelled."""
    await asyncio.wait({task})


async def _first_of(*waits: Awaitable[Any]) -> bool:
    """Wait for the first of ``waits`` to finish (cancelling the rest); True if ``waits[0]``."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    return tasks[0] in done
