"""Put throughput of storage.Engine per fsync policy (group commit at work).

    python benchmarks/bench_storage.py [--ops N] [--concurrency C] [--value-bytes B]

Each policy gets a fresh LevelDB in a temporary directory. C writer tasks each await one put
at a time, so a turn of the loop carries up to C puts into one WriteBatch; the table shows
puts/s, the mean puts per batch and the fsyncs issued. Bounded by --ops and --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time

from storage.engine import FSYNC_POLICIES, Engine


async def run(policy: str, ops: int, concurrency: int, value_bytes: int, max_s: float) -> str:
    tmp = tempfile.mkdtemp(prefix="kv-bench-storage-")
    try:
        engine = Engine.open(os.path.join(tmp, "db"), fsync=policy)
        value = os.urandom(value_bytes)
        per_task = ops // concurrency
        deadline = time.perf_counter() + max_s
        done = 0

        async def writer(w: int) -> None:
            nonlocal done
            for i in range(per_task):
                if time.perf_counter() > deadline:
                    return
                await engine.put(i % 256, b"w%d-%d" % (w, i), value)
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(concurrency)))
        await engine.flush()
        dt = time.perf_counter() - t0
        batches = max(engine.batches_written, 1)
        row = (
            f"{policy:>9} {done:>9} {done / dt:>12,.0f} {done / batches:>12.1f} "
            f"{engine.syncs_written:>7}"
        )
        await engine.close()
        return row
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--max-seconds", type=float, default=20.0, help="per policy")
    args = ap.parse_args()
    print(f"{args.concurrency} writers, {args.value_bytes}-byte values")
    print(f"{'fsync':>9} {'puts':>9} {'puts/s':>12} {'puts/batch':>12} {'fsyncs':>7}")
    for policy in FSYNC_POLICIES:
        print(
            asyncio.run(run(policy, args.ops, args.concurrency, args.value_bytes, args.max_seconds))
        )


if __name__ == "__main__":
    main()
