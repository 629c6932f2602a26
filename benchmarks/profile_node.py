"""Instructions per request, counted by callgrind on live nodes: a profile that does not move
with the shared machine's noise.

    python benchmarks/profile_node.py                          # 1 node, put 4x64
    python benchmarks/profile_node.py --nodes 3 --op put       # coordinator n1 and replica n2
    python benchmarks/profile_node.py --nodes 3 --op get --top 40 --json

Wall-clock profilers (py-spy, perf) sample a process that shares two cores with its peers
and the load generator, and py-spy pauses it to sample: on this machine the same code moved
by 2x between runs. Callgrind counts the instructions each function executes instead, the
same in every run of the same code, so a change to the request path can be judged by a few
percent. Nodes run 20-50x slower under it, which changes nothing of what is counted per
request (the load generator keeps the same requests in flight).

What runs: a LocalCluster (N=min(nodes, 3), R=W=1 for one node else 2, fsync no) in a tmp
dir, n1 (and with --nodes 3 also n2, a replica of every key) under
``valgrind --tool=callgrind --instr-atstart=no``; the load generator of ``kv bench``
(kvstore.testing.load: --conns x --window in flight, 16-byte keys from --keys, 100-byte
values) against n1. Counting is switched on with ``callgrind_control -i on`` once the
generator's warm-up is over and off when it exits, so the counts cover its measured window;
a get profile first writes the keys it reads. Printed per profiled node: the instructions
per request of the whole process (background work such as anti-entropy ticks included, so a
run of more requests shows slightly less of it) and of the top --top functions, inclusive,
by name (mypyc's ``CPyDef_module___Class___method``). Needs valgrind: installed with apt
when missing and run as root, else the script says so and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvstore.testing.processes import LocalCluster  # noqa: E402

# An inclusive line of callgrind_annotate: "1,234,567 (12.34%)  file:function [object]".
_LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*?)(?:\s+\[[^\]]*\])?\s*$")


def _log(msg: str) -> None:
    print(f"profile: {msg}", file=sys.stderr, flush=True)


def ensure_valgrind() -> None:
    if shutil.which("valgrind") and shutil.which("callgrind_control") and shutil.which("callgrind_annotate"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        _log("installing valgrind with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "valgrind"], env=env, capture_output=True, timeout=600, check=False)
    if not shutil.which("valgrind"):
        sys.exit("profile: valgrind is not installed (apt-get install valgrind) and could not be installed here")


def _load_cmd(op: str, port: str, a: argparse.Namespace, secs: float) -> list[str]:
    spec = {"op": op, "addrs": [f"127.0.0.1:{port}"], "conns": a.conns, "window": a.window, "secs": secs,
            "warm": a.warm, "keys": a.keys, "value_bytes": 100, "key_fmt": "%016d", "seed": 1, "node_api": False}  # fmt: skip
    return [sys.executable, "-m", "cli.bench_cmds", "load", json.dumps(spec)]


def _run_load(op: str, port: str, a: argparse.Namespace, secs: float, pids: list[int] | None = None) -> dict[str, Any]:
    """One load-generator run; with ``pids``, callgrind counts on those only while it measures."""
    p = subprocess.Popen(_load_cmd(op, port, a, secs), stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        if pids:
            time.sleep(a.warm)
            for pid in pids:
                subprocess.run(["callgrind_control", "-i", "on", str(pid)], capture_output=True, check=True)
        out, _ = p.communicate(timeout=secs + a.warm + 120)
    finally:
        if p.poll() is None:
            p.kill()
        for pid in pids or []:
            subprocess.run(["callgrind_control", "-i", "off", str(pid)], capture_output=True, check=False)
    lines = out.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"load generator failed (exit {p.returncode})")
    doc: dict[str, Any] = json.loads(lines[-1])
    if "error" in doc:
        raise RuntimeError(f"load generator: {doc['error']}")
    return doc


def top_functions(out_file: Path, requests: int, top: int) -> tuple[float, list[tuple[float, str]]]:
    """Total and per-function inclusive instructions per request from a callgrind dump."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out_file)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    total = 0.0
    rows: list[tuple[float, str]] = []
    seen: set[str] = set()
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        n = int(m.group(1).replace(",", "")) / max(requests, 1)
        name = m.group(2)
        if name == "PROGRAM TOTALS":
            total = n
            continue
        short = name.rsplit(":", 1)[-1].split("(")[0].strip()
        # CPyPy_x is the Python-callable wrapper of CPyDef_x: the same work counted twice.
        if not short.startswith("CPyDef_") or short in seen:
            continue
        seen.add(short)
        rows.append((n, short[len("CPyDef_") :]))
        if len(rows) >= top:
            break
    return total, rows


def profile(a: argparse.Namespace) -> dict[str, Any]:
    ensure_valgrind()
    root = Path(tempfile.mkdtemp(prefix="kv-profile-"))
    profiled = ["n1"] if a.nodes == 1 else ["n1", "n2"]
    wrap = {
        name: ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={root}/{name}.%p.callgrind"]
        for name in profiled
    }
    q = 1 if a.nodes == 1 else 2
    (root / "cluster").mkdir()
    c = LocalCluster(root / "cluster", nodes=a.nodes, n=min(a.nodes, 3), r=q, w=q, extra=["--fsync", "no"], wrap=wrap)
    try:
        _log(f"starting {a.nodes} node(s), {', '.join(profiled)} under callgrind (slow to start)")
        for name in c.nodes:
            c.start(name, wait=False)
        for name in c.nodes:
            c.wait_serving(name, timeout=600)
        c.wait_ring(a.nodes, timeout=600)
        port = c.nodes["n1"].addr.rsplit(":", 1)[1]
        pids = [c.nodes[n].proc.pid for n in profiled if c.nodes[n].proc is not None]
        if a.op == "get":
            _log("writing the keys the gets will read")
            _run_load("put", port, a, a.secs)
        _log(f"{a.op} {a.conns}x{a.window} for {a.secs:g} s, counting")
        doc = _run_load(a.op, port, a, a.secs, pids)
        requests = int(doc["n"])
        for pid in pids:
            subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
        result: dict[str, Any] = {"nodes": a.nodes, "op": a.op, "conns": a.conns, "window": a.window,
                                  "requests": requests, "ops_s_under_callgrind": doc["ops_s"], "profiles": {}}  # fmt: skip
        for name, pid in zip(profiled, pids, strict=True):
            dumps = sorted(root.glob(f"{name}.{pid}.callgrind.*"), key=lambda p: p.stat().st_mtime)
            if not dumps:
                raise RuntimeError(f"callgrind wrote no dump for {name} (pid {pid})")
            total, rows = top_functions(dumps[-1], requests, a.top)
            role = "coordinator" if name == "n1" else "replica"
            result["profiles"][name] = {"role": role, "instructions_per_request": round(total),
                                        "top": [{"function": f, "instructions_per_request": round(n)} for n, f in rows]}  # fmt: skip
        return result
    finally:
        c.close()
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            _log(f"kept {root}")


def print_report(r: dict[str, Any]) -> None:
    print(f"{r['op']} {r['conns']}x{r['window']} on {r['nodes']} node(s): {r['requests']} requests counted "
          f"({r['ops_s_under_callgrind']:,} ops/s under callgrind)")  # fmt: skip
    for name, p in r["profiles"].items():
        print(f"\n{name} ({p['role']}): {p['instructions_per_request']:,} instructions per request, whole process")
        for row in p["top"]:
            print(f"  {row['instructions_per_request']:>9,}  {row['function']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, choices=(1, 3), default=1, help="1 (N=R=W=1) or 3 (N=3 R=W=2); default 1")
    ap.add_argument("--op", choices=("put", "get", "incr"), default="put", help="incr: a counter's increment (dt.update)")
    ap.add_argument("--conns", type=int, default=4, help="connections (default 4)")
    ap.add_argument("--window", type=int, default=64, help="requests in flight per connection (default 64)")
    ap.add_argument("--secs", type=float, default=10.0, help="seconds counted (default 10)")
    ap.add_argument("--warm", type=float, default=1.0, help="seconds of load before counting (default 1)")
    ap.add_argument("--keys", type=int, default=100_000, help="keys drawn from 0..keys-1 (default 100000)")
    ap.add_argument("--top", type=int, default=30, help="functions shown per node (default 30)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--keep", action="store_true", help="keep the tmp dir (node logs, callgrind dumps)")
    a = ap.parse_args(argv)
    r = profile(a)
    if a.json:
        print(json.dumps(r))
    else:
        print_report(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
