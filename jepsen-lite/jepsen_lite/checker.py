"""Judges a history. Pure: events in, a JSON-ready verdict out; no I/O, no clocks.

Outcomes, per workload, as Jepsen names them:

    lost        acknowledged (ok) but absent from the final read      -> invalid
    recovered   indeterminate (info) and present at the end            -> fine
    unexpected  present at the end but never attempted                 -> invalid
    revived     certainly failed (fail) yet present at the end         -> invalid

``valid`` is True, False, or "unknown" when the history cannot decide (no final read of an
attempted key, or nothing acknowledged at all). Registers use causal coverage: a write is
accounted for when its value is present at the end *or* was observed by (and so superseded
by) a write whose value is accounted for. A put carries the context of the get before it, so
that is exactly the set of values it was allowed to replace. A read is *stale* when it misses
a write that was acknowledged before the read began; stale reads are reported, not judged,
since an eventually consistent store is allowed them.

Deletes (blind adds of unique values, deletes with a read's context) are judged value by
value. A delete's context is its read's, so it removes exactly the values that read
``observed`` and nothing added later. Hence, at the end:

    lost         an acked add that no delete observed (ok or info: an info delete may have
                 taken effect), yet absent                                   -> invalid
    resurrected  a value that an acked delete observed, yet present          -> invalid
    recovered    an indeterminate add, present (and not resurrected)         -> fine

An abandoned delete whose observed set is not on record may have removed any value whose
add was invoked before the delete's completion; it is treated so (never as a loss).

Counters (convergent data types) are judged by sums. Each ``incr`` carries its amount; the
final value of a key must lie within [acknowledged, acknowledged + indeterminate]:

    lost         final below the acknowledged increments                 -> invalid
    unexpected   final above acknowledged + indeterminate (a failed increment counted, or
                 one counted twice), or a read above everything invoked before it ended
                                                                          -> invalid
    stale        a read below the increments acknowledged before it began -> reported

Sets (convergent data types): unique members, each added once; a remove names a member its
fetch saw and carries that fetch's context, so it removes exactly that add. At the end:

    lost         an acked add absent, and no remove (ok or info) of it   -> invalid
    resurrected  a member of an acked remove, present                    -> invalid
    unexpected / revived  as for the set workload                        -> invalid
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jepsen_lite.history import Event, Op, Window, fault_windows, is_final, pair_ops

__all__ = [
    "WORKLOADS",
    "availability",
    "check",
    "check_counters",
    "check_deletes",
    "check_independent",
    "check_register",
    "check_set",
    "check_sets",
    "latency_quantiles",
]

WORKLOADS = ("set", "register", "independent", "deletes", "counters", "sets")
_QUANTILES = (0.5, 0.9, 0.99, 0.999)
_LIST_CAP = 1000


def _values(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _final_reads(ops: Sequence[Op]) -> dict[str | None, list[Any]]:
    """Key -> values of its last successful final read."""
    out: dict[str | None, list[Any]] = {}
    for op in ops:
        if is_final(op.process) and op.f == "read" and op.type == "ok":
            out[op.key] = _values(op.result)
    return out


def _capped(xs: Iterable[Any]) -> list[Any]:
    return sorted(xs, key=_sort_key)[:_LIST_CAP]


def _sort_key(x: Any) -> tuple[int, Any]:
    return (0, x) if isinstance(x, (int, float)) else (1, str(x))


def _verdict(*, decided: bool, anomalies: int, acked: int) -> bool | str:
    if anomalies:
        return False
    if not decided or acked == 0:
        return "unknown"
    return True


def check_set(ops: Sequence[Op]) -> dict[str, Any]:
    """Jepsen's set checker over ``add`` ops and the final read of the one set key."""
    adds = [op for op in ops if op.f == "add" and not is_final(op.process)]
    by_type: dict[str, set[Any]] = {"ok": set(), "fail": set(), "info": set()}
    for op in adds:
        by_type[op.type].add(op.value)
    attempted = by_type["ok"] | by_type["fail"] | by_type["info"]
    finals = _final_reads(ops)
    keys = {op.key for op in adds}
    final: set[Any] = set()
    decided = bool(finals) and keys <= finals.keys()
    for vs in finals.values():
        final.update(vs)
    lost = by_type["ok"] - final if decided else set()
    recovered = by_type["info"] & final
    unexpected = final - attempted
    revived = (by_type["fail"] - by_type["ok"] - by_type["info"]) & final
    acked = len(by_type["ok"])
    return {
        "valid": _verdict(decided=decided, anomalies=len(lost) + len(unexpected) + len(revived), acked=acked),
        "final_read": decided,
        "attempted_count": len(attempted),
        "acknowledged_count": acked,
        "failed_count": len(by_type["fail"]),
        "indeterminate_count": len(by_type["info"]),
        "final_count": len(final),
        "lost_count": len(lost),
        "recovered_count": len(recovered),
        "unexpected_count": len(unexpected),
        "revived_count": len(revived),
        "lost_fraction": (len(lost) / acked) if acked else 0.0,
        "lost": _capped(lost),
        "recovered": _capped(recovered),
        "unexpected": _capped(unexpected),
        "revived": _capped(revived),
    }


def _coverage(roots: Iterable[Any], observed: dict[Any, set[Any]]) -> set[Any]:
    """Values reachable from ``roots`` through "this write observed that value" edges."""
    seen: set[Any] = set()
    stack = list(roots)
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        stack.extend(observed.get(v, ()))
    return seen


def _by_key(ops: Sequence[Op], *fs: str) -> tuple[dict[str | None, list[Op]], ...]:
    """The workload's ops (not the final reads) grouped by key, one mapping per operation
    name in ``fs``, in that order; reads only when they succeeded."""
    groups: dict[str, dict[str | None, list[Op]]] = {f: defaultdict(list) for f in fs}
    for op in ops:
        if is_final(op.process):
            continue
        g = groups.get(op.f)
        if g is not None and (op.f != "read" or op.type == "ok"):
            g[op.key].append(op)
    return tuple(groups[f] for f in fs)


def check_register(ops: Sequence[Op]) -> dict[str, Any]:
    """Per-key causal registers: lost/recovered/unexpected writes and stale-read statistics."""
    writes, reads = _by_key(ops, "write", "read")
    finals = _final_reads(ops)
    lost: list[dict[str, Any]] = []
    recovered: list[dict[str, Any]] = []
    unexpected: list[dict[str, Any]] = []
    revived: list[dict[str, Any]] = []
    undecided: list[str | None] = []
    stale: list[dict[str, Any]] = []
    ryw_violations = 0
    acked = 0
    for key in sorted(writes.keys() | reads.keys(), key=_sort_key):
        ws = writes.get(key, [])
        attempted = {w.value for w in ws}
        observed: dict[Any, set[Any]] = {}
        for w in ws:
            if w.type != "fail":
                observed[w.value] = set(_values(w.extra.get("observed")))
        acked += sum(1 for w in ws if w.type == "ok")
        if key not in finals:
            if ws:
                undecided.append(key)
            continue
        final = finals[key]
        covered = _coverage(final, observed)
        for v in final:
            if v not in attempted:
                unexpected.append({"key": key, "value": v})
        for w in ws:
            took_effect = w.value in covered
            if w.type == "ok" and not took_effect:
                lost.append({"key": key, "value": w.value})
            elif w.type == "info" and took_effect:
                recovered.append({"key": key, "value": w.value})
            elif w.type == "fail" and took_effect:
                revived.append({"key": key, "value": w.value})
        acked_writes = sorted((w for w in ws if w.type == "ok" and w.complete_time is not None),
                              key=lambda w: w.complete_time or 0)
        for r in reads.get(key, []):
            seen = _values(r.result)
            for v in seen:
                if v not in attempted:
                    unexpected.append({"key": key, "value": v, "read_index": r.invoke_time})
            cov = _coverage(seen, observed)
            missed = [w for w in acked_writes if (w.complete_time or 0) < r.invoke_time and w.value not in cov]
            if missed:
                own = any(w.client is not None and w.client == r.client for w in missed)
                ryw_violations += own
                stale.append({
                    "key": key,
                    "time": r.invoke_time,
                    "client": r.client,
                    "read": seen,
                    "missed": [w.value for w in missed][-10:],
                    "own_write_missed": own,
                })
    ok_reads = sum(len(v) for v in reads.values())
    anomalies = len(lost) + len(unexpected) + len(revived)
    return {
        "valid": _verdict(decided=not undecided, anomalies=anomalies, acked=acked),
        "final_read": not undecided,
        "keys": len(writes),
        "undecided_keys": _capped(k for k in undecided),
        "attempted_count": sum(len(v) for v in writes.values()),
        "acknowledged_count": acked,
        "lost_count": len(lost),
        "recovered_count": len(recovered),
        "unexpected_count": len(unexpected),
        "revived_count": len(revived),
        "lost_fraction": (len(lost) / acked) if acked else 0.0,
        "reads_ok": ok_reads,
        "stale_reads": len(stale),
        "stale_fraction": (len(stale) / ok_reads) if ok_reads else 0.0,
        "read_your_writes_violations": ryw_violations,
        "lost": lost[:_LIST_CAP],
        "recovered": recovered[:_LIST_CAP],
        "unexpected": unexpected[:_LIST_CAP],
        "revived": revived[:_LIST_CAP],
        "stale": stale[:100],
    }


def check_independent(ops: Sequence[Op]) -> dict[str, Any]:
    """Keys written once each: every acknowledged key must hold its value at the end."""
    writes = [op for op in ops if op.f == "write" and not is_final(op.process)]
    finals = _final_reads(ops)
    lost: list[dict[str, Any]] = []
    recovered: list[dict[str, Any]] = []
    unexpected: list[dict[str, Any]] = []
    revived: list[dict[str, Any]] = []
    undecided: list[str | None] = []
    by_key: dict[str | None, list[Op]] = defaultdict(list)
    for w in writes:
        by_key[w.key].append(w)
    for key, ws in by_key.items():
        if key not in finals:
            undecided.append(key)
            continue
        final = finals[key]
        attempted = {w.value for w in ws}
        unexpected.extend({"key": key, "value": v} for v in final if v not in attempted)
        for w in ws:
            present = w.value in final
            if w.type == "ok" and not present:
                lost.append({"key": key, "value": w.value})
            elif w.type == "info" and present:
                recovered.append({"key": key, "value": w.value})
            elif w.type == "fail" and present:
                revived.append({"key": key, "value": w.value})
    acked = sum(1 for w in writes if w.type == "ok")
    anomalies = len(lost) + len(unexpected) + len(revived)
    return {
        "valid": _verdict(decided=not undecided, anomalies=anomalies, acked=acked),
        "final_read": not undecided,
        "keys": len(by_key),
        "undecided_keys": _capped(k for k in undecided),
        "attempted_count": len(writes),
        "acknowledged_count": acked,
        "failed_count": sum(1 for w in writes if w.type == "fail"),
        "indeterminate_count": sum(1 for w in writes if w.type == "info"),
        "lost_count": len(lost),
        "recovered_count": len(recovered),
        "unexpected_count": len(unexpected),
        "revived_count": len(revived),
        "lost_fraction": (len(lost) / acked) if acked else 0.0,
        "lost": lost[:_LIST_CAP],
        "recovered": recovered[:_LIST_CAP],
        "unexpected": unexpected[:_LIST_CAP],
        "revived": revived[:_LIST_CAP],
    }


def check_deletes(ops: Sequence[Op]) -> dict[str, Any]:
    """Adds must survive unless a delete observed them; acked-deleted values must stay gone."""
    adds, deletes, reads = _by_key(ops, "add", "delete", "read")
    finals = _final_reads(ops)
    lost: list[dict[str, Any]] = []
    resurrected: list[dict[str, Any]] = []
    recovered: list[dict[str, Any]] = []
    unexpected: list[dict[str, Any]] = []
    revived: list[dict[str, Any]] = []
    undecided: list[str | None] = []
    resurrected_keys: set[str | None] = set()
    reads_of_deleted = 0
    for key in sorted(adds.keys() | deletes.keys() | reads.keys(), key=_sort_key):
        as_, ds = adds.get(key, []), deletes.get(key, [])
        attempted = {a.value for a in as_}
        invoked_at = {a.value: a.invoke_time for a in as_}
        # value -> completion time of the first acked delete that observed it
        acked_delete: dict[Any, int] = {}
        maybe_deleted: set[Any] = set()
        for d in ds:
            if d.type == "fail":
                continue  # certainly never sent: it removed nothing
            if "observed" in d.extra:
                scope = set(_values(d.extra["observed"]))
            else:
                until = d.complete_time if d.complete_time is not None else math.inf
                scope = {v for v, t in invoked_at.items() if t < until}
            maybe_deleted |= scope
            if d.type == "ok" and "observed" in d.extra:
                for v in scope:
                    t = d.complete_time or 0
                    acked_delete[v] = min(acked_delete.get(v, t), t)
        for r in reads.get(key, []):
            seen = _values(r.result)
            unexpected.extend({"key": key, "value": v, "read_time": r.invoke_time}
                              for v in seen if v not in attempted)
            reads_of_deleted += any(v in acked_delete and acked_delete[v] < r.invoke_time for v in seen)
        if key not in finals:
            if as_:
                undecided.append(key)
            continue
        final = set(finals[key])
        unexpected.extend({"key": key, "value": v} for v in final if v not in attempted)
        for v in final & acked_delete.keys():
            resurrected.append({"key": key, "value": v, "deleted_at_s": acked_delete[v] / 1e9})
            resurrected_keys.add(key)
        for a in as_:
            present = a.value in final
            if a.type == "ok" and not present and a.value not in maybe_deleted:
                lost.append({"key": key, "value": a.value})
            elif a.type == "info" and present and a.value not in acked_delete:
                recovered.append({"key": key, "value": a.value})
            elif a.type == "fail" and present:
                revived.append({"key": key, "value": a.value})
    all_deletes = [d for v in deletes.values() for d in v]
    out = _adds_report(
        adds, adds.keys() | deletes.keys(), undecided,
        lost=lost, resurrected=resurrected, resurrected_keys=resurrected_keys,
        recovered=recovered, unexpected=unexpected, revived=revived,
    )
    out.update({
        "deletes_acknowledged": sum(1 for d in all_deletes if d.type == "ok"),
        "deletes_indeterminate": sum(1 for d in all_deletes if d.type == "info"),
        "deletes_failed": sum(1 for d in all_deletes if d.type == "fail"),
        "reads_ok": sum(len(v) for v in reads.values()),
        "reads_of_deleted": reads_of_deleted,
    })
    return out


def _adds_report(
    adds: Mapping[Any, Sequence[Op]], keys: Any, undecided: Any, *, lost: list[dict[str, Any]],
    resurrected: list[dict[str, Any]], resurrected_keys: Any, recovered: list[dict[str, Any]],
    unexpected: list[dict[str, Any]], revived: list[dict[str, Any]],
) -> dict[str, Any]:
    """What the checkers of adds with removals (deletes, set removes) report alike: the
    verdict, the adds' outcomes and every kind of anomaly, counted and listed (capped)."""
    all_adds = [a for v in adds.values() for a in v]
    acked = sum(1 for a in all_adds if a.type == "ok")
    anomalies = len(lost) + len(resurrected) + len(unexpected) + len(revived)
    return {
        "valid": _verdict(decided=not undecided, anomalies=anomalies, acked=acked),
        "final_read": not undecided,
        "keys": len(keys),
        "undecided_keys": _capped(k for k in undecided),
        "attempted_count": len(all_adds),
        "acknowledged_count": acked,
        "failed_count": sum(1 for a in all_adds if a.type == "fail"),
        "indeterminate_count": sum(1 for a in all_adds if a.type == "info"),
        "lost_count": len(lost),
        "resurrected_count": len(resurrected),
        "resurrected_keys": _capped(resurrected_keys),
        "recovered_count": len(recovered),
        "unexpected_count": len(unexpected),
        "revived_count": len(revived),
        "lost_fraction": (len(lost) / acked) if acked else 0.0,
        "lost": lost[:_LIST_CAP],
        "resurrected": resurrected[:_LIST_CAP],
        "recovered": recovered[:_LIST_CAP],
        "unexpected": unexpected[:_LIST_CAP],
        "revived": revived[:_LIST_CAP],
    }


def _final_scalars(ops: Sequence[Op]) -> dict[str | None, Any]:
    """Key -> result of its last successful final read (a counter's int)."""
    out: dict[str | None, Any] = {}
    for op in ops:
        if is_final(op.process) and op.f == "read" and op.type == "ok":
            out[op.key] = op.result
    return out


def check_counters(ops: Sequence[Op]) -> dict[str, Any]:
    """Counters: the final value within the acknowledged increments and those plus the
    indeterminate ones; reads never above what was invoked before they ended."""
    incrs, reads = _by_key(ops, "incr", "read")
    finals = _final_scalars(ops)
    keys_out: list[dict[str, Any]] = []
    lost: list[dict[str, Any]] = []
    unexpected: list[dict[str, Any]] = []
    undecided: list[str | None] = []
    stale = 0
    for key in sorted(incrs.keys() | reads.keys(), key=_sort_key):
        xs = incrs.get(key, [])
        acked = sum(int(x.value) for x in xs if x.type == "ok")
        unknown = sum(int(x.value) for x in xs if x.type == "info")
        for r in reads.get(key, []):
            end = r.complete_time if r.complete_time is not None else math.inf
            upper = sum(int(x.value) for x in xs if x.type != "fail" and x.invoke_time < end)
            lower = sum(int(x.value) for x in xs if x.type == "ok" and (x.complete_time or 0) < r.invoke_time)
            if not isinstance(r.result, int) or r.result > upper:
                unexpected.append({"key": key, "read": r.result, "at_most": upper, "read_time": r.invoke_time})
            elif r.result < lower:
                stale += 1
        if key not in finals:
            if xs:
                undecided.append(key)
            continue
        final = finals[key]
        row = {"key": key, "final": final, "acknowledged": acked, "indeterminate": unknown}
        keys_out.append(row)
        if not isinstance(final, int) or final > acked + unknown:
            unexpected.append(row)
        elif final < acked:
            lost.append({**row, "missing": acked - final})
    acked_ops = sum(1 for v in incrs.values() for x in v if x.type == "ok")
    n_reads = sum(len(v) for v in reads.values())
    return {
        "valid": _verdict(decided=not undecided, anomalies=len(lost) + len(unexpected), acked=acked_ops),
        "final_read": not undecided,
        "keys": len(incrs),
        "undecided_keys": _capped(k for k in undecided),
        "attempted_count": sum(len(v) for v in incrs.values()),
        "acknowledged_count": acked_ops,
        "failed_count": sum(1 for v in incrs.values() for x in v if x.type == "fail"),
        "indeterminate_count": sum(1 for v in incrs.values() for x in v if x.type == "info"),
        "acknowledged_sum": sum(r["acknowledged"] for r in keys_out),
        "indeterminate_sum": sum(r["indeterminate"] for r in keys_out),
        "final_sum": sum(r["final"] for r in keys_out if isinstance(r["final"], int)),
        "lost_count": len(lost),
        "unexpected_count": len(unexpected),
        "lost_fraction": (len(lost) / len(keys_out)) if keys_out else 0.0,
        "reads_ok": n_reads,
        "stale_reads": stale,
        "stale_fraction": (stale / n_reads) if n_reads else 0.0,
        "read_your_writes_violations": 0,
        "per_key": keys_out[:_LIST_CAP],
        "lost": lost[:_LIST_CAP],
        "unexpected": unexpected[:_LIST_CAP],
    }


def check_sets(ops: Sequence[Op]) -> dict[str, Any]:
    """Sets: acked adds present unless a remove of them may have happened; acked removes stick."""
    adds, removes = _by_key(ops, "add", "remove")
    finals = _final_reads(ops)
    lost: list[dict[str, Any]] = []
    resurrected: list[dict[str, Any]] = []
    recovered: list[dict[str, Any]] = []
    unexpected: list[dict[str, Any]] = []
    revived: list[dict[str, Any]] = []
    undecided: list[str | None] = []
    for key in sorted(adds.keys() | removes.keys(), key=_sort_key):
        as_, rs = adds.get(key, []), removes.get(key, [])
        attempted = {a.value for a in as_}
        maybe_removed = {r.value for r in rs if r.type != "fail"}
        removed = {r.value for r in rs if r.type == "ok"}
        if key not in finals:
            if as_:
                undecided.append(key)
            continue
        final = set(finals[key])
        unexpected.extend({"key": key, "value": v} for v in final if v not in attempted)
        resurrected.extend({"key": key, "value": v} for v in final & removed)
        for a in as_:
            present = a.value in final
            if a.type == "ok" and not present and a.value not in maybe_removed:
                lost.append({"key": key, "value": a.value})
            elif a.type == "info" and present:
                recovered.append({"key": key, "value": a.value})
            elif a.type == "fail" and present:
                revived.append({"key": key, "value": a.value})
    all_removes = [r for v in removes.values() for r in v]
    out = _adds_report(
        adds, adds.keys() | removes.keys(), undecided,
        lost=lost, resurrected=resurrected, resurrected_keys={r["key"] for r in resurrected},
        recovered=recovered, unexpected=unexpected, revived=revived,
    )
    out["removes_acknowledged"] = sum(1 for r in all_removes if r.type == "ok")
    out["removes_indeterminate"] = sum(1 for r in all_removes if r.type == "info")
    return out


def _rate(counts: dict[str, int]) -> dict[str, Any]:
    total = counts["ok"] + counts["fail"] + counts["info"]
    return {**counts, "total": total, "availability": (counts["ok"] / total) if total else None}


def availability(ops: Sequence[Op], windows: Sequence[Window]) -> dict[str, Any]:
    """ok/(ok+fail+info) of client operations overall, per fault window, per fault kind and
    outside every fault ("healthy"). An operation belongs to the window its invocation fell in."""
    def blank() -> dict[str, int]:
        return {"ok": 0, "fail": 0, "info": 0}

    overall = blank()
    per_window = {w.id: blank() for w in windows}
    per_kind: dict[str, dict[str, int]] = defaultdict(blank)
    for op in ops:
        if is_final(op.process):
            continue
        overall[op.type] += 1
        hit = [w for w in windows if w.start <= op.invoke_time <= w.end]
        if not hit:
            per_kind["healthy"][op.type] += 1
        for w in hit:
            per_window[w.id][op.type] += 1
        for kind in {w.kind for w in hit}:
            per_kind[kind][op.type] += 1
    return {
        "overall": _rate(overall),
        "by_kind": {k: _rate(v) for k, v in sorted(per_kind.items())},
        "windows": [
            {"id": w.id, "kind": w.kind, "label": w.label, "start_s": w.start / 1e9,
             "end_s": w.end / 1e9, **_rate(per_window[w.id])}
            for w in windows
        ],
    }


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    # Nearest rank: a value that was really observed, never an interpolation.
    idx = max(0, math.ceil(q * len(sorted_xs)) - 1)
    return sorted_xs[min(idx, len(sorted_xs) - 1)]


def latency_quantiles(ops: Sequence[Op]) -> dict[str, dict[str, Any]]:
    """Milliseconds from invoke to completion, per "f:type" and for all completed client ops."""
    groups: dict[str, list[float]] = defaultdict(list)
    for op in ops:
        if is_final(op.process) or op.latency_ns is None:
            continue
        ms = op.latency_ns / 1e6
        groups[f"{op.f}:{op.type}"].append(ms)
        groups["all"].append(ms)
    out: dict[str, dict[str, Any]] = {}
    for name, xs in sorted(groups.items()):
        xs.sort()
        stats: dict[str, Any] = {"count": len(xs)}
        for q in _QUANTILES:
            stats[f"p{q * 100:g}"] = round(_quantile(xs, q), 3)
        stats["max"] = round(xs[-1], 3)
        out[name] = stats
    return out


_BY_WORKLOAD = {"set": check_set, "register": check_register, "independent": check_independent,
                "deletes": check_deletes, "counters": check_counters, "sets": check_sets}


def check(events: Sequence[Event], workload: str) -> dict[str, Any]:
    """The full verdict of a history: workload anomalies, availability, latency."""
    if workload not in _BY_WORKLOAD:
        raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    ops = pair_ops(events)
    end = max((e.time for e in events), default=0)
    windows = fault_windows(events, end_time=end)
    result = _BY_WORKLOAD[workload](ops)
    client_ops = [op for op in ops if not is_final(op.process)]
    ok = sum(1 for op in client_ops if op.type == "ok")
    return {
        "workload": workload,
        "valid": result["valid"],
        "workload_result": result,
        "availability": availability(ops, windows),
        "latency_ms": latency_quantiles(ops),
        "ops": len(client_ops),
        "ok_ops": ok,
        "duration_s": end / 1e9,
        "faults": len(windows),
    }
