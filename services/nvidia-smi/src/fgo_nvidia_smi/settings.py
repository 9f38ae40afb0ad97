"""Everything nvidia-smi reads from its environment, read once into one typed object.

nvidia-smi runs inside arbitrary user containers: its inputs are what the node agents inject
(the state mount and the visible-devices variable), never anything the user has to add.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from fgo_common.nodestate import DEFAULT_STATE_DIR, STATE_DIR_ENV

VISIBLE_DEVICES_ENVS = ("FGO_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
SEED_ENV = "FGO_SEED"
# Run:ai's fractional-GPU variable (injected into fractional pods); <1 limits the memory shown.
# KAI's binder injects both names (RUNAI_NUM_OF_GPUS is its deprecated spelling).
FRACTION_ENVS = ("RUNAI_NUM_OF_GPUS", "GPU_PORTION")
FRACTION_ENV = FRACTION_ENVS[0]
# The pod's UID: how a fractional pod (no device plugin Allocate, so no visible-devices
# variable) finds its GPU in the record. FGO_POD_UID is what the chart's
# MutatingAdmissionPolicy injects (downward API); POD_UUID is what Run:ai injects and the
# reference tool read.
POD_UID_ENVS = ("FGO_POD_UID", "POD_UUID")
# Pins "now" (unix seconds): lets tests compare nvidia-smi with the telemetry model exactly.
TIME_ENV = "FGO_SMI_TIME"


class SettingsError(ValueError):
    """An environment variable with a value nvidia-smi cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    state_dir: str
    # Raw device list (None = variable unset = every GPU of the node).
    visible_devices: str | None
    seed: int
    fixed_time: float | None
    # Pod name: the kubelet sets the container hostname to it; marks our own pod's processes.
    hostname: str
    gpu_fraction: float = 1.0
    # Set when the environment named a share (RUNAI_NUM_OF_GPUS / GPU_PORTION in (0, 1));
    # otherwise a GPU found through pod_uid shows the share the record gives the pod.
    fraction_from_env: bool = False
    pod_uid: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        visible: str | None = None
        # FGO_VISIBLE_DEVICES first: the device plugin can be told to inject that name instead of
        # NVIDIA_VISIBLE_DEVICES so a node that also has the real NVIDIA runtime is not confused.
        for name in VISIBLE_DEVICES_ENVS:
            if name in env:
                visible = env[name]
                break
        seed_raw = env.get(SEED_ENV, "0").strip() or "0"
        try:
            seed = int(seed_raw)
        except ValueError as exc:
            raise SettingsError(f"{SEED_ENV}={seed_raw!r} is not an integer") from exc
        time_raw = env.get(TIME_ENV, "").strip()
        fixed_time: float | None = None
        if time_raw:
            try:
                fixed_time = float(time_raw)
            except ValueError as exc:
                raise SettingsError(f"{TIME_ENV}={time_raw!r} is not a unix time") from exc
        fraction, from_env = 1.0, False
        for name in FRACTION_ENVS:
            fraction_raw = env.get(name, "").strip()
            if not fraction_raw:
                continue
            try:
                value = float(fraction_raw)
            except ValueError:
                continue  # as the reference tool: a bad value is ignored, not fatal
            if 0.0 < value < 1.0:
                fraction, from_env = value, True
                break
            if value >= 1.0:
                from_env = True  # a whole GPU (or more): no scaling, and none from the record
                break
        pod_uid = ""
        for name in POD_UID_ENVS:
            pod_uid = env.get(name, "").strip()
            if pod_uid:
                break
        return cls(
            state_dir=env.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR,
            visible_devices=visible,
            seed=seed,
            fixed_time=fixed_time,
            hostname=env.get("HOSTNAME", ""),
            gpu_fraction=fraction,
            fraction_from_env=from_env,
            pod_uid=pod_uid,
        )
