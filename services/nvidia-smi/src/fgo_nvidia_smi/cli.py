"""nvidia-smi's command line, parsed as the real tool does, with its messages and exit codes.

argparse would print its own usage and exit 2; scripts that wrap nvidia-smi match the real
messages ("ERROR: Option --x is not recognized ..." exit 255), so this is a small hand parser.
Anything it cannot make sense of ends in :class:`UsageError` carrying the real tool's text and
exit code - never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# NVML / nvidia-smi return codes (nvidia-smi(1), "RETURN VALUE").
RC_OK = 0
RC_INVALID_ARGUMENT = 2
RC_NOT_SUPPORTED = 3
RC_NO_PERMISSION = 4
RC_NOT_FOUND = 6
RC_DRIVER_NOT_LOADED = 9
RC_GPU_LOST = 15  # man nvidia-smi: the GPU has fallen off the bus or become inaccessible
RC_OTHER = 255

INVALID_COMBINATION = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."


class UsageError(Exception):
    """Bad command line: ``message`` goes to stdout (as the real tool prints it), then exit."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class NotSimulatedError(Exception):
    """A real nvidia-smi option this simulator does not implement (stderr note, exit 3)."""


def _unrecognized(option: str) -> UsageError:
    return UsageError(
        f"ERROR: Option {option} is not recognized. Please run 'nvidia-smi -h'.\n\n", RC_OTHER
    )


def _missing_value(option: str) -> UsageError:
    return UsageError(
        f"ERROR: Option {option} is missing its value. Please run 'nvidia-smi -h'.\n\n", RC_OTHER
    )


def _invalid_combination() -> UsageError:
    return UsageError(INVALID_COMBINATION + "\n", RC_OTHER)


@dataclass(frozen=True, slots=True)
class OptSpec:
    key: str
    # "none", "required", "optional" (a number may follow), "file" (see --debug below)
    value: str


def _table(*rows: tuple[tuple[str, ...], str, str]) -> dict[str, OptSpec]:
    out: dict[str, OptSpec] = {}
    for names, key, value in rows:
        for name in names:
            out[name] = OptSpec(key, value)
    return out


# Options of the main command: every spelling in `nvidia-smi -h`.
MAIN_OPTIONS = _table(
    (("-h", "--help"), "help", "none"),
    (("--version",), "version", "none"),
    (("-L", "--list-gpus"), "list", "none"),
    (("-B", "--list-excluded-gpus"), "list_excluded", "none"),
    (("-col", "--columns"), "columns", "none"),
    (("-i", "--id"), "id", "required"),
    (("-f", "--filename"), "filename", "required"),
    (("-l", "--loop"), "loop", "optional"),
    (("-lms", "--loop-ms"), "loop_ms", "required"),
    (("-q", "--query"), "query", "none"),
    (("-u", "--unit"), "unit", "none"),
    (("-x", "--xml-format"), "xml", "none"),
    (("--dtd",), "dtd", "none"),
    (("-d", "--display"), "display", "required"),
    (("--query-gpu",), "query_gpu", "required"),
    (("--query-supported-clocks",), "query_supported_clocks", "required"),
    (("--query-compute-apps",), "query_compute_apps", "required"),
    (("--query-accounted-apps",), "query_accounted_apps", "required"),
    (("--query-retired-pages",), "query_retired_pages", "required"),
    (("--query-remapped-rows",), "query_remapped_rows", "required"),
    (("--format",), "format", "required"),
    (("--help-query-gpu",), "help_query_gpu", "none"),
    (("--help-query-compute-apps",), "help_query_compute_apps", "none"),
    (("--help-query-supported-clocks",), "help_other", "none"),
    (("--help-query-accounted-apps",), "help_other", "none"),
    (("--help-query-retired-pages",), "help_other", "none"),
    (("--help-query-remapped-rows",), "help_other", "none"),
    # --debug=FILE writes the driver's encrypted log to FILE and runs the command; there is no
    # driver log here, so the command just runs. A bare --debug (no FILE; the real tool says
    # "missing its value") runs it too: run-ai/fake-gpu-operator's tests call it that way.
    (("--debug",), "debug", "file"),
    (("-eow", "--error-on-warning"), "eow", "none"),
    # Device / unit modification: accepted, then refused like an unprivileged container.
    (("-pm", "--persistence-mode"), "set:persistence mode", "required"),
    (("-e", "--ecc-config"), "set:ECC mode", "required"),
    (("-p", "--reset-ecc-errors"), "set:ECC error counts", "required"),
    (("-c", "--compute-mode"), "set:compute mode", "required"),
    (("--gom",), "set:GPU operation mode", "required"),
    (("-r", "--gpu-reset"), "set:GPU reset", "none"),
    (("-vm", "--virt-mode"), "set:virtualization mode", "required"),
    (("-lgc", "--lock-gpu-clocks"), "set:locked GPU clocks", "required"),
    (("-m", "--mode"), "set_mode", "required"),
    (("-rgc", "--reset-gpu-clocks"), "set:locked GPU clocks", "none"),
    (("-lmc", "--lock-memory-clocks"), "set:locked memory clocks", "required"),
    (("-rmc", "--reset-memory-clocks"), "set:locked memory clocks", "none"),
    (("-lmcd", "--lock-memory-clocks-deferred"), "set:deferred memory clocks", "required"),
    (("-rmcd", "--reset-memory-clocks-deferred"), "set:deferred memory clocks", "none"),
    (("-ac", "--applications-clocks"), "set:applications clocks", "required"),
    (("-rac", "--reset-applications-clocks"), "set:applications clocks", "none"),
    (("-pl", "--power-limit"), "set:power limit", "required"),
    (("-sc", "--scope"), "set_scope", "required"),
    (("-cc", "--cuda-clocks"), "set:CUDA clocks", "required"),
    (("-am", "--accounting-mode"), "set:accounting mode", "required"),
    (("-caa", "--clear-accounted-apps"), "set:accounted apps", "none"),
    (("--auto-boost-default",), "set:auto boost default", "required"),
    (("--auto-boost-permission",), "set:auto boost permission", "required"),
    (("-mig", "--multi-instance-gpu"), "set:MIG mode", "required"),
    (("-gtt", "--gpu-target-temp"), "set:GPU target temperature", "required"),
    (("-den", "--dram-encryption"), "set:DRAM encryption mode", "required"),
    (("--set-hostname",), "set:hostname", "required"),
    (("--get-hostname",), "get_hostname", "none"),
    (("-t", "--toggle-led"), "set:LED state", "required"),
)

SUBCOMMANDS_SUPPORTED = ("topo", "mig", "dmon", "pmon")
SUBCOMMANDS_OTHER = (
    "daemon",
    "replay",
    "drain",
    "nvlink",
    "c2c",
    "clocks",
    "encodersessions",
    "fbcsessions",
    "vgpu",
    "compute-policy",
    "boost-slider",
    "power-hint",
    "base-clocks",
    "conf-compute",
    "gpm",
    "pci",
    "power-smoothing",
    "power-profiles",
    "prm",
)

DISPLAY_SECTIONS = (
    "MEMORY",
    "UTILIZATION",
    "ECC",
    "TEMPERATURE",
    "POWER",
    "CLOCK",
    "COMPUTE",
    "PIDS",
    "PERFORMANCE",
    "SUPPORTED_CLOCKS",
    "PAGE_RETIREMENT",
    "ACCOUNTING",
    "ENCODER_STATS",
    "SUPPORTED_GPU_TARGET_TEMP",
    "VOLTAGE",
    "FBC_STATS",
    "ROW_REMAPPER",
    "GSP_FIRMWARE_VERSION",
    "POWER_SMOOTHING",
    "POWER_PROFILES",
)

SUB_OPTIONS: dict[str, dict[str, OptSpec]] = {
    "topo": _table(
        (("-h", "--help"), "help", "none"),
        (("-m", "--matrix"), "matrix", "none"),
        (("-i", "--id"), "id", "required"),
    ),
    "mig": _table(
        (("-h", "--help"), "help", "none"),
        (("-i", "--id"), "id", "required"),
        (("-gi", "--gpu-instance-id"), "gi", "required"),
        (("-ci", "--compute-instance-id"), "ci", "required"),
        (("-lgip", "--list-gpu-instance-profiles"), "action:lgip", "none"),
        (("-lgi", "--list-gpu-instances"), "action:lgi", "none"),
        (("-lci", "--list-compute-instances"), "action:lci", "none"),
        (("-lcip", "--list-compute-instance-profiles"), "action:lcip", "none"),
        (("-cgi", "--create-gpu-instance"), "modify", "required"),
        (("-dgi", "--destroy-gpu-instance"), "modify", "none"),
        (("-cci", "--create-compute-instance"), "modify", "optional"),
        (("-dci", "--destroy-compute-instance"), "modify", "none"),
        (("-C", "--default-compute-instance"), "flag_c", "none"),
    ),
    "dmon": _table(
        (("-h", "--help"), "help", "none"),
        (("-i", "--id"), "id", "required"),
        (("-d", "--delay"), "delay", "required"),
        (("-c", "--count"), "count", "required"),
        (("-s", "--select"), "select", "required"),
        (("-o", "--options"), "options", "required"),
        (("-f", "--filename"), "filename", "required"),
    ),
    "pmon": _table(
        (("-h", "--help"), "help", "none"),
        (("-i", "--id"), "id", "required"),
        (("-d", "--delay"), "delay", "required"),
        (("-c", "--count"), "count", "required"),
        (("-s", "--select"), "select", "required"),
        (("-o", "--options"), "options", "required"),
        (("-f", "--filename"), "filename", "required"),
    ),
}


@dataclass(slots=True)
class Options:
    """The parsed command line."""

    mode: str = "table"  # table|list|query|query_gpu|query_compute_apps|help|help_query_gpu|...
    ids: list[str] | None = None
    filename: str | None = None
    loop_ms: int | None = None
    xml: bool = False
    display: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    csv_noheader: bool = False
    csv_nounits: bool = False
    # Subcommands.
    subcommand: str = ""
    action: str = ""  # mig: lgip|lgi|lci|lcip; topo: matrix
    gi: list[int] | None = None
    ci: list[int] | None = None
    count: int | None = None
    delay_s: int = 1
    select: str = ""
    date_time: str = ""
    set_what: str = ""
    not_simulated: str = ""


def _tokens(argv: list[str]) -> list[tuple[str, str | None]]:
    """Split ``--opt=value`` / ``-o=value`` into (option, inline value); others as-is."""
    out: list[tuple[str, str | None]] = []
    for arg in argv:
        if arg.startswith("-") and "=" in arg:
            name, _, value = arg.partition("=")
            out.append((name, value))
        else:
            out.append((arg, None))
    return out


def _collect(argv: list[str], table: dict[str, OptSpec]) -> list[tuple[str, str, str | None]]:
    """(key, spelling, value) per option in order; raises the real tool's errors."""
    found: list[tuple[str, str, str | None]] = []
    tokens = _tokens(argv)
    pos = 0
    while pos < len(tokens):
        name, inline = tokens[pos]
        pos += 1
        spec = table.get(name)
        if spec is None:
            raise _unrecognized(name if inline is None else f"{name}={inline}")
        if spec.value == "none":
            if inline is not None:
                raise _unrecognized(f"{name}={inline}")
            found.append((spec.key, name, None))
            continue
        value = inline
        if value is None and pos < len(tokens):
            candidate, candidate_inline = tokens[pos]
            takes = (
                spec.value == "required"
                or (spec.value == "file" and not candidate.startswith("-"))
                or ((candidate.isascii() and candidate.isdigit()) and candidate_inline is None)
            )
            if takes and candidate_inline is None:
                value = candidate
                pos += 1
        if value is None and spec.value == "required":
            raise _missing_value(name)
        found.append((spec.key, name, value))
    return found


def _parse_int(text: str | None, *, minimum: int = 0) -> int:
    if text is None or not (text.strip().isascii() and text.strip().isdigit()):
        raise _invalid_combination()
    value = int(text.strip())
    if value < minimum or value > 2**31 - 1:
        raise _invalid_combination()
    return value


def _parse_ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()] or [text]


def _parse_int_list(text: str) -> list[int]:
    return [_parse_int(part) for part in text.split(",")]


def parse_args(argv: list[str]) -> Options:
    """Parse nvidia-smi's arguments (without the program name)."""
    if argv and not argv[0].startswith("-"):
        sub = argv[0]
        if sub in SUBCOMMANDS_SUPPORTED:
            return _parse_sub(sub, argv[1:])
        if sub in SUBCOMMANDS_OTHER:
            return Options(mode="not_simulated", not_simulated=f"nvidia-smi {sub}")
        raise _unrecognized(sub)
    found = _collect(argv, MAIN_OPTIONS)
    return _main_options(found)


def _main_options(found: list[tuple[str, str, str | None]]) -> Options:
    opts = Options()
    keys = [key for key, _, _ in found]
    if "help" in keys:
        opts.mode = "help"
        return opts
    modes: list[str] = []
    fmt: str | None = None
    set_ops: list[str] = []
    for key, spelling, value in found:
        if key == "version":
            modes.append("version")
        elif key in ("list", "list_excluded"):
            modes.append(key)
        elif key in (
            "unit",
            "dtd",
            "query_supported_clocks",
            "query_accounted_apps",
            "query_retired_pages",
            "query_remapped_rows",
            "help_other",
            "get_hostname",
        ):
            modes.append("not_simulated")
            opts.not_simulated = f"nvidia-smi {spelling}"
        elif key == "columns":
            modes.append("table")
        elif key == "id":
            assert value is not None
            opts.ids = (opts.ids or []) + _parse_ids(value)
        elif key == "filename":
            assert value is not None
            if not value:
                raise _missing_value(spelling)
            opts.filename = value
        elif key == "loop":
            opts.loop_ms = _parse_int(value if value is not None else "5", minimum=1) * 1000
        elif key == "loop_ms":
            opts.loop_ms = _parse_int(value, minimum=1)
        elif key == "query":
            modes.append("query")
        elif key == "xml":
            opts.xml = True
        elif key == "display":
            assert value is not None
            for part in value.split(","):
                name = part.strip().upper()
                if name not in DISPLAY_SECTIONS:
                    raise _invalid_combination()
                if name not in opts.display:
                    opts.display.append(name)
        elif key in ("query_gpu", "query_compute_apps"):
            assert value is not None
            modes.append(key)
            opts.fields = [f.strip() for f in value.split(",")]
        elif key == "format":
            assert value is not None
            fmt = value
        elif key in ("help_query_gpu", "help_query_compute_apps"):
            modes.append(key)
        elif key.startswith("set:"):
            set_ops.append(key[4:])
        # "eow", "set_mode", "set_scope": modifiers of other options; nothing of their own.
        # "debug": no driver log to write (see MAIN_OPTIONS).
    if "not_simulated" in modes:
        opts.mode = "not_simulated"
        return opts
    if set_ops:
        modes.append("set")
        opts.set_what = set_ops[0]
    distinct = list(dict.fromkeys(modes))
    if len(distinct) > 1:
        raise _invalid_combination()
    opts.mode = distinct[0] if distinct else "table"
    if opts.mode in ("help_query_gpu", "help_query_compute_apps", "version"):
        return opts
    if fmt is not None:
        if opts.mode not in ("query_gpu", "query_compute_apps"):
            raise _invalid_combination()
        for part in (p.strip().lower() for p in fmt.split(",")):
            if part == "csv":
                continue
            if part == "noheader":
                opts.csv_noheader = True
            elif part == "nounits":
                opts.csv_nounits = True
            else:
                raise UsageError(f'"{part}" is not a valid format option.\n', RC_INVALID_ARGUMENT)
    if opts.xml and opts.mode != "query":
        raise _invalid_combination()
    if opts.display and opts.mode != "query":
        raise _invalid_combination()
    if opts.display and opts.xml:
        raise _invalid_combination()
    if opts.loop_ms is not None and opts.mode not in (
        "table",
        "query",
        "query_gpu",
        "query_compute_apps",
    ):
        raise _invalid_combination()
    return opts


def _parse_sub(sub: str, argv: list[str]) -> Options:
    found = _collect(argv, SUB_OPTIONS[sub])
    opts = Options(mode=sub, subcommand=sub)
    actions: list[str] = []
    for key, spelling, value in found:
        if key == "help":
            opts.mode = "help"
            return opts
        if key == "id":
            assert value is not None
            opts.ids = (opts.ids or []) + _parse_ids(value)
        elif key == "matrix":
            actions.append("matrix")
        elif key.startswith("action:"):
            actions.append(key[7:])
        elif key == "gi":
            assert value is not None
            opts.gi = _parse_int_list(value)
        elif key == "ci":
            assert value is not None
            opts.ci = _parse_int_list(value)
        elif key == "modify":
            opts.mode = "not_simulated"
            opts.not_simulated = f"nvidia-smi {sub} {spelling}"
            return opts
        elif key == "count":
            opts.count = _parse_int(value, minimum=1)
        elif key == "delay":
            opts.delay_s = _parse_int(value, minimum=1)
        elif key == "select":
            assert value is not None
            opts.select = value
        elif key == "options":
            assert value is not None
            opts.date_time = value.upper()
            if any(ch not in "DT" for ch in opts.date_time):
                raise _invalid_combination()
        elif key == "filename":
            opts.filename = value
    if sub in ("topo", "mig"):
        if len(actions) != 1:
            raise _invalid_combination()
        opts.action = actions[0]
    return opts
