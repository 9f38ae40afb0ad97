"""The checkpoint of prepared claims: what makes NodePrepareResources idempotent across restarts.

The kubelet may call NodePrepareResources again for a claim we already prepared (after its own
restart, or ours, or a timeout) and expects the same answer; NodeUnprepareResources must still
find the CDI spec after we restarted. So every prepared claim is recorded here before we answer.

Format: versioned JSON ``{"version": 1, "driver", "node", "checksum", "claims": {uid: ...}}``;
``checksum`` is sha256 over the canonical ``claims`` JSON, so a torn or hand-edited file is
detected. Written temp file -> fsync -> rename -> fsync of the directory: a crash leaves either
the old or the new checkpoint, never a mix. A corrupt file is moved aside (``.corrupt``) and we
start empty: the kubelet re-prepares claims of pods it (re)starts, and its own checkpoint drives
unprepare. A file of a *newer* version is refused (we would not understand what it promises).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint we must not use (the message says why and where)."""


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    """One allocation result of a prepared claim, as answered to the kubelet."""

    request: str
    pool: str
    device: str
    cdi_device_ids: tuple[str, ...]
    uuid: str
    share_id: str = ""
    # The sharing config applied (fgo_common.sharing.sharing_summary, sorted pairs), the
    # container edits it added, and the MPS control daemon id whose directories unprepare
    # removes.
    sharing: tuple[tuple[str, str], ...] = ()
    env: tuple[str, ...] = ()
    mounts: tuple[tuple[str, str], ...] = ()
    mps_daemon_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request": self.request,
            "pool": self.pool,
            "device": self.device,
            "cdiDeviceIDs": list(self.cdi_device_ids),
            "uuid": self.uuid,
        }
        if self.share_id:
            out["shareID"] = self.share_id
        if self.sharing:
            out["sharing"] = dict(self.sharing)
        if self.env:
            out["env"] = list(self.env)
        if self.mounts:
            out["mounts"] = [{"hostPath": h, "containerPath": c} for h, c in self.mounts]
        if self.mps_daemon_id:
            out["mpsDaemonID"] = self.mps_daemon_id
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PreparedDevice:
        return cls(
            request=str(raw["request"]),
            pool=str(raw["pool"]),
            device=str(raw["device"]),
            cdi_device_ids=tuple(str(i) for i in raw.get("cdiDeviceIDs") or ()),
            uuid=str(raw.get("uuid", "")),
            share_id=str(raw.get("shareID", "")),
            sharing=tuple(sorted((str(k), str(v)) for k, v in (raw.get("sharing") or {}).items())),
            env=tuple(str(e) for e in raw.get("env") or ()),
            mounts=tuple(
                (str(m["hostPath"]), str(m["containerPath"])) for m in raw.get("mounts") or ()
            ),
            mps_daemon_id=str(raw.get("mpsDaemonID", "")),
        )


@dataclass(frozen=True, slots=True)
class PreparedClaim:
    uid: str
    namespace: str
    name: str
    devices: tuple[PreparedDevice, ...]
    cdi_spec_file: str  # file name inside CDI_ROOT
    prepared_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "devices": [d.to_dict() for d in self.devices],
            "cdiSpecFile": self.cdi_spec_file,
            "preparedAt": round(self.prepared_at, 3),
        }

    @classmethod
    def from_dict(cls, uid: str, raw: dict[str, Any]) -> PreparedClaim:
        return cls(
            uid=uid,
            namespace=str(raw["namespace"]),
            name=str(raw["name"]),
            devices=tuple(PreparedDevice.from_dict(d) for d in raw.get("devices") or ()),
            cdi_spec_file=str(raw.get("cdiSpecFile", "")),
            prepared_at=float(raw.get("preparedAt", 0.0)),
        )


@dataclass
class Checkpoint:
    driver: str
    node: str
    claims: dict[str, PreparedClaim] = field(default_factory=dict)

    def encode(self) -> bytes:
        claims = {uid: c.to_dict() for uid, c in sorted(self.claims.items())}
        body = {
            "version": CHECKPOINT_VERSION,
            "driver": self.driver,
            "node": self.node,
            "checksum": _checksum(claims),
            "claims": claims,
        }
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes, *, source: str = "checkpoint") -> Checkpoint:
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise CorruptCheckpoint(f"{source}: not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise CorruptCheckpoint(f"{source}: expected a JSON object")
        version = raw.get("version")
        if not isinstance(version, int):
            raise CorruptCheckpoint(f"{source}: no version")
        if version > CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{source}: version {version} is newer than this plugin's {CHECKPOINT_VERSION}; "
                "refusing to guess what it holds (downgrade? remove it only after draining "
                "the node's GPU pods)"
            )
        claims_raw = raw.get("claims")
        if not isinstance(claims_raw, dict):
            raise CorruptCheckpoint(f"{source}: no claims map")
        if raw.get("checksum") != _checksum(claims_raw):
            raise CorruptCheckpoint(f"{source}: checksum mismatch (torn write or hand edit)")
        try:
            claims = {uid: PreparedClaim.from_dict(uid, c) for uid, c in claims_raw.items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCheckpoint(f"{source}: malformed claim entry: {exc}") from exc
        return cls(driver=str(raw.get("driver", "")), node=str(raw.get("node", "")), claims=claims)


class CorruptCheckpoint(CheckpointError):
    """The file is unreadable; it can be set aside and the plugin start empty."""


def _checksum(claims: dict[str, Any]) -> str:
    canonical = json.dumps(claims, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_atomically(path: Path, data: bytes) -> None:
    """temp file in the same directory -> fsync -> rename -> fsync(directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp_name).replace(path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, checkpoint: Checkpoint) -> None:
    write_atomically(path, checkpoint.encode())


def load(path: Path, *, driver: str, node: str) -> tuple[Checkpoint, str]:
    """The checkpoint at ``path`` (empty if absent), and a warning when a corrupt one was set
    aside. Raises :class:`CheckpointError` for a checkpoint of a newer version."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Checkpoint(driver=driver, node=node), ""
    try:
        checkpoint = Checkpoint.decode(data, source=str(path))
    except CorruptCheckpoint as exc:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        path.replace(aside)
        return Checkpoint(driver=driver, node=node), f"{exc}; moved to {aside}"
    checkpoint.driver, checkpoint.node = driver, node
    return checkpoint, ""
