"""PNG plots of a results.json document (matplotlib, Agg backend: no display needed).

Each function returns False when the document has nothing to plot for it, so partial runs
still get the plots they can have.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

Doc = dict[str, Any]
CONDITIONS = ("ready", "topology", "capacity", "labels", "slices", "advertised")


def _scenario(doc: Doc, name: str) -> Doc | None:
    return next((s for s in doc["scenarios"] if s["name"] == name), None)


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bringup(doc: Doc, path: Path) -> bool:
    s = _scenario(doc, "bringup")
    sizes = (s or {}).get("params", {}).get("sizes") or []
    if s is None or not any(f"n{n}.advertised" in s["series"] for n in sizes):
        return False
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        for cond in CONDITIONS:
            points = s["series"].get(f"n{n}.{cond}") or []
            if points:
                ax.step(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    where="post",
                    label=cond,
                    linewidth=2.5 if cond == "advertised" else 1.2,
                )
        ax.set_title(f"{n} nodes")
        ax.set_xlabel("seconds since the first node create")
        ax.set_ylabel("nodes in that state")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
    return True


def _cdf(ax: Axes, values: list[float], label: str) -> None:
    ordered = sorted(values)
    ax.step(
        ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post", label=label
    )


def churn(doc: Doc, path: Path) -> bool:
    s = _scenario(doc, "churn")
    if s is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for key, label in (("dp", "device-plugin"), ("dra", "DRA")):
        for what in ("running_to_topology", "running_to_metrics"):
            points = s["series"].get(f"{key}.{what}") or []
            if points:
                _cdf(ax, [p[0] for p in points], f"{label}: {what.replace('_', ' ')}")
                drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.axvline(1.0, color="red", linestyle="--", linewidth=1, label="target p99 < 1 s")
    ax.set_xlabel("seconds after the pod was seen Running")
    ax.set_ylabel("fraction of pods")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def exporter(doc: Doc, path: Path) -> bool:
    s = _scenario(doc, "exporter")
    points = (s or {}).get("series", {}).get("scrape_latency_s") or []
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([p[0] for p in points], [p[1] for p in points])
    ax.axhline(0.5, color="red", linestyle="--", linewidth=1, label="target 0.5 s (8000 GPUs)")
    ax.set_xlabel("scrape #")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def nvidia_smi(doc: Doc, path: Path) -> bool:
    s = _scenario(doc, "nvidia-smi")
    if s is None or not s["figures"]:
        return False
    labels = list(s["figures"])
    p50 = [(s["figures"][k].get("runs") or {}).get("p50") or 0.0 for k in labels]
    p95 = [(s["figures"][k].get("runs") or {}).get("p95") or 0.0 for k in labels]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
    y = list(range(len(labels)))
    ax.barh([i + 0.2 for i in y], p95, height=0.4, label="p95")
    ax.barh([i - 0.2 for i in y], p50, height=0.4, label="p50")
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel("seconds per invocation")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def footprint(doc: Doc, path: Path) -> bool:
    fp = doc.get("footprint") or {}
    series: dict[str, list[list[float]]] = fp.get("series") or {}
    groups: dict[str, str] = fp.get("groups") or {}
    if not series:
        return False
    fig, (ax_rss, ax_cpu) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for name, points in sorted(series.items()):
        if name == "machine" or not points:
            continue
        style = "-" if groups.get(name) == "ours" else ":"
        ax_rss.plot(
            [p[0] for p in points], [p[1] for p in points], style, label=name, linewidth=1.2
        )
    by_group: dict[str, dict[float, float]] = {}
    for name, points in series.items():
        group = "machine busy" if name == "machine" else groups.get(name, "?")
        col = 1 if name == "machine" else 2
        for p in points:
            slot = by_group.setdefault(group, {})
            slot[round(p[0])] = slot.get(round(p[0]), 0.0) + p[col]
    for group, values in sorted(by_group.items()):
        xs = sorted(values)
        ax_cpu.plot(xs, [values[x] for x in xs], label=group, linewidth=1.2)
    for phase, start, end in fp.get("phase_spans") or []:
        if phase in ("setup", "between"):
            continue
        for ax in (ax_rss, ax_cpu):
            ax.axvspan(start, end, alpha=0.08, color="tab:blue")
        ax_cpu.text(start, ax_cpu.get_ylim()[1] * 0.95, phase, fontsize=6, rotation=90, va="top")
    ax_rss.axhline(80, color="red", linestyle="--", linewidth=1, label="80 MiB target")
    ax_rss.set_ylabel("RSS (MiB); solid = ours")
    ax_rss.legend(fontsize=6, ncol=3)
    ax_rss.grid(alpha=0.3)
    ax_cpu.set_ylabel("CPU (cores)")
    ax_cpu.set_xlabel("seconds since start")
    ax_cpu.legend(fontsize=7)
    ax_cpu.grid(alpha=0.3)
    _save(fig, path)
    return True


def scheduler(doc: Doc, path: Path) -> bool:
    s = _scenario(doc, "scheduler")
    if s is None:
        return False
    keys = [k for k in ("plain", "dp", "dra") if k in s["figures"]]
    if not keys:
        return False
    upstream = {"plain": 680.0, "dp": 180.0, "dra": 40.0}
    measured = [((s["figures"][k].get("throughput") or {}).get("average") or 0.0) for k in keys]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(range(len(keys)))
    ax.bar([x - 0.2 for x in xs], measured, width=0.4, label="measured here (average)")
    ax.bar(
        [x + 0.2 for x in xs],
        [upstream[k] for k in keys],
        width=0.4,
        label="scheduler_perf threshold",
    )
    ax.set_xticks(xs, [{"plain": "plain", "dp": "device-plugin", "dra": "DRA"}[k] for k in keys])
    ax.set_ylabel("pods scheduled per second")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


PLOTS: dict[str, Callable[[Doc, Path], bool]] = {
    "bringup.png": bringup,
    "churn.png": churn,
    "exporter.png": exporter,
    "nvidia_smi.png": nvidia_smi,
    "footprint.png": footprint,
    "scheduler.png": scheduler,
}


def write_all(doc: Doc, folder: Path) -> dict[str, str]:
    """Write every plot the document supports; returns file name -> file name written."""
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for name, fn in PLOTS.items():
        try:
            if fn(doc, folder / name):
                written[name] = name
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            print(f"[bench] plot {name} skipped: {exc!r}")
            plt.close("all")
    return written
