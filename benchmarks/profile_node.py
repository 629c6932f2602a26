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
a get profile first writes each key it reads once (as the benchmark does: a put load would
leave siblings on them), and ``--siblings N`` writes every key N times first (each blind put
a sibling: what the benchmark's later put points find). Printed per profiled node: the
instructions per request of the whole process (background work such as anti-entropy ticks
included, so a run of more requests shows slightly less of it) and of the top --top
functions, inclusive, by name (mypyc's ``CPyDef_module___Class___method``). Needs
valgrind: installed with apt when missing and run as root, else the script says so and
stops.

``--sampler py-spy`` answers what callgrind cannot: where the *time* goes, system calls and
C libraries included. Callgrind sees no kernel (at 50x1 a coordinator's ``write`` calls are
~40% of its busy time) and counts memory clearing a byte at a time (``msgpack.unpackb`` of a
record: ~4.7k instructions counted, 246 ns timed, as fast as msgspec's decoder). The nodes run
at full speed; ``py-spy record --native`` samples each profiled node at --rate Hz (low: each
sample stops the process; at 400 Hz a node ran 30x slower) while the generator measures.
Printed per node: its CPU time per request (from /proc, the whole process) and, for the top
--top frames, the share of its busy samples (those not waiting in epoll or on a lock) that
were inside the frame, and that share of the CPU time per request. Noisier than callgrind
(a few hundred samples: +-3 points); use it for where, callgrind for how much a change saved.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvstore.testing.load import cpu_seconds  # noqa: E402
from kvstore.testing.processes import LocalCluster  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput_systems import load_msgpack_keys  # noqa: E402

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
    return _generator_doc(p.returncode, out)


def _generator_doc(returncode: int | None, out: str) -> dict[str, Any]:
    """The load generator's JSON result from its output; RuntimeError if it failed."""
    lines = out.strip().splitlines()
    if returncode != 0 or not lines:
        raise RuntimeError(f"load generator failed (exit {returncode})")
    doc: dict[str, Any] = json.loads(lines[-1])
    if "error" in doc:
        raise RuntimeError(f"load generator: {doc['error']}")
    return doc


def _write_keys(port: int, keys: int, times: int) -> None:
    """Each key written ``times`` times before counting. Gets: once by default, as
    bench_throughput does before its get points (a put load instead would leave siblings on
    them, and the gets would profile decoding those). Puts: none by default, but the
    benchmark's later put points find the keys its earlier ones wrote, each blind put a
    sibling more (Dynamo semantics): ``--siblings`` profiles that."""
    for n in range(times):
        _log(f"writing the {keys:,} keys ({n + 1} of {times})")
        done, _ = load_msgpack_keys(port, keys, secs=600)
        if done < keys:
            raise RuntimeError(f"wrote {done:,} of {keys:,} keys in 600 s")


def _prewrites(a: argparse.Namespace) -> int:
    return (1 if a.op == "get" else 0) if a.siblings is None else a.siblings


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


# Frames of a thread that is waiting, not working: the loop's poll, a worker's lock.
_IDLE = frozenset({"epoll_pwait", "epoll_wait", "PyThread_acquire_lock_timed", "pthread_cond_wait",
                          "pthread_cond_timedwait", "__futex_abstimed_wait_common", "do_futex_wait"})  # fmt: skip
_FRAME_PLACE = re.compile(r" \([^()]*\)$")
# uvloop's and libuv's own frames between the loop and a callback: a chain of names for one
# thing (``write`` and ``read``, the system calls under them, stay).
_LOOP_INTERNALS = ("uv_", "uv__", "Loop__", "loop_", "UVStream", "Handle__", "Py_DECREF", "Py_XDECREF")


def busy_frames(raw: str, top: int) -> tuple[int, list[tuple[float, str]]]:
    """From ``py-spy record -f raw`` output: the busy samples, and the ``top`` frames by the
    share of them each was on the stack of (mypyc's ``CPyDef_`` prefix dropped; its
    ``CPyPy_`` wrappers, the event loop, what started it and its internals left out)."""
    inclusive: dict[str, int] = {}
    busy = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_FRAME_PLACE.sub("", f) for f in stack.split(";")]
        # A waiting thread's innermost frames may be unnamed (libc without symbols): what it
        # waits in is looked for anywhere on its stack.
        if not _IDLE.isdisjoint(frames):
            continue
        n = int(count)
        busy += n
        if "run_forever" in frames:  # the loop's thread: what runs under the loop (uvloop's
            # run_forever is under asyncio's: cut at the last)
            frames = frames[len(frames) - frames[::-1].index("run_forever") :]
        for f in set(frames):
            if not f.startswith(("CPyPy_", *_LOOP_INTERNALS)):
                inclusive[f] = inclusive.get(f, 0) + n
    ranked = sorted(inclusive.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return busy, [(n / busy, f.removeprefix("CPyDef_")) for f, n in ranked]


def _py_spy() -> str:
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if not found:
        sys.exit("profile: py-spy is not installed (it is a dev dependency: pip install -e .[dev])")
    return found


@contextlib.contextmanager
def _cluster(
    a: argparse.Namespace, wrap: Callable[[Path], dict[str, list[str]]] | None = None
) -> Iterator[tuple[Path, LocalCluster]]:
    """A LocalCluster of ``a.nodes`` (N=min(nodes, 3), R=W=1 for one node else 2, fsync no)
    in a tmp dir, closed and removed after (kept with --keep); ``wrap`` gives each node's
    command prefix from that dir."""
    root = Path(tempfile.mkdtemp(prefix="kv-profile-"))
    q = 1 if a.nodes == 1 else 2
    (root / "cluster").mkdir()
    c = LocalCluster(root / "cluster", nodes=a.nodes, n=min(a.nodes, 3), r=q, w=q, extra=["--fsync", "no"],
                     wrap=wrap(root) if wrap else None)  # fmt: skip
    try:
        yield root, c
    finally:
        c.close()
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            _log(f"kept {root}")


def profile_sampled(a: argparse.Namespace) -> dict[str, Any]:
    """--sampler py-spy: the nodes at full speed, sampled while the generator measures."""
    spy = _py_spy()
    profiled = ["n1"] if a.nodes == 1 else ["n1", "n2"]
    with _cluster(a) as (root, c):
        _log(f"starting {a.nodes} node(s)")
        c.start_all()
        port = c.nodes["n1"].addr.rsplit(":", 1)[1]
        pids = [proc.pid for n in profiled if (proc := c.nodes[n].proc) is not None]
        _write_keys(int(port), a.keys, _prewrites(a))
        _log(f"{a.op} {a.conns}x{a.window} for {a.secs:g} s, sampling at {a.rate} Hz")
        gen = subprocess.Popen(_load_cmd(a.op, port, a, a.secs), stdout=subprocess.PIPE, text=True, cwd=ROOT)
        spies: list[subprocess.Popen[bytes]] = []
        try:
            time.sleep(a.warm)
            cpu0 = [cpu_seconds(pid) for pid in pids]
            for name, pid in zip(profiled, pids, strict=True):
                spies.append(subprocess.Popen(
                    [spy, "record", "--native", "-r", str(a.rate),
                     "-d", str(max(1, int(a.secs))), "-f", "raw", "-o", str(root / f"{name}.raw"), "-p", str(pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))  # fmt: skip
            out, _ = gen.communicate(timeout=a.secs + a.warm + 120)
            cpu1 = [cpu_seconds(pid) for pid in pids]
            for sp in spies:
                sp.wait(timeout=60)
        finally:
            for sp in spies:
                if sp.poll() is None:
                    sp.kill()
            if gen.poll() is None:
                gen.kill()
        doc = _generator_doc(gen.returncode, out)
        requests = int(doc["n"])
        used = [(b - a0) if a0 is not None and b is not None else None for a0, b in zip(cpu0, cpu1, strict=True)]
        result: dict[str, Any] = {"sampler": "py-spy", "nodes": a.nodes, "op": a.op, "conns": a.conns, "window": a.window,
                                  "requests": requests, "ops_s": doc["ops_s"], "profiles": {}}  # fmt: skip
        for i, name in enumerate(profiled):
            raw_file = root / f"{name}.raw"
            if not raw_file.exists():
                raise RuntimeError(f"py-spy wrote no samples for {name} (pid {pids[i]})")
            busy, rows = busy_frames(raw_file.read_text(), a.top)
            cpu_s = used[i]
            if cpu_s is None:
                raise RuntimeError(f"could not read the CPU time of {name} (pid {pids[i]}) from /proc")
            cpu_us = cpu_s * 1e6 / max(requests, 1)
            role = "coordinator" if name == "n1" else "replica"
            result["profiles"][name] = {"role": role, "cpu_us_per_request": round(cpu_us, 2), "busy_samples": busy,
                                        "top": [{"function": f, "share": round(sh, 4), "cpu_us_per_request": round(sh * cpu_us, 2)}
                                                for sh, f in rows]}  # fmt: skip
        return result


def profile(a: argparse.Namespace) -> dict[str, Any]:
    ensure_valgrind()
    profiled = ["n1"] if a.nodes == 1 else ["n1", "n2"]

    def under_callgrind(root: Path) -> dict[str, list[str]]:
        return {name: ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                       f"--callgrind-out-file={root}/{name}.%p.callgrind"] for name in profiled}  # fmt: skip

    with _cluster(a, under_callgrind) as (root, c):
        _log(f"starting {a.nodes} node(s), {', '.join(profiled)} under callgrind (slow to start)")
        for name in c.nodes:
            c.start(name, wait=False)
        for name in c.nodes:
            c.wait_serving(name, timeout=600)
        c.wait_ring(a.nodes, timeout=600)
        port = c.nodes["n1"].addr.rsplit(":", 1)[1]
        pids = [proc.pid for n in profiled if (proc := c.nodes[n].proc) is not None]
        _write_keys(int(port), a.keys, _prewrites(a))
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


def print_report(r: dict[str, Any]) -> None:
    if r.get("sampler") == "py-spy":
        print(f"{r['op']} {r['conns']}x{r['window']} on {r['nodes']} node(s): {r['requests']:,} requests at "
              f"{r['ops_s']:,} ops/s, sampled by py-spy")  # fmt: skip
        for name, p in r["profiles"].items():
            print(f"\n{name} ({p['role']}): {p['cpu_us_per_request']:.1f} µs CPU per request, whole process "
                  f"({p['busy_samples']} busy samples); share of them, and of the CPU:")  # fmt: skip
            for row in p["top"]:
                print(f"  {100 * row['share']:5.1f}%  {row['cpu_us_per_request']:6.2f} µs  {row['function']}")
        return
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
    ap.add_argument("--sampler", choices=("callgrind", "py-spy"), default="callgrind",
                    help="callgrind: instructions counted (default); py-spy: time sampled, system calls included")
    ap.add_argument("--rate", type=int, default=50, help="py-spy samples per second (default 50; each stops the node)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--keep", action="store_true", help="keep the tmp dir (node logs, callgrind dumps)")
    ap.add_argument("--siblings", type=int, default=None,
                    help="write every key this many times before counting, each blind put a sibling "
                         "(default 1 for get, 0 for put; not for incr)")
    a = ap.parse_args(argv)
    if a.siblings is not None and (a.siblings < 0 or a.op == "incr"):
        ap.error("--siblings takes a count >= 0, and not with --op incr (counters are not plain values)")
    r = profile_sampled(a) if a.sampler == "py-spy" else profile(a)
    if a.json:
        print(json.dumps(r))
    else:
        print_report(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
