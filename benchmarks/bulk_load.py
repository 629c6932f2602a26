"""Bulk load: write many keys into a 3-node cluster through the client library, with a
progress bar, and print keys/s and the total time (issue 13: 1M keys in under a minute).

    python benchmarks/bulk_load.py                          # starts 3 nodes in a tmp dir, 1M keys
    python benchmarks/bulk_load.py --node 127.0.0.1:7000    # into a running cluster (`make run`)
    python benchmarks/bulk_load.py --keys 200000 --json     # one JSON line on stdout

``--concurrency`` puts are in flight at once, ``--batch`` keys per ``put_many`` call (asyncio
tasks on kvstore.client.AsyncClient, which pipelines the calls over its pooled connections);
the client groups each batch by the first node of each key's preference list, so the load is
spread over all nodes with no forwarding hop, and every key is still its own quorum write. Keys are
``bulk:NNNNNNNNNNN`` (16 bytes), values ``--value-bytes`` (100). A put that fails is counted
and not retried; ``--verify`` reads back that many keys at random afterwards. The load stops
after ``--max-secs`` whatever is left (every loop here is bounded in count and time).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cli.load_cmd import progress_bar  # noqa: E402
from kvstore.bulk import put_all  # noqa: E402
from kvstore.client import AsyncClient  # noqa: E402
from kvstore.runtime.rpc import run  # noqa: E402

KEY_FMT = b"bulk:%011d"
TARGET_S = 60.0  # issue 13: 1M keys into 3 nodes in under a minute
TARGET_KEYS = 1_000_000


async def load(nodes: list[str], a: argparse.Namespace) -> dict[str, Any]:
    value = b"v" * a.value_bytes
    t0 = time.perf_counter()
    c0 = time.process_time()
    async with AsyncClient(nodes, timeout_s=a.timeout) as kv:
        # kvstore.bulk.put_all and kv load's progress bar: the same loader as `kv load`.
        with progress_bar(a.keys, "bulk_load") as progress:
            done = await put_all(
                kv, ((KEY_FMT % i, value) for i in range(a.keys)), concurrency=a.concurrency, batch=a.batch,
                max_secs=a.max_secs, on_progress=progress,
            )
        secs = time.perf_counter() - t0
        cpu = time.process_time() - c0
        found = 0
        sample = random.Random(1).sample(range(done.written), min(a.verify, done.written)) if done.written else []
        for i in sample:
            r = await kv.get(KEY_FMT % i)
            found += r.found
    res: dict[str, Any] = {
        "keys": done.written, "asked": a.keys, "errors": done.failed, "first_error": done.first_error,
        "secs": round(secs, 2), "keys_per_s": round(done.written / secs) if secs else 0,
        # Near 100: this one client process, not the cluster, is what limits the rate.
        "client_cpu_pct": round(100 * cpu / secs, 1) if secs else None,
        "concurrency": a.concurrency, "batch": a.batch, "value_bytes": a.value_bytes, "nodes": nodes,
        "verified": len(sample), "verified_found": found, "stopped": done.stopped,
    }  # fmt: skip
    if a.keys >= TARGET_KEYS:
        res["target"] = {"wanted_s": TARGET_S, "pass": done.written == a.keys and secs < TARGET_S}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--node", default="", help="HOST:PORT,... of a running cluster (default: start 3 nodes)")
    ap.add_argument("--keys", type=int, default=TARGET_KEYS)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=512, help="puts in flight (batch x calls in flight)")
    ap.add_argument("--batch", type=int, default=64, help="keys per put_many call (1: a put_many call of one key each)")
    ap.add_argument(
        "--fsync", choices=("always", "everysec", "no"), default="everysec",
        help="fsync policy of the nodes this starts (default: the node's own default)",
    )
    ap.add_argument("--timeout", type=float, default=10.0, help="per-put timeout, seconds")
    ap.add_argument("--max-secs", type=float, default=900.0, help="stop loading after this long")
    ap.add_argument("--verify", type=int, default=200, help="keys read back afterwards")
    ap.add_argument("--json", action="store_true", help="one JSON line on stdout")
    a = ap.parse_args(argv)
    if a.batch < 1 or a.concurrency < 1:
        ap.error("--batch and --concurrency must be at least 1")
    root: Path | None = None
    cluster = None
    try:
        if a.node:
            nodes = [n.strip() for n in a.node.split(",") if n.strip()]
        else:
            from kvstore.testing.processes import LocalCluster

            root = Path(tempfile.mkdtemp(prefix="kv-bulk-"))
            print("bulk_load: starting a 3-node cluster (N3 R2 W2) in", root, file=sys.stderr)
            cluster = LocalCluster(root, nodes=3, extra=["--fsync", a.fsync])
            cluster.start_all()
            nodes = cluster.addrs()
        res = run(load(nodes, a), loop="auto")
    except KeyboardInterrupt:
        print("bulk_load: interrupted", file=sys.stderr)
        return 130
    finally:
        if cluster is not None:
            cluster.close()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    if a.json:
        print(json.dumps(res))
    else:
        err = f", {res['errors']:,} errors (first: {res['first_error']})" if res["errors"] else ""
        print(f"loaded {res['keys']:,} keys in {res['secs']:.1f} s = {res['keys_per_s']:,} keys/s "
              f"({a.concurrency} in flight, {len(nodes)} nodes, client CPU {res['client_cpu_pct']}%){err}; read back {res['verified_found']}"
              f"/{res['verified']}")  # fmt: skip
        if "target" in res:
            verdict = "PASS" if res["target"]["pass"] else "FAIL"
            print(f"target: {TARGET_KEYS:,} keys in < {TARGET_S:.0f} s: {verdict}")
    return 0 if not res["errors"] and res["verified_found"] == res["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
