"""Counters vs plain puts: the throughput of ``dt.update`` increments next to blind puts, at
the same load, on one local 3-node cluster (N=3, R=W=2).

    python benchmarks/bench_datatypes.py [--conns 4] [--window 32] [--secs 3] [--repeat 3]

Each point is kvstore.testing.load's generator in a child process of its own (C connections
x W requests in flight, spread over the three nodes, keys drawn from 100 000 of each kind); put
and incr points alternate --repeat times and the medians are printed, with incr/put (the
issue's target: counters within 1.5x of plain puts, i.e. a ratio of at least 0.67).

An increment does more than a put: its coordinator decodes the local record's data type
state, merges its siblings, applies the operation, encodes the new state, and the reply
carries the new value; the quorum write that follows is the put's own machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvstore.testing.processes import LocalCluster  # noqa: E402


def _point(op: str, addrs: list[str], args: argparse.Namespace) -> dict[str, Any]:
    # Counters in a key space of their own: a key that holds a plain value refuses an incr.
    fmt = "kvbench-ctr:%08d" if op == "incr" else "kvbench:%08d"
    doc = {"op": op, "addrs": addrs, "conns": args.conns, "window": args.window, "secs": args.secs, "warm": 1.0,
           "key_fmt": fmt}
    code = (
        "import json, sys; from kvstore.testing.load import LoadSpec, measure; "
        "print(json.dumps(measure(LoadSpec.from_doc(json.loads(sys.argv[1])))))"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(doc)], capture_output=True, text=True,
                         cwd=REPO, timeout=args.secs + 120)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed: {out.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(out.stdout)
    if res.get("error") or res.get("errors"):
        raise SystemExit(f"{op}: {res.get('error') or res.get('first_error')}")
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conns", type=int, default=4, help="connections (default 4)")
    p.add_argument("--window", type=int, default=32, help="requests in flight per connection (default 32)")
    p.add_argument("--secs", type=float, default=3.0, help="measured seconds per point (default 3)")
    p.add_argument("--repeat", type=int, default=3, help="points of each op, alternated (default 3)")
    args = p.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {"put": [], "incr": []}
    with tempfile.TemporaryDirectory(prefix="bench-datatypes-") as tmp, LocalCluster(Path(tmp), nodes=3) as cluster:
        cluster.start_all()
        addrs = cluster.addrs()
        for _ in range(args.repeat):
            for op in ("put", "incr"):
                runs[op].append(_point(op, addrs, args))
    med = {op: {k: statistics.median(r[k] for r in rs) for k in ("ops_s", "p50_us", "p99_us")} for op, rs in runs.items()}
    print(f"3 nodes, N=3 R=W=2, {args.conns} conns x {args.window} in flight, {args.secs:g} s x {args.repeat} (medians)")
    print(f"{'op':6} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for op, m in med.items():
        print(f"{op:6} {m['ops_s']:8.0f} {m['p50_us'] / 1000:8.2f} {m['p99_us'] / 1000:8.2f}")
    ratio = med["incr"]["ops_s"] / med["put"]["ops_s"]
    print(f"incr/put = {ratio:.2f}: an increment costs {1 / ratio:.2f}x a put (target: at most 1.5x)")


if __name__ == "__main__":
    main()
