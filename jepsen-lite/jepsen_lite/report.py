"""results.json and a self-contained index.html (plots are PNGs inlined as base64, so the
page needs no network): latency over time coloured by outcome, throughput over time, fault
windows shaded, the verdict and the counts."""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display here, and the choice must precede pyplot's import

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from jepsen_lite.history import Event, Op, Window, fault_windows, is_final, pair_ops

__all__ = ["write_report", "write_results"]

OUTCOME_COLOURS = {"ok": "#2e8b57", "fail": "#d62728", "info": "#ff9f1c"}
FAULT_COLOURS = {"partition": "#9467bd", "kill": "#d62728", "pause": "#1f77b4", "clock": "#8c564b",
                 "lose-unsynced": "#e377c2", "ring": "#17becf"}


def write_results(out_dir: Path, results: dict[str, Any]) -> Path:
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _shade(ax: Axes, windows: Sequence[Window], end_s: float) -> None:
    seen: set[str] = set()
    for w in windows:
        colour = FAULT_COLOURS.get(w.kind, "#7f7f7f")
        label = w.kind if w.kind not in seen else None
        seen.add(w.kind)
        ax.axvspan(w.start / 1e9, w.end / 1e9, color=colour, alpha=0.18, label=label, lw=0)
        ax.text(w.start / 1e9, 1.0, " " + w.label, transform=ax.get_xaxis_transform(), fontsize=7,
                va="top", ha="left", rotation=90, color=colour, clip_on=True)
    ax.set_xlim(0, max(end_s, 1.0))


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def latency_plot(ops: Sequence[Op], windows: Sequence[Window], end_s: float) -> str:
    fig, ax = plt.subplots(figsize=(12, 4.2))
    _shade(ax, windows, end_s)
    for outcome, colour in OUTCOME_COLOURS.items():
        xs = [op.invoke_time / 1e9 for op in ops if op.type == outcome and op.latency_ns is not None]
        ys = [max(op.latency_ns or 0, 1) / 1e6 for op in ops if op.type == outcome and op.latency_ns is not None]
        if xs:
            ax.scatter(xs, ys, s=4, c=colour, label=f"{outcome} ({len(xs)})", alpha=0.6, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency of each operation, by outcome (shaded: fault windows)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, ncol=4, markerscale=3)
    return _png(fig)


def throughput_plot(ops: Sequence[Op], windows: Sequence[Window], end_s: float, bucket_s: float = 1.0) -> str:
    fig, ax = plt.subplots(figsize=(12, 3.6))
    _shade(ax, windows, end_s)
    counts: dict[str, dict[int, int]] = {k: defaultdict(int) for k in OUTCOME_COLOURS}
    last = 0
    for op in ops:
        if op.complete_time is None:
            continue
        b = int(op.complete_time / 1e9 / bucket_s)
        counts[op.type][b] += 1
        last = max(last, b)
    xs = [i * bucket_s for i in range(last + 1)]
    for outcome, colour in OUTCOME_COLOURS.items():
        ys = [counts[outcome].get(i, 0) / bucket_s for i in range(last + 1)]
        if any(ys):
            ax.plot(xs, ys, color=colour, lw=1.2, label=outcome)
    ax.set_xlabel("time since start (s)")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("operations / s")
    ax.set_title(f"Throughput by outcome ({bucket_s:g} s buckets)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, ncol=8)
    return _png(fig)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    if x is None:
        return "-"
    return str(x)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1250px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right;font-size:13px}th{background:#f3f3f3}td:first-child{text-align:left}
.verdict{font-size:1.6em;padding:.4em .8em;border-radius:6px;display:inline-block;color:#fff}
.valid{background:#2e8b57}.invalid{background:#d62728}.unknown{background:#777}
code,pre{background:#f6f6f6;padding:2px 4px}pre{padding:8px;white-space:pre-wrap}
img{max-width:100%}
"""


def write_report(out_dir: Path, events: Sequence[Event], results: dict[str, Any]) -> Path:
    ops_all = pair_ops(events)
    ops = [op for op in ops_all if not is_final(op.process)]
    end = max((e.time for e in events), default=0)
    windows = fault_windows(events, end_time=end)
    valid = results.get("valid")
    cls = "valid" if valid is True else "invalid" if valid is False else "unknown"
    word = {"valid": "VALID: nothing acknowledged was lost"
                     + (" and nothing deleted came back" if results.get("workload") == "deletes" else ""),
            "invalid": "INVALID",
            "unknown": "UNKNOWN: the history cannot decide"}[cls]
    w = results.get("workload_result", {})
    run = results.get("run", {})

    count_rows = [(k.removesuffix("_count"), v) for k, v in w.items() if k.endswith("_count")]
    count_rows.append(("lost fraction", _pct(w.get("lost_fraction"))))
    for k in ("reads_ok", "stale_reads", "read_your_writes_violations", "reads_of_deleted",
              "deletes_acknowledged", "deletes_indeterminate", "deletes_failed"):
        if k in w:
            count_rows.append((k, w[k]))
    if "stale_fraction" in w:
        count_rows.append(("stale fraction", _pct(w["stale_fraction"])))

    avail = results.get("availability", {})
    av_rows = [("overall", *_av(avail.get("overall", {})))]
    av_rows += [(k, *_av(v)) for k, v in avail.get("by_kind", {}).items()]
    win_rows = [(x["label"], f"{x['start_s']:.1f}", f"{x['end_s']:.1f}", *_av(x)) for x in avail.get("windows", [])]
    lat_rows = [(k, v["count"], v["p50"], v["p90"], v["p99"], v["p99.9"], v["max"])
                for k, v in results.get("latency_ms", {}).items()]

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>jepsen-lite: {html.escape(str(results.get('workload')))} {cls}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>jepsen-lite: {html.escape(str(results.get('workload')))} workload</h1>",
        f"<div class='verdict {cls}'>{html.escape(word)}</div>",
        f"<p><code>{html.escape(str(run.get('command', '')))}</code></p>",
        _table([(k, v) for k, v in run.items() if k != "command"], ("run", "")),
        "<h2>Checker</h2>",
        _table(count_rows, ("outcome", "count")),
    ]
    for name in ("lost", "resurrected", "unexpected", "revived", "recovered"):
        items = w.get(name) or []
        if items:
            shown = ", ".join(html.escape(json.dumps(x)) for x in items[:200])
            more = f" … ({w.get(name + '_count', len(items))} in all)" if len(items) > 200 else ""
            parts.append(f"<p><b>{name}</b>: {shown}{more}</p>")
    for label, key in (("Node crashes (not caused by the nemesis)", "node_crashes"),
                       ("Nemesis errors", "nemesis_errors"), ("Warnings", "warnings")):
        if results.get(key):
            items = "".join(f"<li>{html.escape(str(x))}</li>" for x in results[key])
            parts.append(f"<h3>{label}</h3><ul>{items}</ul>")
    parts += [
        "<h2>Latency</h2>",
        f"<img alt='latency over time' src='data:image/png;base64,{latency_plot(ops, windows, end / 1e9)}'>",
        "<h2>Throughput</h2>",
        f"<img alt='throughput over time' src='data:image/png;base64,{throughput_plot(ops, windows, end / 1e9)}'>",
        "<h2>Availability: ok / (ok + fail + info)</h2>",
        _table(av_rows, ("window", "ok", "fail", "info", "availability")),
        _table(win_rows, ("fault", "start s", "end s", "ok", "fail", "info", "availability")),
        "<h2>Latency quantiles (ms)</h2>",
        _table(lat_rows, ("op:outcome", "count", "p50", "p90", "p99", "p99.9", "max")),
        "<p>Files: <a href='history.jsonl'>history.jsonl</a> · <a href='results.json'>results.json</a>"
        " · <a href='schedule.json'>schedule.json</a> · node logs in <code>nodes/</code></p>",
        "</body></html>",
    ]
    path = out_dir / "index.html"
    path.write_text("\n".join(parts))
    return path


def _av(d: dict[str, Any]) -> tuple[Any, ...]:
    return (d.get("ok", 0), d.get("fail", 0), d.get("info", 0), _pct(d.get("availability")))
