"""Reproduction: two puts carrying the same context, sent at the same time through one
coordinator, must both survive as siblings (conflict = siblings). Exit 1 if any is lost.

    .venv/bin/python jepsen-lite/repro/concurrent_puts.py [--rounds 20] [--port 17100]

Starts its own 3-node cluster (`kv cluster up`) in a temporary folder and stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvstore.client import AsyncClient


async def race(addr: str, rounds: int) -> int:
    a = AsyncClient([addr], route=False)
    b = AsyncClient([addr], route=False)
    lost = 0
    try:
        for i in range(rounds):
            key = f"race-{i}-{time.monotonic_ns()}"
            await a.put(key, b"base")
            seen = await a.get(key)
            await asyncio.gather(a.put(key, b"x", context=seen.context), b.put(key, b"y", context=seen.context))
            after = sorted((await a.get(key, r=3)).values)
            if after != [b"x", b"y"]:
                lost += 1
                print(f"round {i}: expected siblings [b'x', b'y'], read {after}")
    finally:
        await a.close()
        await b.close()
    return lost


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--port", type=int, default=17100)
    args = ap.parse_args()
    kv = str(Path(sys.executable).parent / "kv")
    with tempfile.TemporaryDirectory() as tmp:
        Path(f"{tmp}/shm").mkdir()
        up = subprocess.Popen([kv, "cluster", "up", "--nodes", "3", "--port", str(args.port), "--data-dir", tmp,
                               "--log-dir", f"{tmp}/logs", "--set", f"snapshot_dir={tmp}/shm"], stdout=subprocess.PIPE, text=True)
        try:
            addr = f"127.0.0.1:{args.port}"
            assert up.stdout is not None
            for line in up.stdout:  # `kv cluster up` prints "ready" once every node serves
                if line.strip() == "ready":
                    break
            else:
                raise SystemExit("the cluster never became ready")
            lost = asyncio.run(race(addr, args.rounds))
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=60)
    print(f"{lost} of {args.rounds} rounds lost a sibling")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
