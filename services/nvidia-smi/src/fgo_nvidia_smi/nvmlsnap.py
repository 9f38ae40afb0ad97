"""The hidden ``nvidia-smi --fgo-nvml-snapshot`` mode: what the fake libnvidia-ml.so.1 reports.

The NVML library (services/nvidia-smi/nvml/) holds no model of its own (design principle 3): it
runs this mode, which samples the visible GPUs exactly as every other mode does (same state,
same ``NVIDIA_VISIBLE_DEVICES`` logic, same telemetry model) for the current and the next few
10-s telemetry buckets, and caches the frames. The format is line-oriented, tab-separated
(trivial to parse in C); it is a private contract between this module and nvml/fakenvml.c, both
versioned by the header line. docs/nvml.md describes it.
"""

from __future__ import annotations

import math
from typing import TextIO

from fgo_common.telemetry import BUCKET_SECONDS

from fgo_nvidia_smi.settings import Settings, SettingsError
from fgo_nvidia_smi.state import (
    DriverUnavailableError,
    GpuView,
    MigView,
    Process,
    build_snapshot,
    load_node,
)

FLAG = "--fgo-nvml-snapshot"
NODE_FLAG = "--fgo-nvml-node-snapshot"
FORMAT = "FGO-NVML\t1"
NODE_FORMAT = "FGO-NVML-NODE\t1"
DEFAULT_FRAMES = 12  # two minutes of buckets: one exec serves a 1 Hz poller for 2 minutes
MAX_FRAMES = 360
# The node file: ten minutes of buckets, rewritten by the agents after five (docs/nvml.md).
DEFAULT_NODE_FRAMES = 60
MIB = 1024 * 1024
NO_ID = 0xFFFFFFFF  # NVML's "not a MIG process" gpuInstanceId / computeInstanceId

# nvml.h NVML_DEVICE_ARCH_* and nvmlBrandType_t values for the profiles' strings.
ARCHITECTURES = {
    "kepler": 2,
    "maxwell": 3,
    "pascal": 4,
    "volta": 5,
    "turing": 6,
    "ampere": 7,
    "ada lovelace": 8,
    "ada": 8,
    "hopper": 9,
    "blackwell": 10,
}
ARCH_UNKNOWN = 0xFFFFFFFF
BRANDS = {
    "quadro": 1,
    "tesla": 2,
    "nvs": 3,
    "geforce": 5,
    "titan": 6,
    "quadro rtx": 12,
    "nvidia rtx": 13,
    "nvidia": 14,
}


def _clean(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")


def _cuda_int(version: str) -> int:
    """``"13.0"`` -> 13000, NVML's CUDA driver version encoding (major * 1000 + minor * 10)."""
    major, _, minor = version.partition(".")
    try:
        return int(major) * 1000 + int(minor or "0") * 10
    except ValueError:
        return 0


def _process_lines(processes: list[Process]) -> list[str]:
    return [
        "\t".join(
            (
                "P",
                str(p.pid),
                str(p.used_mib * MIB),
                str(NO_ID if p.gi_id is None else p.gi_id),
                str(NO_ID if p.ci_id is None else p.ci_id),
                _clean(p.name),
            )
        )
        for p in processes
    ]


def _gpu_line(gpu: GpuView) -> str:
    p, s = gpu.profile, gpu.sample
    fan = getattr(s, "fan_speed_percent", None)
    video = getattr(s, "video_clock_mhz", p.clock_video_max_mhz)
    lost = False
    if gpu.record.faults:  # imported only then: it costs start-up time, as in main.py
        from fgo_common.faults import gpu_lost

        lost = gpu_lost(gpu.record.faults, gpu.t)
    fields = (
        "G",
        str(int(lost)),
        _clean(gpu.uuid),
        _clean(gpu.name),
        gpu.serial,
        gpu.bus_id,
        str(gpu.record.minor),
        str(p.pci_device_id),
        str(p.pci_subsystem_id),
        str(ARCHITECTURES.get(p.architecture.lower(), ARCH_UNKNOWN)),
        str(p.compute_capability[0]),
        str(p.compute_capability[1]),
        str(BRANDS.get(p.brand.lower(), 0)),
        str(gpu.memory_total_mib * MIB),
        str(gpu.memory_reserved_mib * MIB),
        str(gpu.memory_used_mib * MIB),
        str(gpu.memory_free_mib * MIB),
        str(s.gpu_util),
        str(s.mem_copy_util),
        str(s.encoder_util),
        str(s.decoder_util),
        str(s.gpu_temp_c),
        str(round(s.power_w * 1000)),
        str(round(p.power_default_limit_w * 1000)),
        str(s.energy_mj),
        str(s.sm_clock_mhz),
        str(s.mem_clock_mhz),
        str(p.clock_sm_max_mhz),
        str(p.clock_mem_mhz),
        str(video),
        str(s.pstate),
        str(s.clocks_event_reasons),
        str(-1 if fan is None else fan),
        str(int(p.mig_capable)),
        str(int(gpu.mig_enabled)),
        str(p.mig_max_gpu_instances if p.mig_capable else 0),
        str(p.bar1_mib * MIB),
        str(min(p.bar1_mib, s.bar1_used_mib) * MIB),
        str(round(p.power_min_limit_w * 1000)),
        str(round(p.power_max_limit_w * 1000)),
        str(p.clock_video_max_mhz),
        str(p.temp_slowdown_c),
        str(p.temp_shutdown_c),
        # ECC: supported, then corrected/uncorrected x volatile/aggregate (DRAM, as nvidia-smi)
        str(int(p.ecc_supported)),
        str(s.ecc_sbe_volatile),
        str(s.ecc_dbe_volatile),
        str(s.ecc_sbe_aggregate),
        str(s.ecc_dbe_aggregate),
    )
    return "\t".join(fields)


def _mig_line(gpu: GpuView, mig: MigView) -> str:
    s = mig.sample
    profile_name = mig.profile.name if mig.profile else mig.device.profile
    return "\t".join(
        (
            "M",
            str(mig.index),
            _clean(mig.device.uuid),
            _clean(f"{gpu.name} MIG {profile_name}"),
            str(mig.device.gi_id),
            str(mig.device.ci_id),
            str(s.fb_total_mib * MIB),
            str(s.fb_used_mib * MIB),
            str(s.fb_free_mib * MIB),
            str(mig.bar1_total_mib * MIB),
            str(mig.bar1_used_mib * MIB),
        )
    )


def render(settings: Settings, frames: int = DEFAULT_FRAMES) -> str:
    """The snapshot text; raises DriverUnavailableError when the node state is unusable."""
    node = load_node(settings)
    now = settings.fixed_time
    if now is None:
        import time

        now = time.time()
    out = [FORMAT, f"T\t{now!r}\t{BUCKET_SECONDS!r}\t{frames}"]
    first = build_snapshot(node, settings, t=now)
    out.append(f"D\t{_clean(first.driver_version)}\t{_cuda_int(first.cuda_version)}")
    for k in range(frames):
        t = now + k * BUCKET_SECONDS
        snap = first if k == 0 else build_snapshot(node, settings, t=t)
        out.append(f"F\t{k}\t{math.floor(t / BUCKET_SECONDS)}")
        for gpu in snap.gpus:
            out.append(_gpu_line(gpu))
            out.extend(_process_lines(gpu.all_processes if gpu.mig_enabled else gpu.processes))
            for mig in gpu.migs:
                out.append(_mig_line(gpu, mig))
                out.extend(_process_lines(mig.processes))
    out.append("E")
    return "\n".join(out) + "\n"


def _stamp(path: str) -> str:
    import os

    st = os.stat(path)  # noqa: PTH116 - pathlib costs start-up
    return f"S\t{st.st_ino}\t{st.st_size}\t{st.st_mtime_ns // 10**9}\t{st.st_mtime_ns % 10**9}"


def render_node(settings: Settings, frames: int = DEFAULT_NODE_FRAMES) -> str:
    """The node-wide snapshot the node agents keep in the state dir (``nvml-node.snap``): every
    GPU and MIG device of the node, unfiltered and unscaled, with what the library needs to do
    per container what :func:`render` does through Settings: ``V`` lines (record index, GPU
    UUID, MIG UUIDs by (gi, ci): what :func:`~fgo_nvidia_smi.state.parse_visible` matches), per
    GPU the model's per-pod framebuffer in the model's order (for a Run:ai fraction's clipping,
    :func:`~fgo_nvidia_smi.state._within`), per process its pod (for the container's own
    process name) and its position in that list. ``S`` stamps the topology.json it was built
    from; ``K`` is the seed. Same model, same code as :func:`render` (docs/nvml.md)."""
    from fgo_common.nodestate import state_file
    from fgo_common.telemetry import process_memory_mib

    from fgo_nvidia_smi.state import _process_pid

    path = state_file(settings.state_dir)
    try:
        stamp = _stamp(path)  # before the read: a newer file than this stamp is never trusted
    except OSError as exc:
        raise DriverUnavailableError(str(exc)) from exc
    node = load_node(settings)
    # Every GPU, whole, no fraction, and a hostname no pod has (own names are the library's).
    settings = Settings(
        state_dir=settings.state_dir,
        visible_devices="all",
        seed=settings.seed,
        fixed_time=settings.fixed_time,
        hostname="\x00",
    )
    now = settings.fixed_time
    if now is None:
        import time

        now = time.time()
    out = [NODE_FORMAT, stamp, f"K\t{settings.seed}", f"T\t{now!r}\t{BUCKET_SECONDS!r}\t{frames}"]
    first = build_snapshot(node, settings, t=now)
    out.append(f"D\t{_clean(first.driver_version)}\t{_cuda_int(first.cuda_version)}")
    pods: dict[int, str] = {}
    for rec in node.gpus:
        for usages, holders in [(rec.status.usage, rec.status.holders)] + [
            (m.usage, m.holders) for m in rec.mig_devices
        ]:
            for h in holders:
                pods.setdefault(_process_pid(h.pod_uid or h.pod), h.pod)
            for uid, usage in usages.items():
                pods.setdefault(_process_pid(uid), usage.pod)
    order: dict[str, list[tuple[int, int]]] = {}  # GPU UUID -> (pid, model MiB) in model order
    for gpu in first.gpus:
        order[gpu.uuid] = [
            (_process_pid(uid), mib)
            for uid, mib in process_memory_mib(gpu.record, gpu.profile).items()
        ]
        migs = sorted(gpu.record.mig_devices, key=lambda m: (m.gi_id, m.ci_id))
        out.append(
            "\t".join(
                ["V", str(gpu.record.index), _clean(gpu.uuid)] + [_clean(m.uuid) for m in migs]
            )
        )

    def procs(processes: list[Process], memory: list[tuple[int, int]]) -> list[str]:
        pids = [pid for pid, _ in memory]
        return [
            f"{line}\t{_clean(pods.get(p.pid, ''))}\t{pids.index(p.pid) if p.pid in pids else -1}"
            for line, p in zip(_process_lines(processes), processes, strict=True)
        ]

    for k in range(frames):
        t = now + k * BUCKET_SECONDS
        snap = first if k == 0 else build_snapshot(node, settings, t=t)
        out.append(f"F\t{k}\t{math.floor(t / BUCKET_SECONDS)}")
        for gpu in snap.gpus:
            memory = order.get(gpu.uuid, [])
            out.append(_gpu_line(gpu) + "\t" + ",".join(str(mib) for _, mib in memory))
            # A MIG GPU's own list is its visible MIG devices' processes: the library builds it.
            if not gpu.mig_enabled:
                out.extend(procs(gpu.processes, memory))
            for mig in gpu.migs:
                out.append(_mig_line(gpu, mig))
                out.extend(procs(mig.processes, []))
    out.append("E")
    return "\n".join(out) + "\n"


def run_node(argv: list[str], out: TextIO, err: TextIO, environ: dict[str, str] | None) -> int:
    """``nvidia-smi --fgo-nvml-node-snapshot [FRAMES]``: what node agents write to the state
    dir; exit codes as :func:`run`."""
    frames = DEFAULT_NODE_FRAMES
    if argv:
        try:
            frames = max(1, min(MAX_FRAMES, int(argv[0])))
        except ValueError:
            err.write(f"nvidia-smi {NODE_FLAG}: frame count {argv[0]!r} is not an integer\n")
            return 255
    try:
        out.write(render_node(Settings.from_env(environ), frames))
    except SettingsError as exc:
        err.write(f"nvidia-smi: {exc}\n")
        return 255
    except DriverUnavailableError as exc:
        err.write(f"fake nvidia-smi: cannot read the simulated driver state: {exc}\n")
        return 9
    return 0


def run(argv: list[str], out: TextIO, err: TextIO, environ: dict[str, str] | None) -> int:
    """``nvidia-smi --fgo-nvml-snapshot [FRAMES]``: exit 0 with the snapshot, 9 without a
    driver (unreadable state), 255 on a bad argument; never a traceback."""
    frames = DEFAULT_FRAMES
    if argv:
        try:
            frames = max(1, min(MAX_FRAMES, int(argv[0])))
        except ValueError:
            err.write(f"nvidia-smi {FLAG}: frame count {argv[0]!r} is not an integer\n")
            return 255
    try:
        settings = Settings.from_env(environ)
        out.write(render(settings, frames))
    except SettingsError as exc:
        err.write(f"nvidia-smi: {exc}\n")
        return 255
    except DriverUnavailableError as exc:
        err.write(f"fake nvidia-smi: cannot read the simulated driver state: {exc}\n")
        return 9
    return 0
