"""Start-up time of a `kv` call that prints a value (issue 15: at most 100 ms).

    python benchmarks/bench_cli_startup.py [--runs 20] [--node HOST:PORT]

Starts a one-node cluster on a free loopback port (unless --node names a running one), puts
one key, then runs ``kv get KEY`` --runs times as a user's shell would (the console script
next to this interpreter, a fresh process each time) and prints the median wall time, with
the fastest and slowest. For reference it also times ``python -c pass`` (the interpreter's
own floor) and prints the ten slowest imports of one ``kv get`` under ``-X importtime``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def kv_command() -> list[str]:
    script = Path(sys.executable).parent / "kv"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def timed(cmd: list[str], runs: int) -> list[float]:
    """Wall times; the children's CPU time (user + system) goes to CPU[label] as well, a
    figure that a busy machine inflates far less than wall time."""
    out = []
    cpu = []
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        out.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    CPU[" ".join(cmd)] = cpu
    return out


def slowest_imports(node: str, key: str, top: int = 10) -> list[tuple[int, str]]:
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cli", "--node", node, "get", key],
        capture_output=True, text=True, timeout=60,
    )
    rows = []
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cum_us, name = line[len("import time:"):].split("|")
        rows.append((int(cum_us), name.strip()))
    rows.sort(reverse=True)
    return rows[:top]


CPU: dict[str, list[float]] = {}


def report(label: str, times: list[float], cmd: list[str]) -> None:
    ms = sorted(t * 1000 for t in times)
    cpu_ms = statistics.median(CPU[" ".join(cmd)]) * 1000
    print(
        f"{label:<16} wall median {statistics.median(ms):7.1f} ms  (min {ms[0]:6.1f}, max {ms[-1]:6.1f}); "
        f"CPU median {cpu_ms:6.1f} ms  ({len(ms)} runs)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--node", default=None, help="HOST:PORT of a running node (default: start one)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kv-bench-startup-"))
    cluster = None
    try:
        node = args.node
        if node is None:
            from kvstore.testing.processes import LocalCluster

            cluster = LocalCluster(root, nodes=1, n=1, r=1, w=1).start_all()
            node = cluster.addrs()[0]
        key = "bench-startup"
        subprocess.run([*kv_command(), "--node", node, "put", key, "hello"], check=True, capture_output=True, timeout=60)
        env_cmd = [*kv_command(), "--node", node, "get", key]
        print(f"command: {' '.join(env_cmd)}")
        floor = [sys.executable, "-c", "pass"]
        report("python -c pass", timed(floor, args.runs), floor)
        helpcmd = [*kv_command(), "--help"]
        report("kv --help", timed(helpcmd, args.runs), helpcmd)
        times = timed(env_cmd, args.runs)
        report("kv get KEY", times, env_cmd)
        print("slowest imports of one `kv get` (cumulative µs):")
        for us, name in slowest_imports(node, key):
            print(f"  {us:>8}  {name}")
        print(f"MEDIAN_MS {statistics.median(times) * 1000:.1f}  CPU_MEDIAN_MS {statistics.median(CPU[' '.join(env_cmd)]) * 1000:.1f}")
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
