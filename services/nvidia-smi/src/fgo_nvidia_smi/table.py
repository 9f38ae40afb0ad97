"""The default summary table and ``-L``, in the layout of the r580 driver's nvidia-smi.

Column widths follow ../shared/reference/nvidia-smi-h100/smi.txt; the MIG section and process
rows (absent from that capture) follow the same driver generation's published output.
"""

from __future__ import annotations

from fgo_nvidia_smi.fmt import NA, banner_time, truncate_left, truncate_right
from fgo_nvidia_smi.state import GpuView, Process, Snapshot

WIDTH = 89  # characters between the outer bars
FULL_RULE = "+" + "-" * WIDTH + "+"
GPU_RULE = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"
GPU_HEADER = (
    "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",
    "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |",
    "|                                         |                        |               MIG M. |",
    "|=========================================+========================+======================|",
)
MIG_RULE = "+" + "-" * 18 + "+" + "-" * 34 + "+" + "-" * 11 + "+" + "-" * 23 + "+"
MIG_HEADER = (
    "| MIG devices:" + " " * (WIDTH - 13) + "|",
    MIG_RULE,
    "| GPU  GI  CI  MIG |                     Memory-Usage |        Vol|        Shared         |",
    "|      ID  ID  Dev |                       BAR1-Usage | SM     Unc| CE ENC  DEC  OFA  JPG |",
    "|                  |                                  |        ECC|                       |",
    "|==================+==================================+===========+=======================|",
)
PROC_HEADER = (
    "| Processes:" + " " * (WIDTH - 11) + "|",
    "|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |",
    "|        ID   ID                                                               Usage      |",
    "|" + "=" * WIDTH + "|",
)
NAME_WIDTH = 27
# The table's abbreviations of the compute modes -q spells out.
_TABLE_COMPUTE_MODE = {
    "Default": "Default",
    "Exclusive_Process": "E. Process",
    "Exclusive_Thread": "E. Thread",
    "Prohibited": "Prohibited",
}
PROC_NAME_WIDTH = 32


def _row(text: str) -> str:
    return "|" + text.ljust(WIDTH)[:WIDTH] + "|"


def _version_line(snapshot: Snapshot) -> str:
    smi = f" NVIDIA-SMI {snapshot.driver_version}"
    driver = f"Driver Version: {snapshot.driver_version}"
    cuda = f"CUDA Version: {snapshot.cuda_version}"
    # Fixed column starts as in the capture: "Driver" at 35, "CUDA" at 66 (inside the bars).
    line = smi.ljust(34) + " " + driver
    line = line.ljust(65) + " " + cuda
    return _row(line)


def _persistence(gpu: GpuView) -> str:
    return "On"


def _gpu_rows(gpu: GpuView) -> list[str]:
    sample = gpu.sample
    name = truncate_right(gpu.name, NAME_WIDTH)
    ecc = NA
    if gpu.profile.ecc_supported:
        ecc = "On" if gpu.mig_enabled else str(sample.ecc_dbe_volatile)
    line1 = (
        f"| {gpu.index:>3}  {name:<{NAME_WIDTH}}    {_persistence(gpu):<3} "
        f"| {gpu.bus_id:>18} {'Off':>3} | {ecc:>20} |"
    )
    fan = NA if sample.fan_speed_percent is None else f"{sample.fan_speed_percent}%"
    power = f"{round(sample.power_w)}W"
    cap = f"{round(sample.power_limit_w)}W"
    used = f"{gpu.memory_used_mib}MiB"
    total = f"{gpu.memory_total_mib}MiB"
    util = NA if gpu.mig_enabled else f"{sample.gpu_util}%"
    line2 = (
        f"|{fan:>4}{f'{sample.gpu_temp_c}C':>6}{f'P{sample.pstate}':>6}{power:>16} / {cap:>5} "
        f"|{used:>11} / {total:>9} |{util:>8}{_TABLE_COMPUTE_MODE[gpu.compute_mode]:>13} |"
    )
    mig = NA
    if gpu.profile.mig_capable:
        mig = "Enabled" if gpu.mig_enabled else "Disabled"
    line3 = f"|{'':41}|{'':24}| {mig:>20} |"
    return [line1, line2, line3]


def _mig_rows(gpu: GpuView) -> list[str]:
    rows: list[str] = []
    for mig in gpu.migs:
        p = mig.profile
        ce, enc, dec, ofa, jpg = (
            (p.copy_engines, p.encoders, p.decoders, p.ofa, p.jpeg) if p else (0, 0, 0, 0, 0)
        )
        sm = mig.device.sm_count or (p.sm_count if p else 0)
        dev = mig.device
        rows.append(
            f"|{gpu.index:>3}{dev.gi_id:>5}{dev.ci_id:>4}{mig.index:>4}  "
            f"|{f'{mig.sample.fb_used_mib}MiB':>19} / {f'{dev.memory_mib}MiB':>8}    "
            f"| {sm:<3}{0:>6} |{ce:>3}{enc:>4}{dec:>5}{ofa:>5}{jpg:>5} |"
        )
        rows.append(f"|{'':18}|{'0MiB':>21} / {f'{mig.bar1_total_mib}MiB':>8}  |{'':11}|{'':23}|")
        rows.append(MIG_RULE)
    return rows


def _proc_row(gpu_index: int, proc: Process) -> str:
    if proc.gi_id is None:
        ids = f"{gpu_index:>5}   N/A  N/A{proc.pid:>16}"
    else:
        ids = f"{gpu_index:>5}{proc.gi_id:>5}{proc.ci_id if proc.ci_id is not None else 0:>5}" + (
            f"{proc.pid:>17}"
        )
    name = truncate_left(proc.name, PROC_NAME_WIDTH)
    return f"|{ids}{proc.type:>7}   {name:<{PROC_NAME_WIDTH}}{f'{proc.used_mib}MiB':>14} |"


def render_table(snapshot: Snapshot) -> str:
    lines = [banner_time(snapshot.t) + " " * 7, FULL_RULE, _version_line(snapshot), GPU_RULE]
    lines.extend(GPU_HEADER)
    for gpu in snapshot.gpus:
        lines.extend(_gpu_rows(gpu))
        lines.append(GPU_RULE)
    lines.append("")
    mig_gpus = [g for g in snapshot.gpus if g.mig_enabled]
    if mig_gpus:
        lines.append(FULL_RULE)
        lines.extend(MIG_HEADER)
        mig_rows = [row for g in mig_gpus for row in _mig_rows(g)]
        if mig_rows:
            lines.extend(mig_rows)
        else:
            lines.append(_row("  No MIG devices found"))
            lines.append(FULL_RULE)
        # The driver pads the line between the MIG and Processes tables with blanks.
        lines.append(" " * WIDTH)
    lines.append(FULL_RULE)
    lines.extend(PROC_HEADER)
    procs = [(g.index, p) for g in snapshot.gpus for p in g.all_processes]
    if procs:
        lines.extend(_proc_row(index, proc) for index, proc in procs)
    else:
        lines.append(_row("  No running processes found"))
    lines.append(FULL_RULE)
    return "\n".join(lines) + "\n"


def render_list(snapshot: Snapshot) -> str:
    """``nvidia-smi -L``: one line per GPU, then its visible MIG devices."""
    lines: list[str] = []
    for gpu in snapshot.gpus:
        lines.append(f"GPU {gpu.index}: {gpu.name} (UUID: {gpu.uuid})")
        for mig in gpu.migs:
            lines.append(
                f"  MIG {mig.device.profile:<12} Device {mig.index:>2}: (UUID: {mig.device.uuid})"
            )
    return "\n".join(lines) + ("\n" if lines else "")
