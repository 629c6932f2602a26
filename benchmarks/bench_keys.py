"""Does `kv keys` hurt request latency? (issue 15: p99 of concurrent gets at most 2x.)

    python benchmarks/bench_keys.py [--keys 100000] [--seconds 10] [--workers 8]

Starts a 3-node cluster (N=3, R=W=2) on free loopback ports, loads --keys keys, then runs
--workers closed-loop clients doing gets of random loaded keys for --seconds twice:

    baseline   nothing else running
    listing    while `kv keys` streams every key to a pipe (restarted if it finishes early)

and prints p50/p99/max of the gets in each phase, the p99 ratio, and how many keys the
listing printed (it must be all of them, each once) at what rate. Bounded in count and time
everywhere; every node is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kvstore.client import AsyncClient
from kvstore.testing.processes import LocalCluster


async def load(addrs: list[str], n: int, concurrency: int = 64) -> None:
    async with AsyncClient(addrs, timeout_s=10.0) as c:
        it = iter(range(n))

        async def worker() -> None:
            for i in it:
                await c.put(f"k{i:07d}", b"v" * 32)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def gets(addrs: list[str], n: int, seconds: float, workers: int) -> list[float]:
    lat: list[float] = []
    deadline = time.monotonic() + seconds
    async with AsyncClient(addrs, timeout_s=10.0) as c:
        rng = random.Random(7)

        async def worker() -> None:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                await c.get(f"k{rng.randrange(n):07d}")
                lat.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(workers)))
    return lat


def summary(label: str, lat: list[float]) -> float:
    ms = sorted(x * 1000 for x in lat)
    p99 = ms[int(len(ms) * 0.99) - 1]
    print(f"{label:<10} {len(ms):>7} gets   p50 {statistics.median(ms):6.2f} ms   p99 {p99:6.2f} ms   max {ms[-1]:7.2f} ms")
    return p99


class Lister(threading.Thread):
    """`kv keys` in a loop until told to stop. Its output goes to a file, counted after each
    run: reading 30k lines a second in this process would take the GIL from the gets."""

    def __init__(self, node: str, out_dir: Path) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.out_dir = out_dir
        self.stop = threading.Event()
        self.runs: list[tuple[int, int, float]] = []  # (lines, distinct, seconds)

    def run(self) -> None:
        kv = [sys.executable, "-m", "cli", "--node", self.node, "keys"]
        while not self.stop.is_set() and len(self.runs) < 20:
            path = self.out_dir / f"keys-{len(self.runs)}.txt"
            t0 = time.monotonic()
            with open(path, "w") as fh:
                p = subprocess.Popen(kv, stdout=fh)
                while p.poll() is None and not self.stop.is_set():
                    time.sleep(0.05)
                if p.poll() is None:
                    p.terminate()
                    p.wait(timeout=60)
                    return
            secs = time.monotonic() - t0
            lines = path.read_text().splitlines()
            self.runs.append((len(lines), len(set(lines)), secs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kv-bench-keys-"))
    try:
        with LocalCluster(root, nodes=3) as cluster:
            cluster.start_all()
            addrs = cluster.addrs()
            t0 = time.monotonic()
            asyncio.run(load(addrs, args.keys))
            print(f"loaded {args.keys} keys in {time.monotonic() - t0:.1f}s")
            base = summary("baseline", asyncio.run(gets(addrs, args.keys, args.seconds, args.workers)))
            lister = Lister(addrs[0], root)
            lister.start()
            during = summary("listing", asyncio.run(gets(addrs, args.keys, args.seconds, args.workers)))
            lister.stop.set()
            lister.join(timeout=60)
            print(f"p99 ratio listing/baseline: {during / base:.2f} (target <= 2)")
            for lines, distinct, secs in lister.runs:
                print(f"kv keys: {lines} lines, {distinct} distinct, in {secs:.1f}s ({lines / secs:.0f} keys/s)")
            if not lister.runs:
                print("kv keys: no complete listing within the phase (raise --seconds to see one)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
