"""Issue 13's benchmark: kvstore 1-node and 3-node against ../shared/perf's reference and
3-node ceiling (LevelDB group commit) and redis-server, in one run, on the same load.

    python benchmarks/bench_throughput.py                    # everything, ~2-3 minutes
    python benchmarks/bench_throughput.py --json > run.json  # one JSON object on stdout
    python benchmarks/bench_throughput.py --report run.json  # that run's tables again
    python benchmarks/bench_throughput.py --secs 0.3 --shapes put-4x64 --systems kv1,reference
    kv bench --compare                                       # the same, from the CLI

What runs, each a process of its own, all in one tmp dir (removed afterwards):

- reference: ``reference_server.py --loop uvloop --ldb batch`` (1 node, a dict + one LevelDB
  WriteBatch per loop turn, sync=False, written before the acks)
- ceiling: three ``quorum_ceiling_node.py --ldb batch`` (N=3 W=2 R=2, the same group commit)
- kv1: one kvstore node, N=R=W=1; kv3: three kvstore nodes, N=3 R=2 W=2. ``--fsync`` picks the
  node's policy (kvstore/config.py ``fsync``); the default ``no`` is the ceiling's durability:
  every batch written to LevelDB's log (sync=False) before its ack, never fsync'd by the node.
  The node's own default, ``everysec``, adds one fsync a second (``--fsync everysec``).
- redis: ``redis-server --appendonly yes --appendfsync everysec`` driven by ``redis-benchmark``
  at the same shapes (-c 4 -P 64, -c 50 -P 1, -c 1 -P 1; -d 100, 16-byte keys), when installed;
  as root with apt, ``--install-redis`` (the default) installs it when missing.

Load: the same bytes for every msgpack-RPC system: ``put [key, value]`` / ``get [key]``,
16-byte keys ``%016d`` drawn from ``--keyspace`` with seed 1, 100-byte values, pre-packed
(``../shared/perf/load_client.py``'s requests). The generator is kvstore.testing.load (the
generator of ``kv bench``: it also gives p999, error replies and the get hit rate);
``--generator load_client`` uses ../shared/perf/load_client.py itself (p50/p99 only). Either
way the reference's put 4×64 and get 1-in-flight are also run with the other generator, and
both figures are printed (``calibration``): they should agree within the machine's noise.

Shapes: put/get at 4 connections × 64 in flight, 50 × 1, and strictly 1 in flight. For each
shape the systems run one after the other (ceiling, kv3, reference, kv1, redis), so drift on
the shared machine hits all alike: read the ratios, not the absolute figures.

Also measured: server CPU µs per op (the process the generator talks to; for the 3-node
systems also a replica, sampled from /proc/PID/stat around the point), memory per key (RSS
growth of a fresh 1-node kvstore and a fresh redis-server after writing the same
``--mem-keys`` keys; the kvstore load is bounded by ``--mem-secs`` and the keys actually
written are what is divided by), and open-loop latency of kvstore 3-node puts at half of its
measured peak put rate (kvstore.testing.open_loop: latency from each request's due time),
beside the 3-node ceiling's at half of its own peak and at kv3's rate (what the leanest
quorum write gets on this machine at the rate kv3 was offered). The peak is the put-4x64 rate, and the
open-loop point runs right after it, on the store that rate was measured on: blind puts
keep adding siblings (as Dynamo semantics want), so a put costs more after every later
shape than it did at the peak, and half of an earlier peak is not half of the store's.
Before the get shapes kv3 gets the same keys written for up to ``--prefill-secs`` (kv1 has
them from the memory load), so gets find values as they do on the prefilled reference.

The put shapes write keys of their own (``PUT_KEY_FMT``, as long as the get keys), on every
system. On one key space the gets read what the put shapes before them wrote, and blind puts
leave siblings on kvstore (Dynamo semantics) where the reference and the ceiling overwrite:
a get then answered 3 to 9 values, more the faster the puts had run (a faster put path made
the gets look slower), against the reference's one. With the keys apart a kvstore get reads
a key written once, the same bytes the others return, and the put shapes still pay for the
siblings they pile up. ``--shared-keys`` runs the old way; ``--generator load_client`` always
does (its key format is fixed). Then
the run waits until every process it started is idle (``wait_quiet``): what those loads leave
running, LevelDB compacting them above all, is setup, not the first point's cost. It waits so
again before every point (at most ``--settle-secs``; each point's ``settled_s`` says how
long): what a point leaves running belongs to its own system, where it was charged to
whichever system ran next (kv3's compactions after its put 4×64 ran during the reference's
put point, the ceiling's during kv3's, and the open loop began while kv3's own ran).

Each target of issue 13 that this run measured is printed with PASS or FAIL.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput_systems import (  # noqa: E402
    KEY_FMT,
    CpuSampler,
    System,
    Systems,
    load_msgpack_keys,
    load_redis_keys,
    redis_available,
    rss_bytes,
    run_child,
    wait_quiet,
)

from kvstore.testing.load import LoadSpec  # noqa: E402

DEFAULT_PERF_DIR = REPO.parent / "shared" / "perf"
SYSTEMS = ("ceiling", "kv3", "reference", "kv1", "redis")  # the order within each shape
# name: (op, connections, in flight per connection)
SHAPES: dict[str, tuple[str, int, int]] = {
    "put-4x64": ("put", 4, 64),
    "get-4x64": ("get", 4, 64),
    "put-50x1": ("put", 50, 1),
    "get-50x1": ("get", 50, 1),
    "put-1x1": ("put", 1, 1),
    "get-1x1": ("get", 1, 1),
}
LABELS = {"4x64": "4×64 in flight", "50x1": "50×1", "1x1": "1 in flight"}
# Issue 13's targets: kvstore ops/s ÷ the ceiling (3 nodes) and ÷ the reference (1 node).
TARGET_RATIO = {"put-4x64": 0.25, "get-4x64": 0.4, "put-50x1": 0.5, "get-50x1": 0.6,
                "put-1x1": 0.6, "get-1x1": 0.8}  # fmt: skip
TARGET_OPEN_LOOP_P99_US = 5000.0
# The open-loop points: at half of this shape's rate, run right after it (see the doc above);
# kv3 at half its peak is the target, the ceiling the same way beside it shows what the
# leanest 3-node quorum write's p99 is at half its own peak on this machine.
OPEN_LOOP_PEAK_SHAPE = "put-4x64"
OPEN_LOOP_KEYS = {"ceiling": "open_loop_ceiling", "kv3": "open_loop"}
# And the ceiling once more at kv3's rate, right after kv3's point: at its own half peak the
# ceiling runs several times faster, so only this one says what p99 the machine gives a
# quorum write at the rate kv3 was offered.
OPEN_LOOP_SAME_RATE_KEY = "open_loop_ceiling_at_kv3_rate"
TARGET_MEMORY_RATIO = 1.5
# Issue 16: counters (the counter data type's increment) within 1.5x of plain puts, kv3 at 4x64.
TARGET_COUNTER_RATIO = 1 / 1.5
COUNTER_KEY_FMT = "kvbench-counter:%08d"  # keys of their own: a counter cannot be a plain value
# The puts measured right before the increments: keys of their own too, as long as the
# counters' and as new to the store, so that the two points differ only in the operation.
COUNTER_PUT_KEY_FMT = "kvbench-plainpt:%08d"
# Keys of the put shapes (and the open loop): 16 bytes as KEY_FMT's, but not the keys the get
# shapes read (see the module doc; --shared-keys puts them back on one key space).
PUT_KEY_FMT = "p%015d"
# redis-benchmark takes a request count, not a duration: counts from these rough rates make
# each of its points last about --secs (a slower redis just takes longer).
REDIS_RATE_GUESS = {"4x64": 400_000, "50x1": 50_000, "1x1": 25_000}
CALIBRATION_SHAPES = ("put-4x64", "get-1x1")
CHILD_GRACE_S = 60.0
# Before every point the run waits (at most this long) until every process it started is
# idle: what the point before left running (LevelDB compacting what a put shape wrote above
# all) belongs to that system, not to whichever one is measured next.
SETTLE_S = 10.0


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- points


def _generator_args(gen: str, sysm: System, shape: str, a: argparse.Namespace) -> list[str]:
    op, conns, window = SHAPES[shape]
    if gen == "load_client":
        args = [sys.executable, str(a.perf_dir / "load_client.py"), "--port", str(sysm.port),
                "--op", op, "--conns", str(conns), "--window", str(window), "--secs", str(a.secs),
                "--warm", str(a.warm), "--keyspace", str(a.keyspace), "--spid", str(sysm.pid),
                "--label", f"{sysm.name} {shape}"]  # fmt: skip
        return [*args, "--mode", "seq"] if conns == 1 and window == 1 else args
    spec = _load_spec(sysm, a, op, conns, window, _key_fmt(op, a.shared_keys))
    return [sys.executable, "-m", "cli.bench_cmds", "load", json.dumps(spec)]


def _load_spec(
    sysm: System, a: argparse.Namespace, op: str, conns: int, window: int, key_fmt: str, *,
    secs: float | None = None, node_api: bool = False,
) -> dict[str, Any]:
    """What kvstore.testing.load is given for one point against ``sysm`` (``secs``: a.secs
    unless told): every point's generator reads the same key space with the same seed."""
    return {"op": op, "addrs": [f"127.0.0.1:{sysm.port}"], "conns": conns, "window": window,
            "secs": a.secs if secs is None else secs, "warm": a.warm, "keys": a.keyspace, "value_bytes": 100,
            "key_fmt": key_fmt, "seed": 1, "node_api": node_api, "server_pid": sysm.pid}  # fmt: skip


def _key_fmt(op: str, shared_keys: bool) -> str:
    return PUT_KEY_FMT if op == "put" and not shared_keys else KEY_FMT


def _per_op_us(cpu_s: float | None, ops_s: float, secs: float) -> float | None:
    if cpu_s is None or not ops_s or not secs:
        return None
    return round(cpu_s * 1e6 / (ops_s * secs), 1)


def run_point(gen: str, sysm: System, shape: str, a: argparse.Namespace) -> dict[str, Any]:
    """One shape against one msgpack-RPC system, in a generator child; normalised result."""
    with CpuSampler([sysm.replica_pid]) as sampler:
        doc, at, err = run_child(_generator_args(gen, sysm, shape, a), a.warm + a.secs + CHILD_GRACE_S)
    if doc is None or "error" in doc:
        why = doc["error"] if doc else err or "no output"
        raise RuntimeError(f"{gen} generator failed on {sysm.name} {shape}: {why}")
    secs = float(doc.get("secs") or a.secs)
    ops = float(doc["ops_s"])
    cpu_pct = doc.get("server_cpu_pct")
    res: dict[str, Any] = {
        "system": sysm.name, "shape": shape, "generator": gen, "ops_s": round(ops),
        "p50_us": doc.get("p50_us"), "p99_us": doc.get("p99_us"), "p999_us": doc.get("p999_us"),
        "errors": doc.get("errors"), "first_error": doc.get("first_error"),
        "hit_pct": doc.get("hit_pct"), "values_per_hit": doc.get("values_per_hit"),
        "server_cpu_pct": cpu_pct, "client_cpu_pct": doc.get("client_cpu_pct"),
        "cpu_us_per_op": round(cpu_pct * 1e4 / ops, 1) if cpu_pct is not None and ops else None,
        "replica_cpu_us_per_op": None,
    }  # fmt: skip
    if sysm.replica_pid:
        res["replica_cpu_us_per_op"] = _per_op_us(sampler.cpu_between(sysm.replica_pid, at - secs, at), ops, secs)
    return res


def run_redis_point(sysm: System, shape: str, a: argparse.Namespace) -> dict[str, Any]:
    op, conns, window = SHAPES[shape]
    n = max(2000, int(REDIS_RATE_GUESS[shape.split("-", 1)[1]] * a.secs))
    args = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(sysm.port), "-c", str(conns),
            "-P", str(window), "-n", str(n), "-t", "set" if op == "put" else "get", "-d", "100",
            "-r", str(a.keyspace), "--csv"]  # fmt: skip
    import subprocess

    with CpuSampler([sysm.pid]) as sampler:
        t0 = time.perf_counter()
        r = subprocess.run(args, capture_output=True, text=True, timeout=a.secs * 20 + CHILD_GRACE_S, check=False)
        t1 = time.perf_counter()
    rows = [ln.replace('"', "").split(",") for ln in r.stdout.splitlines() if ln.startswith('"')]
    data = [x for x in rows if x[0] in ("SET", "GET")]
    if r.returncode != 0 or not data:
        raise RuntimeError(f"redis-benchmark failed ({shape}): {r.stderr.strip()[-300:]}")
    _, rps, _avg, _mn, p50, _p95, p99, _mx = data[0][:8]
    ops = float(rps)
    secs = min(n / ops, t1 - t0) if ops else 0.0
    cpu = sampler.cpu_between(sysm.pid, t1 - secs, t1)
    return {
        "system": "redis", "shape": shape, "generator": "redis-benchmark", "ops_s": round(ops),
        "p50_us": round(float(p50) * 1000, 1), "p99_us": round(float(p99) * 1000, 1), "p999_us": None,
        "errors": None, "first_error": None, "hit_pct": None, "values_per_hit": None,
        "server_cpu_pct": round(100 * cpu / secs, 1) if cpu is not None and secs else None,
        "client_cpu_pct": None, "cpu_us_per_op": _per_op_us(cpu, ops, secs), "replica_cpu_us_per_op": None,
    }  # fmt: skip


def run_counter_point(sysm: System, a: argparse.Namespace) -> dict[str, Any]:
    """kv3 increments of counters (dt.update) at the put-4x64 shape, right after puts of
    the same shape through the same API by the same generator (``put_now_ops_s``)."""

    def one(op: str, key_fmt: str) -> dict[str, Any]:
        spec = _load_spec(sysm, a, op, 4, 64, key_fmt, node_api=True)
        args = [sys.executable, "-m", "cli.bench_cmds", "load", json.dumps(spec)]
        doc, _, err = run_child(args, a.warm + a.secs + CHILD_GRACE_S)
        if doc is None or "error" in doc:
            raise RuntimeError(f"{op} generator failed (counters): {doc['error'] if doc else err or 'no output'}")
        return doc

    put = one("put", COUNTER_PUT_KEY_FMT)
    doc = one("incr", COUNTER_KEY_FMT)
    ops = float(doc["ops_s"])
    put_ops = float(put["ops_s"])
    cpu_pct = doc.get("server_cpu_pct")
    return {"system": sysm.name, "shape": "incr-4x64", "ops_s": round(ops), "p50_us": doc.get("p50_us"),
            "p99_us": doc.get("p99_us"), "errors": doc.get("errors"), "first_error": doc.get("first_error"),
            "cpu_us_per_op": round(cpu_pct * 1e4 / ops, 1) if cpu_pct is not None and ops else None,
            "put_now_ops_s": round(put_ops), "put_now_errors": put.get("errors"),
            "ratio_to_put_now": round(ops / put_ops, 3) if put_ops else None}  # fmt: skip


def run_open_loop(sysm: System, rate: float, a: argparse.Namespace) -> dict[str, Any]:
    spec = _load_spec(sysm, a, "put", 4, 1, _key_fmt("put", a.shared_keys), secs=a.open_loop_secs)
    args = [sys.executable, str(Path(__file__).resolve()), "_open", json.dumps(spec), str(rate)]
    doc, _, err = run_child(args, a.warm + a.open_loop_secs + CHILD_GRACE_S)
    if doc is None or "error" in doc:
        raise RuntimeError(f"open-loop generator failed: {doc['error'] if doc else err or 'no output'}")
    doc["system"] = sysm.name
    doc["cpu_us_per_op"] = (
        round(doc["server_cpu_pct"] * 1e4 / doc["ops_s"], 1) if doc.get("server_cpu_pct") and doc["ops_s"] else None
    )
    return doc


# --------------------------------------------------------------------------- memory


def measure_memory(kv1: System | None, redis: System | None, a: argparse.Namespace) -> dict[str, Any]:
    """Memory per key of a fresh kv1 and a fresh redis holding the same keys.

    ``bytes_per_key`` is the marginal cost: the RSS growth while the second half of the keys
    is written, over those keys. The growth over all of them (``growth_per_key``, kept for
    reference) also counts costs that do not grow with the keys (LevelDB's memtable filling
    up, allocator arenas), which at 200k keys are tens of bytes a key. 400k keys by default:
    with records compressed for LevelDB (storage_compression lz4) its memtable holds about
    three times as many before its first flush, and at 200k keys part of its fixed 4-8 MB
    still landed in the second half (+15 B a key, the growth over all keys unchanged)."""
    out: dict[str, Any] = {"keys_asked": a.mem_keys, "value_bytes": 100, "key_bytes": 16}
    n = a.mem_keys
    half = max(1, n // 2)
    if kv1 is not None:
        time.sleep(0.3)  # let the just-started node settle before the baseline
        before = rss_bytes(kv1.pid)
        n1, secs1 = load_msgpack_keys(kv1.port, half, a.mem_secs)
        time.sleep(0.3)
        mid = rss_bytes(kv1.pid)
        n2, secs2 = load_msgpack_keys(kv1.port, n - half, a.mem_secs, start=half)
        time.sleep(0.3)
        after = rss_bytes(kv1.pid)
        n, secs = n1 + n2, secs1 + secs2
        out["kv1"] = {"keys": n, "load_secs": round(secs, 2), "keys_per_s": round(n / secs) if secs else None,
                      "rss_before": before, "rss_mid": mid, "rss_after": after,
                      "growth_per_key": round((after - before) / n, 1) if n else None,
                      "bytes_per_key": round((after - mid) / n2, 1) if n2 else None}  # fmt: skip
    if redis is not None and n:
        half = max(1, n // 2)
        before = rss_bytes(redis.pid)
        secs = load_redis_keys(redis.port, half)
        time.sleep(0.3)
        mid = rss_bytes(redis.pid)
        secs += load_redis_keys(redis.port, n - half, start=half)
        time.sleep(0.3)
        after = rss_bytes(redis.pid)
        out["redis"] = {"keys": n, "load_secs": round(secs, 2), "rss_before": before, "rss_mid": mid,
                        "rss_after": after, "growth_per_key": round((after - before) / n, 1),
                        "bytes_per_key": round((after - mid) / (n - half), 1) if n - half else None}  # fmt: skip
    k, r = out.get("kv1"), out.get("redis")
    if k and r and k["bytes_per_key"] and r["bytes_per_key"] and r["bytes_per_key"] > 0:
        out["ratio"] = round(k["bytes_per_key"] / r["bytes_per_key"], 2)
    return out


# --------------------------------------------------------------------------- report


def _fmt_ops(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _fmt_us(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f} µs" if x < 1000 else f"{x / 1000:.2f} ms" if x < 10_000 else f"{x / 1000:,.1f} ms"


def ratio_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(p["system"], p["shape"]): p for p in points}
    rows = []
    for shape in SHAPES:
        got = {s: by.get((s, shape)) for s in SYSTEMS}
        if not any(got.values()):
            continue
        row: dict[str, Any] = {"shape": shape, "target": TARGET_RATIO[shape]}
        for pair, (kv, base) in (("3n", ("kv3", "ceiling")), ("1n", ("kv1", "reference"))):
            k, b = got[kv], got[base]
            row[f"{pair}_kvstore_ops_s"] = k["ops_s"] if k else None
            row[f"{pair}_base_ops_s"] = b["ops_s"] if b else None
            row[f"{pair}_ratio"] = round(k["ops_s"] / b["ops_s"], 3) if k and b and b["ops_s"] else None
        row["redis_ops_s"] = got["redis"]["ops_s"] if got["redis"] else None
        rows.append(row)
    return rows


def target_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target of issue 13 that this run measured."""
    out = []
    for r in doc["ratios"]:
        for pair, what in (("3n", "3 nodes kvstore/ceiling"), ("1n", "1 node kvstore/reference")):
            if r[f"{pair}_ratio"] is not None:
                out.append({"name": f"{r['shape']} {what}", "target": f">= {r['target']}",
                            "value": r[f"{pair}_ratio"], "pass": r[f"{pair}_ratio"] >= r["target"]})  # fmt: skip
    ol = doc.get("open_loop")
    if ol:
        same = doc.get(OPEN_LOOP_SAME_RATE_KEY)
        beside = f"; ceiling at this rate {same['p99_us'] / 1000:.1f} ms" if same else ""
        out.append({"name": f"open-loop put p99 at {ol['rate_per_s']:,.0f}/s (half the kv3 peak{beside})",
                    "target": f"<= {TARGET_OPEN_LOOP_P99_US / 1000:.0f} ms", "value": ol["p99_us"],
                    "pass": ol["p99_us"] <= TARGET_OPEN_LOOP_P99_US and not ol["lost"]})  # fmt: skip
    ctr = doc.get("counters")
    # Judged against the puts measured right before the increments (same cluster state, API
    # and key length); ``ratio_to_put`` (against the table's peak, taken minutes earlier on a
    # younger store) stays in the JSON. Documents from before that point carry only the latter.
    ratio_key = "ratio_to_put_now" if ctr and ctr.get("ratio_to_put_now") is not None else "ratio_to_put"
    if ctr and ctr.get(ratio_key) is not None:
        what = "put-4x64 right before" if ratio_key == "ratio_to_put_now" else "put-4x64"
        out.append({"name": f"counters: kv3 incr-4x64 / {what} (within 1.5x)", "target": f">= {TARGET_COUNTER_RATIO:.2f}",
                    "value": ctr[ratio_key],
                    "pass": ctr[ratio_key] >= TARGET_COUNTER_RATIO and not ctr.get("errors") and not ctr.get("put_now_errors")})  # fmt: skip
    mem = doc.get("memory") or {}
    if mem.get("ratio") is not None:
        out.append({"name": "memory per key kvstore/redis", "target": f"<= {TARGET_MEMORY_RATIO}",
                    "value": mem["ratio"], "pass": mem["ratio"] <= TARGET_MEMORY_RATIO})  # fmt: skip
    return out


def print_report(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=200 if not sys.stdout.isatty() else None, highlight=False)
    p = doc["params"]
    t = Table(title="issue 13: ops/s, same run, same load (16-byte keys, 100-byte values)",
              caption=f"{p['secs']} s per point after {p['warm']} s warm-up; generator {p['generator']}; "
                      f"kvstore fsync={p['fsync']}; ceilings with LevelDB group commit (--ldb batch)")  # fmt: skip
    for col in ("load", "3 nodes N3 R2 W2: kvstore / ceiling", "1 node N=R=W=1: kvstore / reference",
                "redis-server (appendonly everysec)", "target"):  # fmt: skip
        t.add_column(col, justify="right" if col != "load" else "left", no_wrap=True)
    for r in doc["ratios"]:
        op, shape = r["shape"].split("-", 1)
        cells = []
        for pair in ("3n", "1n"):
            ratio = r[f"{pair}_ratio"]
            cells.append(f"{_fmt_ops(r[f'{pair}_kvstore_ops_s'])} / {_fmt_ops(r[f'{pair}_base_ops_s'])}"
                         + ("" if ratio is None else f" = [bold]{ratio:.3f}[/bold]"))  # fmt: skip
        t.add_row(f"{op} {LABELS[shape]}", *cells, _fmt_ops(r["redis_ops_s"]), f">= {r['target']}")
    con.print(t)

    lt = Table(title="latency p50 / p99 / p999 and server CPU per op")
    for col in ("system", "load", "ops/s", "p50 / p99 / p999", "CPU µs/op (coordinator)", "CPU µs/op (replica)", "notes"):
        lt.add_column(col, justify="left" if col in ("system", "load", "notes") else "right", no_wrap=col != "notes")
    for pt in doc["points"]:
        notes = []
        if pt.get("errors"):
            notes.append(f"{pt['errors']:,} errors: {pt['first_error']}")
        if pt.get("hit_pct") is not None and pt["hit_pct"] < 100:
            notes.append(f"{pt['hit_pct']}% of gets found a value")
        if (pt.get("values_per_hit") or 0) > 1:
            notes.append(f"{pt['values_per_hit']} values per hit (siblings of blind puts)")
        if (pt.get("client_cpu_pct") or 0) >= 90:
            notes.append(f"generator at {pt['client_cpu_pct']}% CPU")
        lat = " / ".join(_fmt_us(pt.get(k)) for k in ("p50_us", "p99_us", "p999_us"))
        lt.add_row(pt["system"], pt["shape"], _fmt_ops(pt["ops_s"]), lat,
                   _fmt_ops(pt["cpu_us_per_op"]) if pt["cpu_us_per_op"] is None else f"{pt['cpu_us_per_op']:.1f}",
                   "-" if pt["replica_cpu_us_per_op"] is None else f"{pt['replica_cpu_us_per_op']:.1f}",
                   "; ".join(notes))  # fmt: skip
    con.print(lt)

    for key, name, whose in (("open_loop", "kv3", "of the peak"), ("open_loop_ceiling", "ceiling", "of the peak"),
                             (OPEN_LOOP_SAME_RATE_KEY, "ceiling", "of kv3's peak")):  # fmt: skip
        ol = doc.get(key)
        if ol:
            con.print(f"open loop, {name} put at {ol['rate_per_s']:,.0f}/s (half {whose} {ol['peak_ops_s']:,}/s), "
                      f"4 conns, {p['open_loop_secs']} s: {ol['ops_s']:,} ops/s, p50 / p99 / p999 / max "
                      f"{' / '.join(_fmt_us(ol[k]) for k in ('p50_us', 'p99_us', 'p999_us', 'max_us'))}, "
                      f"{ol['lost']} lost, {ol['errors']} errors, sender lag max {_fmt_us(ol['max_send_lag_us'])}, "
                      f"coordinator CPU {ol['cpu_us_per_op']} µs/op")  # fmt: skip
    mem = doc.get("memory") or {}
    for who in ("kv1", "redis"):
        m = mem.get(who)
        if m:
            con.print(f"memory {who}: {m['keys']:,} keys, RSS {m['rss_before'] / 2**20:.1f} → "
                      f"{m.get('rss_mid', 0) / 2**20:.1f} → {m['rss_after'] / 2**20:.1f} MiB: "
                      f"{m['bytes_per_key']} B/key for the second half ({m.get('growth_per_key')} B/key over all)"
                      + (f" (loaded at {m['keys_per_s']:,} keys/s)" if m.get("keys_per_s") else ""))  # fmt: skip
    if mem.get("ratio") is not None:
        con.print(f"memory per key kvstore / redis = {mem['ratio']}")
    for c in doc.get("calibration") or []:
        con.print(f"calibration, reference {c['shape']}: load_client.py {c['load_client_ops_s']:,} ops/s, "
                  f"kvstore.testing.load {c['kvstore_ops_s']:,} ops/s (ratio {c['ratio']})")  # fmt: skip
    tt = Table(title="issue 13 targets measured in this run")
    for col in ("target", "wanted", "measured", "result"):
        tt.add_column(col, justify="left" if col == "target" else "right")
    for r in doc["targets"]:
        v = r["value"]
        shown = _fmt_us(v) if "p99" in r["name"] else f"{v}"
        tt.add_row(r["name"], r["target"], shown, "[green]PASS[/green]" if r["pass"] else "[red]FAIL[/red]")
    con.print(tt)
    for who, what in doc.get("durability", {}).items():
        con.print(f"durability {who}: {what}")
    keys = p.get("keys", "shared")
    con.print(
        "keys: put shapes on keys of their own, get shapes on keys written once before them"
        if keys == "apart"
        else "keys: put and get shapes on one key space (gets read the siblings the blind puts left)"
    )
    for n in doc["notes"]:
        con.print(f"note: {n}")
    if doc.get("png"):
        con.print(f"plot: {doc['png']}")


def plot(doc: dict[str, Any], path: Path) -> str | None:
    """Throughput and latency per system and shape, as a PNG; None (and a note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        doc["notes"].append("no plot: matplotlib is not installed (pip install 'kvstore[bench]')")
        return None
    shapes = [s for s in SHAPES if any(p["shape"] == s for p in doc["points"])]
    systems = [s for s in SYSTEMS if any(p["system"] == s for p in doc["points"])]
    by = {(p["system"], p["shape"]): p for p in doc["points"]}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 8))
    width = 0.8 / max(1, len(systems))
    for i, sname in enumerate(systems):
        xs = [j + i * width for j in range(len(shapes))]
        ops = [by[(sname, s)]["ops_s"] if (sname, s) in by else 0 for s in shapes]
        ax1.bar(xs, ops, width, label=sname)
        p50 = [by[(sname, s)]["p50_us"] if (sname, s) in by else math.nan for s in shapes]
        p99 = [by[(sname, s)]["p99_us"] if (sname, s) in by else math.nan for s in shapes]
        bars = ax2.bar(xs, p99, width, label=f"{sname} p99", alpha=0.45)
        ax2.scatter(xs, p50, marker="_", s=200, color=bars.patches[0].get_facecolor() if bars.patches else None)
    for ax in (ax1, ax2):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes)
        ax.set_yscale("log")
    ax1.set_ylabel("ops/s")
    ax1.set_title("throughput per system (same run)")
    ax1.legend(ncol=len(systems), fontsize=8)
    ax2.set_ylabel("latency µs (bar p99, dash p50)")
    ax2.set_title("latency per system")
    ax2.legend(ncol=len(systems), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


# --------------------------------------------------------------------------- main


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--secs", type=float, default=2.0, help="measured seconds per point (default 2)")
    ap.add_argument("--warm", type=float, default=0.5, help="warm-up seconds per point (default 0.5)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    ap.add_argument("--generator", choices=("kvstore", "load_client"), default="kvstore",
                    help="kvstore.testing.load (p999, errors, hits) or ../shared/perf/load_client.py")
    ap.add_argument("--perf-dir", type=Path, default=DEFAULT_PERF_DIR, help="where the shared perf scripts are")
    ap.add_argument("--fsync", choices=("always", "everysec", "no"), default="no",
                    help="kvstore nodes' fsync policy (default no: the ceiling's durability)")
    ap.add_argument("--keyspace", type=int, default=100_000, help="keys drawn from 0..keyspace-1")
    ap.add_argument("--mem-keys", type=int, default=400_000, help="keys written for memory per key")
    ap.add_argument("--mem-secs", type=float, default=20.0, help="most seconds spent writing them into kv1")
    ap.add_argument("--shared-keys", action="store_true",
                    help="put shapes write the keys the get shapes read (siblings pile up on them)")
    ap.add_argument("--prefill-secs", type=float, default=10.0, help="most seconds spent prefilling kv3")
    ap.add_argument("--open-loop-secs", type=float, default=3.0, help="measured seconds of the open-loop point")
    ap.add_argument("--settle-secs", type=float, default=SETTLE_S,
                    help=f"most seconds waited before each point for the processes to go idle (default {SETTLE_S:g}; 0: no wait)")
    ap.add_argument("--no-open-loop", dest="open_loop", action="store_false")
    ap.add_argument("--no-memory", dest="memory", action="store_false")
    ap.add_argument("--no-calibration", dest="calibration", action="store_false")
    ap.add_argument("--install-redis", action=argparse.BooleanOptionalAction, default=True,
                    help="as root, apt-get install redis-server when missing (default yes)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout instead of tables")
    ap.add_argument("--png", type=Path, default=Path("bench_throughput.png"), help="plot path")
    ap.add_argument("--no-png", dest="png", action="store_const", const=None)
    ap.add_argument("--report", type=Path, default=None, help="print the tables of a saved --json run, run nothing")
    ap.add_argument("--keep", action="store_true", help="keep the tmp dir (logs, data) for inspection")  # fmt: skip
    a = ap.parse_args(argv)
    a.shape_list = [s.strip() for s in a.shapes.split(",") if s.strip()]
    a.system_list = [s.strip() for s in a.systems.split(",") if s.strip()]
    bad = [s for s in a.shape_list if s not in SHAPES] + [s for s in a.system_list if s not in SYSTEMS]
    if bad or not a.shape_list or not a.system_list:
        ap.error(f"unknown or no shapes/systems: {', '.join(bad) or '(none)'}")
    if not (a.perf_dir / "load_client.py").exists() and ({"reference", "ceiling"} & set(a.system_list)
                                                          or a.generator == "load_client"):  # fmt: skip
        ap.error(f"--perf-dir {a.perf_dir}: no load_client.py / reference_server.py there")
    return a


def _raise_interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def bench(a: argparse.Namespace) -> dict[str, Any]:
    notes: list[str] = []
    want = set(a.system_list)
    if "redis" in want:
        ok, note = redis_available(a.install_redis)
        if note:
            notes.append(note)
        if not ok:
            want.discard("redis")
    root = Path(tempfile.mkdtemp(prefix="kv-bench-"))
    systems = Systems(root, a.perf_dir)
    doc: dict[str, Any] = {
        "params": {"secs": a.secs, "warm": a.warm, "shapes": a.shape_list, "systems": [s for s in SYSTEMS if s in want],
                   "generator": a.generator, "fsync": a.fsync, "keyspace": a.keyspace, "key_bytes": 16,
                   "value_bytes": 100, "open_loop_secs": a.open_loop_secs,
                   "keys": "shared" if a.shared_keys or a.generator == "load_client" else "apart"},
        "durability": {"kvstore": f"fsync={a.fsync} (kvstore/config.py Settings.fsync)" + (
                           ": each batch in LevelDB's log (sync=False) before its ack, no periodic fsync: "
                           "the ceilings' durability" if a.fsync == "no" else ""),
                       "reference/ceiling": "--ldb batch: one LevelDB WriteBatch per loop turn, sync=False, before acks",
                       "redis": "appendonly yes, appendfsync everysec"},
        "points": [], "ratios": [], "calibration": [], "memory": None, "open_loop": None,
        "open_loop_ceiling": None, OPEN_LOOP_SAME_RATE_KEY: None, "notes": notes,
    }  # fmt: skip
    t_start = time.monotonic()
    try:
        started: dict[str, System] = {}
        for name in SYSTEMS:
            if name not in want:
                continue
            _log(f"starting {name}")
            if name == "reference":
                started[name] = systems.reference()
            elif name == "ceiling":
                started[name] = systems.ceiling()
            elif name in ("kv1", "kv3"):
                started[name] = systems.kvstore(name, 1 if name == "kv1" else 3, a.fsync)
            else:
                started[name] = systems.redis()
        if a.memory and ("kv1" in started or "redis" in started):
            _log(f"memory: writing up to {a.mem_keys:,} keys into kv1 and redis")
            doc["memory"] = measure_memory(started.get("kv1"), started.get("redis"), a)
        elif "kv1" in started and any(s.startswith("get") for s in a.shape_list):
            load_msgpack_keys(started["kv1"].port, a.keyspace, a.prefill_secs)
        if "kv3" in started and any(s.startswith("get") for s in a.shape_list):
            n, secs = load_msgpack_keys(started["kv3"].port, a.keyspace, a.prefill_secs)
            _log(f"kv3 prefilled with {n:,} keys in {secs:.1f} s")
            doc["prefill_kv3"] = {"keys": n, "secs": round(secs, 2)}
        quiet, waited = wait_quiet(systems.pids())
        if quiet:
            _log(f"waited {waited:.1f} s for the loads' background work (compactions) to end")
        else:
            _log(f"still busy after {waited:.0f} s of waiting for the loads' background work; going on")
            notes.append(f"the systems were not idle after {waited:.0f} s of waiting before the first point")
        other = "load_client" if a.generator == "kvstore" else "kvstore"

        def settle(what: str) -> float:
            """Wait for the idle machine a point starts from; seconds waited (noted if in vain)."""
            if a.settle_secs <= 0:
                return 0.0
            quiet, waited = wait_quiet(systems.pids(), timeout_s=a.settle_secs)
            if not quiet:
                notes.append(f"{what} started after {waited:.0f} s with the systems still busy")
            return round(waited, 1)

        def open_loop(sysm: System, rate: float, peak: int, what: str) -> dict[str, Any]:
            """One open-loop point at ``rate`` (half of ``peak``, some system's put 4×64 rate)."""
            waited = settle(f"open loop: {what}")
            _log(f"open loop: {what}")
            ol = run_open_loop(sysm, rate, a)
            ol["peak_ops_s"] = peak
            ol["settled_s"] = waited
            return ol

        for shape in a.shape_list:
            for name in SYSTEMS:
                s = started.get(name)
                if s is None:
                    continue
                waited = settle(f"{shape} → {name}")
                _log(f"{shape} → {name}")
                if name == "redis":
                    pt = run_redis_point(s, shape, a)
                else:
                    pt = run_point(a.generator, s, shape, a)
                pt["settled_s"] = waited
                doc["points"].append(pt)
                _log(f"  {pt['ops_s']:,} ops/s, p50 {_fmt_us(pt['p50_us'])}, p99 {_fmt_us(pt['p99_us'])}")
                if a.open_loop and shape == OPEN_LOOP_PEAK_SHAPE and name in OPEN_LOOP_KEYS and pt["ops_s"] > 0:
                    rate = pt["ops_s"] / 2
                    doc[OPEN_LOOP_KEYS[name]] = open_loop(s, rate, pt["ops_s"], f"{name} put at {rate:,.0f}/s")
                    if name == "kv3" and "ceiling" in started:
                        doc[OPEN_LOOP_SAME_RATE_KEY] = open_loop(
                            started["ceiling"], rate, pt["ops_s"], f"ceiling put at kv3's {rate:,.0f}/s"
                        )
                if name == "reference" and a.calibration and shape in CALIBRATION_SHAPES:
                    cal = run_point(other, s, shape, a)
                    mine, theirs = (pt, cal) if a.generator == "kvstore" else (cal, pt)
                    doc["calibration"].append({
                        "shape": shape, "kvstore_ops_s": mine["ops_s"], "load_client_ops_s": theirs["ops_s"],
                        "ratio": round(mine["ops_s"] / theirs["ops_s"], 3) if theirs["ops_s"] else None,
                    })  # fmt: skip
        kv3_put = next((p for p in doc["points"] if p["system"] == "kv3" and p["shape"] == "put-4x64"), None)
        if kv3_put is not None:
            waited = settle("incr-4x64 → kv3")
            _log("put-4x64 then incr-4x64 → kv3 (counters, back to back)")
            c = run_counter_point(started["kv3"], a)
            c["settled_s"] = waited
            c["put_ops_s"] = kv3_put["ops_s"]
            c["ratio_to_put"] = round(c["ops_s"] / kv3_put["ops_s"], 3) if kv3_put["ops_s"] else None
            doc["counters"] = c
            _log(f"  {c['ops_s']:,} increments/s: {c['ratio_to_put_now']} of the {c['put_now_ops_s']:,} puts/s "
                 f"right before, {c['ratio_to_put']} of the put-4x64 peak")
        for name, key in OPEN_LOOP_KEYS.items():
            if a.open_loop and name in started and doc[key] is None:
                notes.append(f"open loop of {name} skipped: {OPEN_LOOP_PEAK_SHAPE} was not run to take the peak from")
    finally:
        systems.close()
        if a.keep:
            notes.append(f"tmp dir kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    doc["ratios"] = ratio_rows(doc["points"])
    doc["targets"] = target_rows(doc)
    doc["elapsed_s"] = round(time.monotonic() - t_start, 1)
    if any(p["system"] == "redis" for p in doc["points"]):
        notes.append("redis rows are redis-benchmark's own figures (-d 100, -r keyspace; no p999)")
    if a.generator == "load_client":
        notes.append("load_client.py reports p50/p99 only (no p999, errors or hit rate)")
    return doc


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if a.report is not None:
        print_report(json.loads(a.report.read_text()))
        return 0
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        doc = bench(a)
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
    except (RuntimeError, TimeoutError, OSError) as e:
        _log(f"failed: {e}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)
    doc["png"] = plot(doc, a.png) if a.png is not None and doc["points"] else None
    if a.json:
        print(json.dumps(doc, indent=1))
    else:
        print_report(doc)
    return 0


def _child(argv: list[str]) -> None:
    """``_open SPEC RATE``: the open-loop generator in a process of its own."""
    from kvstore.testing.open_loop import measure_open_loop
    from kvstore.testing.processes import die_with_parent

    die_with_parent()
    spec = json.loads(argv[0])
    print(json.dumps(measure_open_loop(LoadSpec.from_doc(spec), float(argv[1]))), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_open"]:
        _child(sys.argv[2:])
    else:
        sys.exit(main())
