"""Anti-entropy on a real 3-node cluster: tree build, comparison, repair, and what it costs.

    python benchmarks/bench_antientropy.py [--keys 100000] [--diverge-pct 1] \
        [--interval-s 1] [--exchanges-per-min 6000] [--repairs-per-s 2000]

Phases (node processes on loopback, N=3 so every node replicates every partition):

    load      --keys keys written through the client with W=3
    build     n3 killed (SIGKILL, so no snapshot) and restarted: LevelDB load, then its
              Merkle trees built in the background while it serves
    repair    --diverge-pct of the keys rewritten on n1 only (replica.put, no coordinator,
              no hints, no read repair); time until every partition's root agrees on all
              three nodes, with the anti-entropy counters and each node's CPU
    idle      a few seconds of converged steady state: the CPU anti-entropy costs when
              there is nothing to repair

CPU% is (utime + stime) from /proc/<pid>/stat over the phase's wall time (100% = one core).
"keys verified/s" counts every key of each partition whose root was compared with a peer
(equal roots verify the whole partition); "leaf keys/s" the (key, digest) pairs listed and
compared in differing buckets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvstore.client import AsyncClient
from kvstore.core import messages as m
from kvstore.core import vclock
from kvstore.core.ring import partition_of
from kvstore.testing.processes import LocalCluster, wait_until

Q = 256
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuMeter:
    def __init__(self, c: LocalCluster) -> None:
        self.pids = {n: p.proc.pid for n, p in c.nodes.items() if p.proc is not None}
        self.t0 = time.monotonic()
        self.c0 = {n: cpu_seconds(pid) for n, pid in self.pids.items()}

    def percent(self) -> dict[str, float]:
        dt = time.monotonic() - self.t0
        return {n: 100.0 * (cpu_seconds(pid) - self.c0[n]) / dt for n, pid in self.pids.items()}


async def call(kv: AsyncClient, addr: str, method: str, *params: Any) -> Any:
    return await kv.rpc.call(addr, method, list(params), 30.0)


async def load(c: LocalCluster, keys: list[bytes], concurrency: int = 400) -> float:
    t0 = time.perf_counter()
    async with AsyncClient(c.addrs()) as kv:
        sem = asyncio.Semaphore(concurrency)

        async def put(k: bytes) -> None:
            async with sem:
                await kv.put(k, b"v0-" + k, w=3)

        await asyncio.gather(*(put(k) for k in keys))
    return time.perf_counter() - t0


async def diverge(c: LocalCluster, keys: list[bytes], node: str, concurrency: int = 200) -> None:
    addr = c.nodes[node].addr
    async with AsyncClient([addr], route=False) as kv:
        sem = asyncio.Semaphore(concurrency)

        async def one(k: bytes) -> None:
            p = partition_of(k, Q)
            async with sem:
                rec = await call(kv, addr, m.REPLICA_GET, p, k)
                old = vclock.decode(bytes(rec)) if rec is not None else None
                new = vclock.update(old, old.vv if old else {}, b"v1-" + k, "bench", time.time_ns() // 1_000_000)
                await call(kv, addr, "replica.put", p, k, vclock.encode(new), None)

        await asyncio.gather(*(one(k) for k in keys))


async def snapshot(c: LocalCluster) -> dict[str, Any]:
    """Roots and anti-entropy status of every node."""
    out: dict[str, Any] = {}
    async with AsyncClient(c.addrs(), route=False) as kv:
        for n, node in c.nodes.items():
            out[n] = {
                "roots": await call(kv, node.addr, "aae.roots", list(range(Q))),
                "status": await call(kv, node.addr, "aae.status"),
            }
    return out


def agreed(s: dict[str, Any]) -> bool:
    rs = [v["roots"] for v in s.values()]
    return all(None not in r for r in rs) and all(r == rs[0] for r in rs)


def total(s: dict[str, Any], field: str) -> int:
    return sum(int(v["status"][field]) for v in s.values())


def wait_agreed(c: LocalCluster, timeout: float) -> tuple[float, dict[str, Any]]:
    t0 = time.monotonic()
    box: dict[str, Any] = {}

    def ok() -> bool:
        box["s"] = asyncio.run(snapshot(c))
        return agreed(box["s"])

    wait_until(ok, timeout, 0.05, "every root to agree")
    return time.monotonic() - t0, box["s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--diverge-pct", type=float, default=1.0)
    ap.add_argument("--interval-s", type=float, default=1.0)
    ap.add_argument("--exchanges-per-min", type=int, default=6000)
    ap.add_argument("--repairs-per-s", type=int, default=2000)
    ap.add_argument("--idle-s", type=float, default=5.0)
    ap.add_argument("--timeout-s", type=float, default=600.0)
    args = ap.parse_args()

    flags = [
        "--aae-interval-s", str(args.interval_s),
        "--aae-exchanges-per-min", str(args.exchanges_per_min),
        "--aae-max-repairs-per-s", str(args.repairs_per_s),
        "--fsync", "no",
    ]
    keys = [f"bench-{i:08d}".encode() for i in range(args.keys)]
    rng = random.Random(7)
    bad = rng.sample(keys, max(1, int(len(keys) * args.diverge_pct / 100)))
    rows: list[tuple[str, str]] = []

    with tempfile.TemporaryDirectory() as tmp, LocalCluster(Path(tmp), nodes=3, extra=flags) as c:
        c.start_all()
        dt = asyncio.run(load(c, keys))
        rows.append(("load (W=3)", f"{len(keys)} keys in {dt:.1f} s ({len(keys) / dt:,.0f} puts/s)"))
        dt, _ = wait_agreed(c, args.timeout_s)
        rows.append(("first agreement after load", f"{dt:.2f} s"))

        c.kill("n3")
        t0 = time.monotonic()
        c.start("n3")
        serving = time.monotonic() - t0

        def built() -> bool:
            st = c.status("n3") or {}
            return bool(st.get("aae")) and st["aae"]["trees_building"] == 0

        wait_until(built, args.timeout_s, 0.02, "n3's trees")
        rows.append(("n3 restart (no snapshot)", f"serving after {serving:.2f} s, trees built after {time.monotonic() - t0:.2f} s"))
        wait_agreed(c, args.timeout_s)

        before = asyncio.run(snapshot(c))
        asyncio.run(diverge(c, bad, "n1"))
        meter = CpuMeter(c)
        t0 = time.monotonic()
        dt, after = wait_agreed(c, args.timeout_s)
        cpu = meter.percent()
        repaired = total(after, "keys_repaired") - total(before, "keys_repaired")
        compared = total(after, "keys_compared") - total(before, "keys_compared")
        covered = total(after, "keys_covered") - total(before, "keys_covered")
        exchanges = total(after, "exchanges") - total(before, "exchanges")
        rows.append(("diverged on n1", f"{len(bad)} keys ({args.diverge_pct}%)"))
        rows.append(("repair time (all roots agree)", f"{dt:.2f} s"))
        rows.append(("exchanges started", f"{exchanges}"))
        rows.append(("keys repaired (counted)", f"{repaired}"))
        rows.append(("leaf keys compared", f"{compared} ({compared / dt:,.0f} keys/s)"))
        rows.append(("keys verified by root/subtree", f"{covered} ({covered / dt:,.0f} keys/s)"))
        rows.append(("CPU% during repair", ", ".join(f"{n} {v:.0f}%" for n, v in cpu.items())))

        meter = CpuMeter(c)
        s0 = asyncio.run(snapshot(c))
        time.sleep(args.idle_s)
        s1 = asyncio.run(snapshot(c))
        idle = meter.percent()
        dtv = args.idle_s
        rows.append(("CPU% idle, converged", ", ".join(f"{n} {v:.1f}%" for n, v in idle.items())))
        rows.append(("keys verified/s idle", f"{(total(s1, 'keys_covered') - total(s0, 'keys_covered')) / dtv:,.0f}"))
        ages = [v["status"]["agreement"]["max_s"] for v in s1.values()]
        rows.append(("max time since agreement", f"{max(a for a in ages if a is not None):.2f} s"))

    print(f"\nanti-entropy, 3 nodes, N=3, Q={Q}, {args.keys} keys; interval {args.interval_s} s, "
          f"{args.exchanges_per_min} exchanges/min, {args.repairs_per_s} repairs/s")
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")


if __name__ == "__main__":
    main()
