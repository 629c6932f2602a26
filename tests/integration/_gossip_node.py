"""One gossip-only node for the integration tests: the msgpack-RPC server (for push-pull)
and the UDP gossip on the same port number. It writes its membership view as JSON to
--state-file (atomically, every few tens of milliseconds) so the test can watch it, and
leaves gracefully on SIGTERM when --leave-on-term is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kvstore.core.membership import SwimConfig
from kvstore.runtime.gossip import Gossip, push_pull_via, rpc_handlers
from kvstore.runtime.rpc import RpcClient, RpcServer


def write_state(path: Path, gossip: Gossip) -> None:
    doc = {
        "name": gossip.name,
        "pid": os.getpid(),
        "time": time.time(),
        "members": [
            {
                "name": m.name,
                "addr": m.addr,
                "state": m.state.value,
                "incarnation": m.incarnation,
                "damped": m.damped,
                "penalty": m.penalty,
                "restarting": m.restarting,
                "awareness": m.awareness,
                "meta": {k: v for k, v in m.meta.items() if not isinstance(v, bytes)},
            }
            for m in gossip.members()
        ],
        "stats": gossip.stats,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


async def main(args: argparse.Namespace) -> None:
    period = args.period
    cfg = SwimConfig(
        probe_interval_s=period,
        probe_timeout_s=period / 2,
        push_pull_interval_s=args.push_pull,
        gossip_interval_s=period / 2,
        lifeguard=not args.no_lifeguard,
    )
    addr = f"127.0.0.1:{args.port}"
    client = RpcClient(connect_timeout_s=0.5, reconnect_min_s=0.05, reconnect_max_s=0.5)
    gossip = Gossip(
        cfg,
        args.name,
        addr,
        addr,
        random.Random(),
        push_pull_via(client, timeout_s=2.0),
        meta={"ring_version": 1},
    )
    server = RpcServer(rpc_handlers(gossip))
    await server.start("127.0.0.1", args.port)
    await gossip.start()
    state = Path(args.state_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    seeds = [s for s in args.seeds.split(",") if s]
    deadline = loop.time() + 30
    while seeds and not stop.is_set() and loop.time() < deadline:
        if await gossip.join(seeds) > 0:
            break
        await asyncio.sleep(0.1)

    while not stop.is_set():
        write_state(state, gossip)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)

    if args.leave_on_term:
        await gossip.leave()
    write_state(state, gossip)
    await gossip.stop()
    await server.close()
    await client.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seeds", default="")
    p.add_argument("--state-file", required=True)
    p.add_argument("--period", type=float, default=0.2)
    p.add_argument("--push-pull", type=float, default=2.0)
    p.add_argument("--no-lifeguard", action="store_true")
    p.add_argument("--leave-on-term", action="store_true")
    asyncio.run(main(p.parse_args()))
