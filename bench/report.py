"""report.md (and the plots) from a results.json document.

Rendering works from the JSON alone, so a report can be regenerated from any earlier run:
``uv run --group bench python -m bench.report bench-results/<run>/results.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Any

from bench.stats import fmt_bytes, fmt_seconds

# Log lines some component benches interleave with their figures (structlog console format).
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:.]+Z? \[\s*(debug|info|warning|error)")

MET = {True: "met", False: "**missed**", None: "not measured"}


def _ts(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


def machine_section(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    c = doc["config"]
    rows = [
        ["CPU", f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores"],
        ["Memory", fmt_bytes(m.get("memory_bytes"))],
        ["Kernel / Python", f"{m.get('kernel', '?')} / {m.get('python', '?')}"],
        ["Kubernetes (pinned)", m.get("kubernetes_version", "?")],
        [
            "etcd / KWOK / Helm",
            f"{m.get('etcd_version', '?')} / {m.get('kwok_version', '?')}"
            f" / {m.get('helm_version', '?')}",
        ],
        [
            "Commit",
            f"{m.get('git_commit', '?')}"
            + (" (with uncommitted changes)" if m.get("git_dirty") else ""),
        ],
        [
            "Load average at start / end",
            ", ".join(f"{x:.2f}" for x in m.get("load_average_at_start") or [])
            + " / "
            + (", ".join(f"{x:.2f}" for x in m.get("load_average_at_end") or []) or "—"),
        ],
        [
            "Run",
            f"{_ts(doc['started_at'])}, {(doc['finished_at'] - doc['started_at']) / 60:.1f} min",
        ],
        [
            "Parameters",
            f"nodes {c.get('nodes')} x {c.get('gpus_per_node')} "
            f"{c.get('gpu_type')}; churn {c.get('pods')} pods "
            f"({'at once' if not c.get('churn_rate') else str(c['churn_rate']) + '/s'})"
            f"; scheduler {c.get('sched_pods')} pods; DRA "
            f"{'on' if c.get('dra') else 'off'}",
        ],
    ]
    out = ["## Machine and run", "", *_table(["", ""], rows)]
    if c.get("grant_missing_rbac"):
        out += [
            "**This run added bench-only RBAC** (`--grant-missing-rbac`, bench/env.py "
            "`BENCH_RBAC_PATCHES`) for permissions the chart lacks; the chart as shipped "
            "does not get that far.",
            "",
        ]
    return out


def targets_section(doc: dict[str, Any]) -> list[str]:
    rows = []
    for s in doc["scenarios"]:
        for t in s["targets"]:
            measured = "—" if t["measured"] is None else f"{t['measured']:.3g} {t['unit']}"
            rows.append(
                [
                    t["name"],
                    f"{t['comparison']} {t['limit']:g} {t['unit']}",
                    measured,
                    MET[t["met"]],
                    t.get("note", ""),
                ]
            )
    if not rows:
        return []
    return ["## Targets", "", *_table(["target", "goal", "measured", "result", "note"], rows)]


def _lat_row(name: str, s: dict[str, Any] | None) -> list[str]:
    s = s or {}
    extra = f" ({s['before_start']} before start)" if s.get("before_start") else ""
    return [
        name,
        str(s.get("count", 0)) + extra,
        fmt_seconds(s.get("p50")),
        fmt_seconds(s.get("p90")),
        fmt_seconds(s.get("p99")),
        fmt_seconds(s.get("max")),
    ]


def bringup_section(s: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for n in s["params"].get("sizes", []):
        f = s["figures"].get(f"n{n}")
        if not f:
            continue
        out.append(
            f"**{n} nodes** (created in {fmt_seconds(f.get('create_s'))}; teardown "
            f"{fmt_seconds(s['figures'].get(f'n{n}.teardown_s'))}):"
        )
        out.append("")
        rows = []
        for cond in ("ready", "topology", "capacity", "labels", "slices", "advertised"):
            e = f.get(cond)
            if not e:
                continue
            lat = e.get("per_node_latency_s") or {}
            rows.append(
                [
                    cond,
                    f"{e['count']}/{n}",
                    fmt_seconds(e.get("all_after_last_create_s")),
                    fmt_seconds(e.get("all_after_first_create_s")),
                    fmt_seconds(lat.get("p50")),
                    fmt_seconds(lat.get("p99")),
                ]
            )
        api = s["figures"].get(f"n{n}.api") or {}
        if api:
            out.append(
                "Apiserver requests per node by our services (counted by the apiserver, per "
                "ServiceAccount): "
                + "; ".join(
                    f"{sa} {_num(v.get('writes'))} writes ("
                    + (
                        ", ".join(
                            f"{b} {_num(x)}"
                            for b, x in sorted(v.items())
                            if b not in ("writes", "reads") and x
                        )
                        or "none"
                    )
                    + f") + {_num(v.get('reads'))} reads"
                    for sa, v in api.items()
                )
                + "."
            )
            out.append("")
        cpu = s["figures"].get(f"n{n}.cpu")
        if cpu:
            out.append(
                f"Meanwhile our services used {cpu['ours_cpu_s']:.1f} CPU-seconds "
                f"({cpu['ours_cpu_ms_per_node']:.0f} ms per node), the control plane "
                f"{cpu['control_plane_cpu_s']:.1f}, other work on the host "
                f"{cpu['other_cores']:.2f} cores"
                + (
                    f"; load average at the end {', '.join(f'{x:.1f}' for x in load)}."
                    if (load := cpu.get("load_average_after"))
                    else "."
                )
            )
            out.append("")
        out += _table(
            [
                "state",
                "nodes",
                "all done after last node created",
                "after first create",
                "per-node p50",
                "per-node p99",
            ],
            rows,
        )
    return out


def churn_section(s: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, label in (("dp", "device-plugin"), ("dra", "DRA")):
        f = s["figures"].get(key)
        if not f:
            continue
        rate = f.get("running_rate_pods_s")
        out.append(
            f"**{label} path**: {f.get('pods')} pods created in "
            f"{fmt_seconds(f.get('create_window_s'))}; Running at "
            f"{_num(rate, 0)} pods/s; all in topology "
            f"{fmt_seconds(f.get('all_in_topology_s'))} and in metrics "
            f"{fmt_seconds(f.get('all_in_metrics_s'))} after the first create; all out of "
            f"topology {fmt_seconds(f.get('all_out_topology_s'))} after the first delete."
        )
        out.append("")
        rows = [
            _lat_row(k, f.get(k))
            for k in (
                "sent_to_running",
                "scheduled_to_topology",
                "running_to_topology",
                "running_to_metrics",
                "delete_to_gone",
                "delete_to_out_topology",
                "gone_to_out_topology",
                "delete_to_out_metrics",
            )
        ]
        out += _table(["latency", "pods", "p50", "p90", "p99", "max"], rows)
        scrape = f.get("scrape_interval_s") or {}
        if scrape.get("count"):
            out.append(
                f"One exporter scrape took {fmt_seconds(scrape.get('p50'))} (p50, "
                f"{scrape.get('count')} scrapes) and scrapes were 250 ms apart: the metrics "
                "latencies are only that precise."
            )
            out.append("")
        api = f.get("api") or {}
        rows = []
        for sa, v in (api.get("by_service_account") or {}).items():
            buckets = ", ".join(
                f"{b} {int(n)}" for b, n in sorted(v.items()) if b not in ("writes", "reads") and n
            )
            rows.append([sa, _num(v.get("writes"), 0), buckets or "—", _num(v.get("reads"), 0)])
        rows.append(
            [
                "**all ours**",
                _num(api.get("ours_writes"), 0),
                f"{_num(api.get('writes_per_pod_event'))} per pod event",
                _num(api.get("ours_reads"), 0),
            ]
        )
        out += _table(["identity", "writes", "writes by resource", "reads"], rows)
        cp = api.get("control_plane") or {}
        if cp:
            out.append(
                "Control-plane requests meanwhile (built-in flow schemas): "
                + ", ".join(f"{k} {int(v)}" for k, v in sorted(cp.items()) if v)
                + "."
            )
            out.append("")
    return out


def exporter_section(s: dict[str, Any]) -> list[str]:
    f = s["figures"]
    lat = f.get("latency_s") or {}
    page = f.get("page") or {}
    return [
        f"{page.get('gpus', '?')} GPUs on {s['params'].get('nodes', '?')} nodes: "
        f"{page.get('series', '?')} series in {page.get('families', '?')} families, "
        f"{fmt_bytes(f.get('bytes'))} ({fmt_bytes(f.get('gzip_bytes'))} gzipped)"
        + (
            f"; the exporter spent {fmt_seconds(f['cpu_per_scrape_s'])} of CPU per scrape."
            if f.get("cpu_per_scrape_s") is not None
            else "."
        ),
        "",
        *_table(
            ["scrape", "n", "p50", "p90", "p99", "max"],
            [_lat_row("plain", lat), _lat_row("gzip", f.get("gzip_latency_s"))],
        ),
    ]


def smi_section(s: dict[str, Any]) -> list[str]:
    rows = []
    for key, v in s["figures"].items():
        r = v.get("runs") or {}
        rows.append(
            [
                f"`{key}`",
                str(r.get("count", 0)),
                fmt_seconds(r.get("p50")),
                fmt_seconds(r.get("p95")),
                fmt_seconds(r.get("max")),
                fmt_seconds(v.get("first_run_s")),
                str(v.get("failures", 0)),
            ]
        )
    return _table(["command", "runs", "p50", "p95", "max", "first run", "failures"], rows)


def footprint_section(s: dict[str, Any]) -> list[str]:
    out: list[str] = []
    # Teardown and cleanup phases stay in results.json; the table keeps the measured ones.
    phases = {
        k: v
        for k, v in (s["figures"].get("phases") or {}).items()
        if "teardown" not in k and "cleanup" not in k
    }
    if not phases:
        return out
    out.append(
        "Per phase: resident memory (max) and CPU (mean cores) of each process; "
        "`other` is the machine's busy time not explained by the tracked processes "
        "(other work on the host)."
    )
    out.append("")
    names = sorted(
        {n for p in phases.values() for n in p["procs"]},
        key=lambda n: (next(p["procs"][n]["group"] for p in phases.values() if n in p["procs"]), n),
    )
    header = ["process", "group", *phases.keys()]
    rows = []
    for name in names:
        group = next(p["procs"][name]["group"] for p in phases.values() if name in p["procs"])
        cells = []
        for p in phases.values():
            ps = p["procs"].get(name)
            cells.append(
                "—"
                if ps is None
                else f"{fmt_bytes(ps['rss_max_bytes'])} / {ps['cpu_cores_mean']:.2f}"
            )
        rows.append([name, group, *cells])
    for group in ("ours", "control-plane", "harness"):
        rows.append(
            [
                f"**{group}**",
                "",
                *(
                    f"{fmt_bytes(p['groups'].get(group, {}).get('rss_max_bytes'))} / "
                    f"{p['groups'].get(group, {}).get('cpu_cores_mean', 0):.2f}"
                    for p in phases.values()
                ),
            ]
        )
    rows.append(["**other (host)**", "", *(f"{p['other_cores']:.2f}" for p in phases.values())])
    rows.append(
        ["**machine busy**", "", *(f"{p['machine_busy_cores']:.2f}" for p in phases.values())]
    )
    rows.append(["phase length", "", *(f"{p['duration_s']:.0f} s" for p in phases.values())])
    out += _table(header, rows)
    return out


def scheduler_section(s: dict[str, Any]) -> list[str]:
    rows = []
    for key, label in (
        ("plain", "plain pods"),
        ("dp", "device-plugin (nvidia.com/gpu)"),
        ("dra", "DRA (ResourceClaimTemplate)"),
    ):
        f = s["figures"].get(key)
        if not f:
            continue
        tp = f.get("throughput") or {}
        rows.append(
            [
                label,
                f"{f.get('scheduled', 0)}/{f.get('pods', 0)}",
                _num(tp.get("average"), 1),
                _num(tp.get("p50"), 1),
                _num(tp.get("p90"), 1),
                _num(f.get("create_rate_pods_s"), 0),
            ]
        )
    out = _table(
        [
            "path",
            "scheduled",
            "average pods/s",
            "p50 pods/s (1 s samples)",
            "p90 pods/s",
            "created at pods/s",
        ],
        rows,
    )
    up = s["figures"].get("upstream_thresholds") or []
    if up:
        out.append("Upstream scheduler_perf thresholds (peers-and-standards §7):")
        out.append("")
        out += _table(
            ["path", "test", "threshold pods/s", "typical"],
            [[u["path"], u["test"], str(u["threshold"]), str(u.get("typical", ""))] for u in up],
        )
    return out


def components_section(s: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, entry in s["figures"].items():
        code = entry.get("exit_code")
        state = "timed out" if code is None else f"exit {code}"
        out.append(
            f"**{name}** (`{' '.join(entry.get('argv') or [])}`): {state} after "
            f"{fmt_seconds(entry.get('duration_s'))}"
        )
        out.append("")
        tail = [ln for ln in entry.get("output_tail") or [] if not LOG_LINE.match(ln)]
        if tail:
            out += ["```", *tail[-25:], "```", ""]
    return out


SECTIONS = {
    "bringup": ("1. Bring-up", bringup_section, "bringup.png"),
    "churn": ("2. Churn", churn_section, "churn.png"),
    "exporter": ("3. Exporter scrape", exporter_section, "exporter.png"),
    "nvidia-smi": ("4. nvidia-smi", smi_section, "nvidia_smi.png"),
    "footprint": ("5. Footprint", footprint_section, "footprint.png"),
    "scheduler": ("6. Scheduler throughput", scheduler_section, "scheduler.png"),
    "components": ("7. Component benchmarks", components_section, ""),
}


def render(doc: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    plots = plots or {}
    out = [
        f"# fake-gpu-operator benchmark, {_ts(doc['started_at'])}",
        "",
        "Generated by `make bench` (bench/run.py); method and caveats: docs/benchmarks.md.",
        "",
    ]
    out += machine_section(doc)
    out += targets_section(doc)
    by_name = {s["name"]: s for s in doc["scenarios"]}
    for name, (heading, fn, plot) in SECTIONS.items():
        s = by_name.get(name)
        if s is None:
            continue
        out += [
            f"## {heading}",
            "",
            f"*{s['title']}* — status **{s['status']}**, "
            f"{s['duration_s']:.0f} s" + (f"; error: `{s['error']}`" if s.get("error") else ""),
            "",
        ]
        try:
            out += fn(s)
        except (KeyError, TypeError, ValueError) as exc:  # partial figures: say so, keep going
            out += [f"(could not render this section from partial figures: {exc!r})", ""]
        if plot in plots:
            out += [f"![{heading}]({plots[plot]})", ""]
        if s["notes"]:
            out += ["Notes:", "", *(f"- {n}" for n in s["notes"]), ""]
    if "env_error" in doc:
        out += ["## Environment error", "", f"`{doc['env_error']}`", ""]
    alive = doc.get("services_alive_at_end") or {}
    dead = [k for k, v in alive.items() if not v]
    if dead:
        out += [f"**Services that had exited by the end of the run:** {', '.join(dead)}", ""]
    return "\n".join(out)


def write(doc: dict[str, Any], out_dir: Path) -> Path:
    plots: dict[str, str] = {}
    try:
        from bench import plots as plotting

        plots = plotting.write_all(doc, out_dir / "plots")
    except ImportError as exc:
        print(
            f"[bench] plots skipped ({exc}); install with `uv sync --group bench`", file=sys.stderr
        )
    path = out_dir / "report.md"
    path.write_text(render(doc, {k: f"plots/{v}" for k, v in plots.items()}))
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.report <results.json>", file=sys.stderr)
        return 2
    path = Path(args[0])
    doc = json.loads(path.read_text())
    print(write(doc, path.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
