"""What the numbers were measured on: CPU, cores, memory, kernel, pinned tool versions, commit."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

# Module path in tools/go.mod -> name shown in the report.
PINNED_MODULES = {
    "k8s.io/kubernetes": "kubernetes_version",
    "go.etcd.io/etcd/server/v3": "etcd_version",
    "sigs.k8s.io/kwok": "kwok_version",
    "helm.sh/helm/v3": "helm_version",
}


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_total_bytes(meminfo: str) -> int:
    match = re.search(r"^MemTotal:\s+(\d+)\s+kB", meminfo, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def pinned_versions(go_mod: str) -> dict[str, str]:
    """Versions of the control-plane modules required by tools/go.mod."""
    out: dict[str, str] = {}
    for module, key in PINNED_MODULES.items():
        match = re.search(rf"^\s*{re.escape(module)}\s+(v\S+)", go_mod, re.MULTILINE)
        if match:
            out[key] = match.group(1)
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _git(repo: Path, *args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def describe(repo: Path) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": cpu_model(_read(Path("/proc/cpuinfo"))),
        "cores": os.cpu_count() or 0,
        "memory_bytes": mem_total_bytes(_read(Path("/proc/meminfo"))),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kubernetes_version": "unknown",
        "git_commit": _git(repo, "rev-parse", "--short=12", "HEAD"),
        "git_dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no")),
        "load_average_at_start": list(os.getloadavg()),
    }
    info.update(pinned_versions(_read(repo / "tools" / "go.mod")))
    return info
