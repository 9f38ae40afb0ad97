"""``nvidia-smi``: the fake GPU operator's drop-in for NVIDIA's tool, inside GPU pods.

Reads the node-local snapshot of the node's topology record that the device plugin / DRA plugin
mount into the container (see docs/nvidia-smi.md), keeps the GPUs the container may see, samples
them with the shared telemetry model and prints what the real tool would print. Start-up time
matters (scripts call it in loops), so only the stdlib and fgo_common's pure modules are imported,
and each mode imports its renderer lazily.
"""

# os.path instead of pathlib: importing pathlib costs start-up time on every call.
# ruff: noqa: PTH118, PTH120, PTH123
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TextIO

from fgo_common.topology import NodeTopology

from fgo_nvidia_smi import clock
from fgo_nvidia_smi.cli import (
    INVALID_COMBINATION,
    RC_DRIVER_NOT_LOADED,
    RC_GPU_LOST,
    RC_NO_PERMISSION,
    RC_NOT_FOUND,
    RC_NOT_SUPPORTED,
    RC_OK,
    RC_OTHER,
    NotSimulatedError,
    Options,
    UsageError,
    parse_args,
)
from fgo_nvidia_smi.settings import Settings, SettingsError
from fgo_nvidia_smi.state import (
    FALLBACK_DRIVER,
    DriverUnavailableError,
    GpuView,
    Snapshot,
    build_snapshot,
    load_node,
    normalise_bus_id,
)

DRIVER_FAILURE = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)
NO_DEVICES = "No devices were found\n"


def _read_text(name: str) -> str:
    path = os.path.join(os.path.dirname(__file__), "texts", name)
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _help_text(driver: str) -> str:
    text = _read_text("help.txt")
    _, _, rest = text.partition("\n")
    return f"NVIDIA System Management Interface -- v{driver}\n{rest}"


def _driver_version_for_help(settings: Settings) -> str:
    # The help banner names the driver; without a readable state fall back to the capture's.
    try:
        node = load_node(settings)
    except DriverUnavailableError:
        return FALLBACK_DRIVER
    return node.driver_version or FALLBACK_DRIVER


def _names_gpu(token: str, gpu: GpuView) -> bool:
    wanted = token.upper()
    return (
        ((token.isascii() and token.isdigit()) and int(token) == gpu.index)
        or wanted == gpu.uuid.upper()
        or any(wanted == m.device.uuid.upper() for m in gpu.migs)
        or (":" in token and normalise_bus_id(token) == gpu.bus_id)
    )


def _select_ids(gpus: list[GpuView], ids: list[str] | None) -> list[int]:
    """Positions in ``snapshot.gpus`` named by ``-i`` (index, UUID, MIG UUID or bus id)."""
    if ids is None:
        return list(range(len(gpus)))
    chosen: list[int] = []
    for raw in ids:
        token = raw.strip()
        match = next((pos for pos, gpu in enumerate(gpus) if _names_gpu(token, gpu)), None)
        if match is None:
            raise UsageError(NO_DEVICES, RC_NOT_FOUND)
        if match not in chosen:
            chosen.append(match)
    return chosen


def _write_usage_error(out: TextIO, exc: UsageError) -> None:
    # Messages carry their exact trailing blank lines (see err_*.txt in the captures).
    out.write(exc.message if exc.message.endswith("\n") else exc.message + "\n")


def run(argv: list[str], out: TextIO, err: TextIO, environ: dict[str, str] | None = None) -> int:
    """The whole program, minus process-level concerns (signals, exit)."""
    if argv[:1] == ["--fgo-nvml-snapshot"]:  # hidden: the fake NVML library's data (nvmlsnap)
        from fgo_nvidia_smi import nvmlsnap

        return nvmlsnap.run(argv[1:], out, err, environ)
    if argv[:1] == ["--fgo-nvml-node-snapshot"]:  # hidden: what node agents keep for NVML
        from fgo_nvidia_smi import nvmlsnap

        return nvmlsnap.run_node(argv[1:], out, err, environ)
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        _write_usage_error(out, exc)
        return exc.code
    try:
        settings = Settings.from_env(environ)
    except SettingsError as exc:
        err.write(f"nvidia-smi: {exc}\n")
        return RC_OTHER

    if opts.mode == "help":
        out.write(_help_text(_driver_version_for_help(settings)))
        return RC_OK
    if opts.mode == "help_query_gpu":
        out.write(_read_text("help_query_gpu.txt"))
        return RC_OK
    if opts.mode == "help_query_compute_apps":
        out.write(_read_text("help_query_compute_apps.txt"))
        return RC_OK
    if opts.mode == "not_simulated":
        err.write(
            f"{opts.not_simulated}: not simulated by the fake GPU operator's nvidia-smi "
            "(see docs/nvidia-smi.md for what is)\n"
        )
        return RC_NOT_SUPPORTED

    try:
        node = load_node(settings)
    except DriverUnavailableError as exc:
        out.write(DRIVER_FAILURE)
        err.write(f"fake nvidia-smi: cannot read the simulated driver state: {exc}\n")
        return RC_DRIVER_NOT_LOADED

    target = out
    handle: TextIO | None = None
    if opts.filename:
        try:
            handle = open(opts.filename, "w")  # noqa: SIM115 - closed after the loop
        except OSError as exc:
            out.write(f"Failed to open file {opts.filename}: {exc.strerror}\n")
            return RC_OTHER
        target = handle
    try:
        return _dispatch(opts, settings, node, target, err)
    except UsageError as exc:
        _write_usage_error(out, exc)
        return exc.code
    except NotSimulatedError as exc:
        err.write(f"{exc}: not simulated by the fake GPU operator's nvidia-smi\n")
        return RC_NOT_SUPPORTED
    finally:
        if handle is not None:
            handle.close()


def _pick(snapshot: Snapshot, chosen: list[int]) -> Snapshot:
    snapshot.gpus = [snapshot.gpus[i] for i in chosen if i < len(snapshot.gpus)]
    return snapshot


def lost_gpu_message(bus_id: str) -> str:
    """NVML's GPU_IS_LOST as nvidia-smi reports it for a device whose handle it cannot get:
    "GPU" and the bus id in its 4-digit-domain form, no space between (current drivers; older
    ones printed a space), then the error text and nvidia-smi's advice (docs/faults.md)."""
    return (
        f"Unable to determine the device handle for GPU{bus_id[-12:]}: "
        "GPU is lost.  Reboot the system to recover this GPU\n"
    )


def _report_lost(snapshot: Snapshot, out: TextIO) -> bool:
    """An injected lost GPU (fgo_common.faults) fails the tool as NVML's GPU_IS_LOST does: one
    line per lost GPU, exit 15. The reports we found of a lost GPU among several (4-GPU hosts)
    show only the error line, so the other GPUs are not printed (docs/faults.md)."""
    from fgo_common.faults import gpu_lost

    lost = [g for g in snapshot.gpus if g.record.faults and gpu_lost(g.record.faults, g.t)]
    for gpu in lost:
        out.write(lost_gpu_message(gpu.bus_id))
    return bool(lost)


def _dispatch(
    opts: Options, settings: Settings, node: NodeTopology, out: TextIO, err: TextIO
) -> int:
    snapshot = build_snapshot(node, settings)
    if opts.mode == "version":
        from fgo_nvidia_smi.report import render_version

        out.write(render_version(snapshot))
        return RC_OK
    if opts.mode == "list_excluded":
        # Excluded GPUs are ones the driver was told not to manage; the simulator has none.
        out.write("No excluded devices found.\n")
        return RC_OK
    if not snapshot.gpus:
        out.write(NO_DEVICES)
        return RC_NOT_FOUND
    if _report_lost(snapshot, out):
        return RC_GPU_LOST
    chosen = _select_ids(snapshot.gpus, opts.ids)

    def fresh() -> Snapshot:
        return _pick(build_snapshot(node, settings), chosen)

    snapshot = _pick(snapshot, chosen)
    if opts.mode == "set":
        out.write(
            f"Unable to set {opts.set_what} for GPU {snapshot.gpus[0].bus_id}: "
            "Insufficient Permissions\nTerminating early due to previous errors.\n"
        )
        return RC_NO_PERMISSION
    if opts.mode == "mig":
        from fgo_nvidia_smi.mig import render_mig

        text, code = render_mig(snapshot, opts)
        out.write(text)
        return code
    if opts.mode in ("dmon", "pmon"):
        from fgo_nvidia_smi.monitor import run_monitor

        return run_monitor(opts, fresh, out)

    render: Callable[[Snapshot], str]
    if opts.mode == "table":
        from fgo_nvidia_smi.table import render_table as render
    elif opts.mode == "list":
        from fgo_nvidia_smi.table import render_list as render
    elif opts.mode == "topo":
        from fgo_nvidia_smi.topo import render_topo as render
    elif opts.mode == "query" and opts.xml:
        from fgo_nvidia_smi.report import render_query_xml as render
    elif opts.mode == "query":
        from fgo_nvidia_smi.report import render_query_text

        sections = opts.display

        def render(s: Snapshot) -> str:
            return render_query_text(s, sections)

    elif opts.mode in ("query_gpu", "query_compute_apps"):
        from fgo_nvidia_smi.fields import CsvQuery

        query = CsvQuery.build(
            opts.mode, opts.fields, noheader=opts.csv_noheader, nounits=opts.csv_nounits
        )
        out.write(query.header())
        render = query.rows
    else:  # pragma: no cover - parse_args produces only the modes above
        raise UsageError(INVALID_COMBINATION, RC_OTHER)

    out.write(render(snapshot))
    out.flush()
    if opts.loop_ms is None:
        return RC_OK
    interval = opts.loop_ms / 1000.0
    while True:
        clock.sleep(interval)
        out.write(render(fresh()))
        out.flush()


def main() -> int:
    """Console entry point."""
    # Ctrl+C ends loops (-l, dmon, pmon) quietly with status 0, as the real tool does. Python's
    # default SIGINT handler (KeyboardInterrupt) serves; SIGTERM keeps its default (terminate).
    # No `signal` import: it costs start-up time on every call.
    try:
        code = run(sys.argv[1:], sys.stdout, sys.stderr)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return RC_OK
    except BrokenPipeError:
        # `nvidia-smi | head`: the reader went away; exit quietly without a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return RC_OK
    except Exception as exc:  # never a traceback in the user's terminal
        sys.stderr.write(f"nvidia-smi: internal error: {type(exc).__name__}: {exc}\n")
        return RC_OTHER
    return code


if __name__ == "__main__":
    sys.exit(main())
