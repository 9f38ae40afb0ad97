"""``nvidia-smi dmon`` and ``pmon``: scrolling per-device / per-process samples.

dmon's default columns and widths follow ../shared/reference/nvidia-smi-h100/dmon.txt; the other
``-s`` groups and pmon use the same column rules. Samples come from the shared telemetry model,
taken afresh for every line; ``-c`` bounds the run, otherwise it runs until interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from fgo_nvidia_smi import clock
from fgo_nvidia_smi.cli import RC_OK, Options, UsageError
from fgo_nvidia_smi.state import GpuView, Snapshot

Column = tuple[str, str, Callable[[GpuView], str]]


def _num(value: int | float) -> str:
    return str(round(value))


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
        ("pviol", "%", lambda g: "0"),
        ("tviol", "bool", lambda g: "0"),
    ],
    "m": [
        ("fb", "MB", lambda g: str(g.memory_used_mib)),
        ("bar1", "MB", lambda g: "1"),
        ("ccpm", "MB", lambda g: "0"),
    ],
    "e": [
        ("sbecc", "errs", lambda g: "0"),
        ("dbecc", "errs", lambda g: "0"),
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


def _stamp(opts: Options, t: float) -> tuple[str, str, str]:
    """Leading date/time header, unit and value cells for ``-o D``/``-o T``."""
    heads, units, values = [], [], []
    if "D" in opts.date_time:
        heads.append(f"{'Date':<8}")
        units.append(f"{'YYYYMMDD':<8}")
        values.append(time.strftime("%Y%m%d", time.localtime(t)))
    if "T" in opts.date_time:
        heads.append(f"{'Time':<8}")
        units.append(f"{'HH:MM:SS':<8}")
        values.append(time.strftime("%H:%M:%S", time.localtime(t)))
    if not heads:
        return "", "", ""
    return ("#" + " ".join(heads) + " ", "#" + " ".join(units) + " ", " " + " ".join(values) + " ")


def _dmon_header(opts: Options, cols: list[Column]) -> str:
    head, unit, _ = _stamp(opts, 0.0)
    first = f"{head} gpu" if head else "# gpu"
    second = f"{unit} Idx" if unit else "# Idx"
    line1 = first + "".join(f" {name:>6}" for name, _, _ in cols) + " "
    line2 = second + "".join(f" {u:>6}" for _, u, _ in cols) + " "
    return f"{line1}\n{line2}\n"


def _dmon_lines(opts: Options, cols: list[Column], snapshot: Snapshot) -> str:
    _, _, stamp = _stamp(opts, snapshot.t)
    out = []
    for gpu in snapshot.gpus:
        cells = "".join(f" {get(gpu):>6}" for _, _, get in cols)
        out.append(f"{stamp}{gpu.index:>5}{cells} ")
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
    head, unit, _ = _stamp(opts, 0.0)
    names: list[tuple[str, str]] = []
    if util:
        names += [(n, "%") for n in ("sm", "mem", "enc", "dec", "jpg", "ofa")]
    if mem:
        names += [("fb", "MB"), ("ccpm", "MB")]
    line1 = (head + " gpu" if head else "# gpu") + f"{'pid':>12}{'type':>7}"
    line2 = (unit + " Idx" if unit else "# Idx") + f"{'#':>12}{'C/G':>7}"
    line1 += "".join(f"{n:>7}" for n, _ in names) + "    command "
    line2 += "".join(f"{u:>7}" for _, u in names) + "    name "
    return f"{line1}\n{line2}\n"


def _pmon_lines(opts: Options, snapshot: Snapshot) -> str:
    util, mem = _pmon_groups(opts.select)
    _, _, stamp = _stamp(opts, snapshot.t)
    out = []
    for gpu in snapshot.gpus:
        procs = gpu.all_processes
        if not procs:
            cells = "".join(f"{'-':>7}" for _ in range((6 if util else 0) + (2 if mem else 0)))
            out.append(f"{stamp}{gpu.index:>5}{'-':>11}{'-':>6}{cells}    {'-':<{PMON_NAME_WIDTH}}")
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
                f"{stamp}{gpu.index:>5}{proc.pid:>11}{proc.type:>6}{cells}    "
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
