"""``nvidia-smi -q`` (text, optionally ``-d`` sections), ``-q -x`` (XML) and ``--version``.

Both reports render the one tree of ``fgo_nvidia_smi.reporttree``, so they carry the same facts in
the same order with a few differences (XML-only nodes such as ``mig_devices`` and
``supported_clocks``, hex without ``0x`` in XML, the retired pages block). Layout follows
../shared/reference/nvidia-smi-h100/smi_q.txt and smi_qx.txt.
"""

from __future__ import annotations

from fgo_nvidia_smi.fmt import banner_time
from fgo_nvidia_smi.reporttree import Node, gpu_tree
from fgo_nvidia_smi.state import Snapshot

LABEL_WIDTH = 54
DTD_LINE = '<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v13.dtd">'


# Text rendering --------------------------------------------------------------------------------


def _text_lines(node: Node, depth: int, out: list[str]) -> None:
    if node.label is None:
        return
    if node.label == "" and node.children is not None:
        for child in node.children:
            _text_lines(child, depth, out)
        return
    indent = "    " * depth
    if node.value is not None:
        out.append(f"{indent}{node.label}".ljust(LABEL_WIDTH) + " : " + node.value)
    else:
        out.append(f"{indent}{node.label}")
    for child in node.children or ():
        _text_lines(child, depth + 1, out)


def _text_header(snapshot: Snapshot) -> list[str]:
    def kv(label: str, value: object) -> str:
        return label.ljust(LABEL_WIDTH) + " : " + str(value)

    return [
        "",
        "==============NVSMI LOG==============",
        "",
        kv("Timestamp", banner_time(snapshot.t)),
        kv("Driver Version", snapshot.driver_version),
        kv("CUDA Version", snapshot.cuda_version),
        "",
        kv("Attached GPUs", snapshot.attached),
    ]


def render_query_text(snapshot: Snapshot, sections: list[str] | None = None) -> str:
    """``nvidia-smi -q [-d SECTION,...]``."""
    wanted = set(sections or ())
    # Blocks the full report leaves out; each belongs to the -d section that asks for it.
    only_on_request = {
        "SUPPORTED_CLOCKS_TEXT",
        "UTILIZATION_SAMPLES",
        "POWER_SAMPLES",
        "CLOCK_SAMPLES",
    }
    for section, extra in (
        ("SUPPORTED_CLOCKS", "SUPPORTED_CLOCKS_TEXT"),
        ("UTILIZATION", "UTILIZATION_SAMPLES"),
        ("POWER", "POWER_SAMPLES"),
        ("CLOCK", "CLOCK_SAMPLES"),
    ):
        if section in wanted:
            wanted.add(extra)
    lines = _text_header(snapshot)
    for gpu in snapshot.gpus:
        lines.append(f"GPU {gpu.bus_id}")
        for node in gpu_tree(gpu, snapshot.driver_version):
            if node.section in only_on_request and not wanted:
                continue
            if wanted and node.section not in wanted:
                continue
            _text_lines(node, 1, lines)
        lines.append("")
    return "\n".join(lines) + "\n"


# XML rendering ---------------------------------------------------------------------------------


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _xml_lines(node: Node, depth: int, out: list[str]) -> None:
    if node.tag is None:
        return
    indent = "\t" * depth
    if node.children is None:
        value = node.xml_value if node.xml_value is not None else (node.value or "")
        if node.tag == "mig_devices" or (node.tag == "processes" and value == "None"):
            # Empty collections: the driver writes "None" on its own line (or nothing).
            if node.tag == "mig_devices":
                out.append(f"{indent}<{node.tag}>")
                out.append(f"{indent}\t{value}")
                out.append(f"{indent}</{node.tag}>")
            else:
                out.append(f"{indent}<{node.tag}>")
                out.append(f"{indent}</{node.tag}>")
            return
        out.append(f"{indent}<{node.tag}>{_escape(value)}</{node.tag}>")
        return
    attrs = "".join(f' {k}="{_escape(v)}"' for k, v in node.attrs.items())
    out.append(f"{indent}<{node.tag}{attrs}>")
    for child in node.children:
        _xml_lines(child, depth + 1, out)
    out.append(f"{indent}</{node.tag}>")


def render_query_xml(snapshot: Snapshot) -> str:
    """``nvidia-smi -q -x``."""
    lines = [
        '<?xml version="1.0" ?>',
        DTD_LINE,
        "<nvidia_smi_log>",
        f"\t<timestamp>{banner_time(snapshot.t)}</timestamp>",
        f"\t<driver_version>{_escape(snapshot.driver_version)}</driver_version>",
        f"\t<cuda_version>{_escape(snapshot.cuda_version)}</cuda_version>",
        f"\t<attached_gpus>{snapshot.attached}</attached_gpus>",
    ]
    for gpu in snapshot.gpus:
        root = Node(
            None, "gpu", children=gpu_tree(gpu, snapshot.driver_version), attrs={"id": gpu.bus_id}
        )
        _xml_lines(root, 1, lines)
        lines.append("")
    lines.append("</nvidia_smi_log>")
    return "\n".join(lines) + "\n"


def render_version(snapshot: Snapshot) -> str:
    """``nvidia-smi --version``."""
    driver = snapshot.driver_version
    nvml = ".".join(driver.split(".")[:2])
    return (
        f"NVIDIA-SMI version  : {driver}\n"
        f"NVML version        : {nvml}\n"
        f"DRIVER version      : {driver}\n"
        f"CUDA Version        : {snapshot.cuda_version}\n"
    )
