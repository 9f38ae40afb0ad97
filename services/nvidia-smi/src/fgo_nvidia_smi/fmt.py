"""Small formatting helpers shared by the renderers (time stamps, watts, names)."""

from __future__ import annotations

import time

NA = "N/A"


def banner_time(t: float) -> str:
    """``Thu Nov 26 19:10:12 2026``: asctime layout (day of month space-padded), local time."""
    return time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(t))


def csv_time(t: float) -> str:
    """``2026/11/26 19:10:12.345`` as ``--query-*`` prints the timestamp field."""
    millis = int((t - int(t)) * 1000)
    return time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(t)) + f".{millis:03d}"


def watts(value: float) -> str:
    return f"{value:.2f}"


def truncate_left(text: str, width: int) -> str:
    """Keep the tail of a long path, as the Processes table does (``...lib/firefox``)."""
    if len(text) <= width:
        return text
    return "..." + text[-(width - 3) :]


def truncate_right(text: str, width: int) -> str:
    """Keep the head of a long product name, as the GPU table does (``... Ada Gene...``)."""
    if len(text) <= width:
        return text
    return text[: width - 3] + "..."


def arch_name(architecture: str) -> str:
    """NVML architecture string as ``-q`` prints it ("Hopper", "Ada Lovelace")."""
    special = {"ada": "Ada Lovelace", "ada lovelace": "Ada Lovelace", "adalovelace": "Ada Lovelace"}
    key = architecture.strip().lower()
    return special.get(key, architecture.strip().title() or NA)
