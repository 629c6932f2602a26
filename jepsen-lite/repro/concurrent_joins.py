"""Reproduction: nodes joining at the same time, each seeded with every other node, must all
end up in the ring and keep running. Exit 1 if a node exits by itself or is left out.

    .venv/bin/python jepsen-lite/repro/concurrent_joins.py [--rounds 3] [--nodes 5]

Each round: n1 founds a ring; n2..nN start together, each with every other node as a seed
(so a join may go through a node that is itself still joining). Runs on 127.0.0.1 with free
ports in a temporary folder; every node is stopped at the end of the round.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kvstore.config import LOCAL_TIMINGS, node_flags
from kvstore.errors import KVError
from kvstore.runtime.rpc import RpcClient


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def status(addr: str) -> dict[str, Any] | None:
    rpc = RpcClient(connect_timeout_s=1.0)
    try:
        doc = await rpc.call(addr, "cluster.status", [], 1.0)
        return doc if isinstance(doc, dict) else None
    except KVError:
        return None
    finally:
        await rpc.close()


def one_round(n: int, settle_s: float) -> list[str]:
    kv = str(Path(sys.executable).parent / "kv")
    addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        procs: list[subprocess.Popen[bytes]] = []
        Path(f"{tmp}/shm").mkdir()

        def start(i: int, seeds: list[str]) -> None:
            cmd = [kv, "node", "start", "--name", f"n{i + 1}", "--listen", addrs[i], "--data-dir", f"{tmp}/n{i + 1}",
                   *node_flags(LOCAL_TIMINGS), "--snapshot-dir", f"{tmp}/shm"]
            for s in seeds:
                cmd += ["--seed", s]
            log = open(f"{tmp}/n{i + 1}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True))

        try:
            start(0, [])
            deadline = time.monotonic() + 30
            while asyncio.run(status(addrs[0])) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            for i in range(1, n):
                start(i, [a for j, a in enumerate(addrs) if j != i])
            deadline = time.monotonic() + settle_s
            while time.monotonic() < deadline:
                time.sleep(0.5)
            for i, p in enumerate(procs):
                if p.poll() is not None:
                    tail = Path(f"{tmp}/n{i + 1}.log").read_text().splitlines()[-3:]
                    problems.append(f"n{i + 1} exited with status {p.returncode}: " + " | ".join(tail))
            st = asyncio.run(status(addrs[0]))
            members = sorted(m["name"] for m in (st or {}).get("members", []))
            if len(members) != n:
                problems.append(f"ring members seen by n1: {members}")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    return problems


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--settle", type=float, default=15.0)
    args = ap.parse_args()
    bad = 0
    for r in range(args.rounds):
        problems = one_round(args.nodes, args.settle)
        print(f"round {r}: " + ("ok" if not problems else "; ".join(problems)))
        bad += bool(problems)
    print(f"{bad} of {args.rounds} rounds went wrong")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
