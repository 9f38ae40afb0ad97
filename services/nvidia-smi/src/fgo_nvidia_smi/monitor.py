"""``nvidia-smi dmon`` and ``pmon``: scrolling per-device / per-process samples.

dmon's default columns and widths follow ../shared/reference/nvidia-smi-h100/dmon.txt; the other
``-s`` groups and pmon use the same column rules. Samples come from the shared telemetry model,
taken afresh for every line; ``-c`` bounds the run, otherwise it runs until interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from fgo_common.telemetry import CLOCKS_EVENT_HW_POWER_BRAKE, CLOCKS_EVENT_SW_POWER_CAP

from fgo_nvidia_smi import clock
from fgo_nvidia_smi.cli import RC_OK, Options, UsageError
from fgo_nvidia_smi.state import GpuView, Snapshot

# dmon's pviol: the SW power cap or a power brake holds the clocks.
_POWER_BITS = CLOCKS_EVENT_SW_POWER_CAP | CLOCKS_EVENT_HW_POWER_BRAKE

Column = tuple[str, str, Callable[[GpuView], str]]


def _num(value: int | float) -> str:
    return str(round(value))


def _ecc(gpu: GpuView, count: int) -> str:
    return str(count) if gpu.profile.ecc_supported else "-"


def _mig_dash(fn: Callable[[GpuView], str]) -> Callable[[GpuView], str]:
    return lambda g: "-" if g.mig_enabled else fn(g)


DMON_GROUPS: dict[str, list[Column]] = {
    "p": [
        ("pwr", "W", lambda g: _num(g.sample.power_w)),
        ("gtemp", "C", lambda g: str(g.sample.gpu_temp_c)),
        (
            "mtemp",
            "C",
            lambda g: str(g.sample.mem_temp_c) if g.profile.memory_temp_offset_c else "-",
        ),
    ],
    "u": [
        ("sm", "%", _mig_dash(lambda g: str(g.sample.gpu_util))),
        ("mem", "%", _mig_dash(lambda g: str(g.sample.mem_copy_util))),
        ("enc", "%", _mig_dash(lambda g: str(g.sample.encoder_util))),
        ("dec", "%", _mig_dash(lambda g: str(g.sample.decoder_util))),
        ("jpg", "%", _mig_dash(lambda g: "0")),
        ("ofa", "%", _mig_dash(lambda g: "0")),
    ],
    "c": [
        ("mclk", "MHz", lambda g: str(g.sample.mem_clock_mhz)),
        ("pclk", "MHz", lambda g: str(g.sample.sm_clock_mhz)),
    ],
    "v": [
        # Share of the last interval spent power-capped / thermally slowed (injected faults).
        ("pviol", "%", lambda g: "100" if g.sample.clocks_event_reasons & _POWER_BITS else "0"),
        ("tviol", "bool", lambda g: "1" if g.sample.thermal_throttled else "0"),
    ],
    "m": [
        ("fb", "MB", lambda g: str(g.memory_used_mib)),
        ("bar1", "MB", lambda g: "1"),
        ("ccpm", "MB", lambda g: "0"),
    ],
    "e": [
        (
            "sbecc",
            "errs",
            lambda g: str(g.sample.ecc_sbe_volatile) if g.profile.ecc_supported else "-",
        ),
        (
            "dbecc",
            "errs",
            lambda g: str(g.sample.ecc_dbe_volatile) if g.profile.ecc_supported else "-",
        ),
        ("pci", "errs", lambda g: str(g.sample.pcie_replay_count)),
    ],
    "t": [
        ("rxpci", "MB/s", lambda g: str(g.sample.pcie_rx_bytes_per_s // 1_000_000)),
        ("txpci", "MB/s", lambda g: str(g.sample.pcie_tx_bytes_per_s // 1_000_000)),
    ],
}
DMON_DEFAULT = "puc"


def _columns(select: str) -> list[Column]:
    wanted = select or DMON_DEFAULT
    if any(ch not in DMON_GROUPS for ch in wanted):
        raise UsageError(
            "Invalid combination of input arguments. Please run 'nvidia-smi dmon -h' for help.\n",
            255,
        )
    return [col for key, cols in DMON_GROUPS.items() if key in wanted for col in cols]


def _prefix(opts: Options, t: float) -> tuple[str, str, str, int]:
    """Header label line start, unit line start, row start and GPU-index width, with the
    ``-o D``/``-o T`` date and time columns in front when asked for."""
    heads: list[tuple[str, str, str]] = []
    if "D" in opts.date_time:
        heads.append(("Date", "YYYYMMDD", time.strftime("%Y%m%d", time.localtime(t))))
    if "T" in opts.date_time:
        heads.append(("Time", "HH:MM:SS", time.strftime("%H:%M:%S", time.localtime(t))))
    if not heads:
        return "# gpu", "# Idx", "", 5

    def cells(items: list[str]) -> str:
        return "#" + "".join(f"{h:<12}" for h in items[:-1]) + f"{items[-1]:<13}"

    return (
        cells([h for h, _, _ in heads]) + "gpu",
        cells([u for _, u, _ in heads]) + "Idx",
        " " + "    ".join(v for _, _, v in heads),
        8,
    )


def _dmon_header(opts: Options, cols: list[Column]) -> str:
    first, second, _, _ = _prefix(opts, 0.0)
    line1 = first + "".join(f" {name:>6}" for name, _, _ in cols) + " "
    line2 = second + "".join(f" {u:>6}" for _, u, _ in cols) + " "
    return f"{line1}\n{line2}\n"


def _dmon_lines(opts: Options, cols: list[Column], snapshot: Snapshot) -> str:
    _, _, stamp, width = _prefix(opts, snapshot.t)
    out = []
    for gpu in snapshot.gpus:
        cells = "".join(f" {get(gpu):>6}" for _, _, get in cols)
        out.append(f"{stamp}{gpu.index:>{width}}{cells} ")
    return "\n".join(out) + "\n"


PMON_NAME_WIDTH = 15


def _pmon_groups(select: str) -> tuple[bool, bool]:
    """(utilisation columns, memory columns) for ``pmon -s`` (default ``u``)."""
    wanted = select or "u"
    if any(ch not in "um" for ch in wanted):
        raise UsageError(
            "Invalid combination of input arguments. Please run 'nvidia-smi pmon -h' for help.\n",
            255,
        )
    return "u" in wanted, "m" in wanted


def _pmon_header(opts: Options) -> str:
    # The driver's data rows sit one column left of its header labels; both are reproduced.
    util, mem = _pmon_groups(opts.select)
    first, second, _, _ = _prefix(opts, 0.0)
    names: list[tuple[str, str]] = []
    if util:
        names += [(n, "%") for n in ("sm", "mem", "enc", "dec", "jpg", "ofa")]
    if mem:
        names += [("fb", "MB"), ("ccpm", "MB")]
    line1 = first + f"{'pid':>12}{'type':>7}"
    line2 = second + f"{'#':>12}{'C/G':>7}"
    line1 += "".join(f"{n:>7}" for n, _ in names) + "    command "
    line2 += "".join(f"{u:>7}" for _, u in names) + "    name "
    return f"{line1}\n{line2}\n"


def _pmon_lines(opts: Options, snapshot: Snapshot) -> str:
    util, mem = _pmon_groups(opts.select)
    _, _, stamp, width = _prefix(opts, snapshot.t)
    out = []
    for gpu in snapshot.gpus:
        procs = gpu.all_processes
        if not procs:
            cells = "".join(f"{'-':>7}" for _ in range((6 if util else 0) + (2 if mem else 0)))
            out.append(
                f"{stamp}{gpu.index:>{width}}{'-':>11}{'-':>6}{cells}    {'-':<{PMON_NAME_WIDTH}}"
            )
            continue
        for proc in procs:
            cells = ""
            if util:
                sm = proc.sm_util if proc.sm_util is not None else 0
                cells += f"{sm:>7}{int(sm * 0.35):>7}" + f"{'-':>7}" * 4
            if mem:
                cells += f"{proc.used_mib:>7}{0:>7}"
            name = proc.name.rsplit("/", 1)[-1][:PMON_NAME_WIDTH]
            out.append(
                f"{stamp}{gpu.index:>{width}}{proc.pid:>11}{proc.type:>6}{cells}    "
                f"{name:<{PMON_NAME_WIDTH}}"
            )
    return "\n".join(out) + "\n"


def run_monitor(opts: Options, fresh: Callable[[], Snapshot], out: TextIO) -> int:
    """Print a sample line per GPU (dmon) or process (pmon) every ``-d`` seconds."""
    if opts.subcommand == "dmon":
        cols = _columns(opts.select)
        out.write(_dmon_header(opts, cols))

        def lines(s: Snapshot) -> str:
            return _dmon_lines(opts, cols, s)
    else:
        out.write(_pmon_header(opts))

        def lines(s: Snapshot) -> str:
            return _pmon_lines(opts, s)

    printed = 0
    while True:
        out.write(lines(fresh()))
        out.flush()
        printed += 1
        if opts.count is not None and printed >= opts.count:
            return RC_OK
        clock.sleep(opts.delay_s)
