"""Restart time of one node's store: shared-memory snapshot vs LevelDB vs a bare iteration.

    python benchmarks/bench_restart.py [--keys 1000000] [--value-bytes 100] [--repeat 3]

Builds a store of --keys keys x --value-bytes random values in a temporary directory, then
times, each in a fresh child process (so peak RSS is that of one path alone):

    snapshot   Engine.open(..., snapshot_dir=, node_id=) after a graceful stop wrote one
    leveldb    Engine.open(...) with no snapshot: the whole table from LevelDB
    bare       a plain plyvel iteration over the data keys, building nothing (the floor)
    msgpack    msgpack.unpackb of the whole table from one file in the snapshot dir

Each row is the best of --repeat runs, with the peak RSS of that child. Targets: snapshot
>= 4x faster than leveldb, leveldb <= 3x bare. The snapshot goes to --shm-dir (default
/dev/shm) and is always removed, as is the temporary store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

NODE_ID = "bench-restart"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(mode: str, db: str, shm: str) -> dict[str, object]:
    from storage import Engine, write_snapshot  # after fork/exec, out of the timings

    if mode == "snapshot-write":
        e = Engine.open(db)
        info = write_snapshot(e, NODE_ID, shm)
        e.close_sync()
        return {"seconds": info.seconds, "file_mb": info.file_bytes / 1e6, "rss_mb": _rss_mb()}
    if mode in ("snapshot", "leveldb"):
        t0 = time.perf_counter()
        if mode == "snapshot":
            e = Engine.open(db, snapshot_dir=shm, node_id=NODE_ID)
        else:
            e = Engine.open(db)
        dt = time.perf_counter() - t0
        out = {"seconds": dt, "keys": e.count(), "path": e.load_stats.path, "rss_mb": _rss_mb()}
        out["reason"] = e.load_stats.reason
        e.close_sync()
        return out
    if mode == "bare":
        import plyvel

        t0 = time.perf_counter()
        d = plyvel.DB(db)
        n = 0
        for _ in d.iterator(prefix=b"d", fill_cache=False):
            n += 1
        dt = time.perf_counter() - t0
        d.close()
        return {"seconds": dt, "keys": n, "rss_mb": _rss_mb()}
    if mode == "msgpack-write":
        import msgpack
        import plyvel

        d = plyvel.DB(db)
        table = dict(d.iterator(prefix=b"d"))
        d.close()
        with open(os.path.join(shm, "bench-restart.msgpack"), "wb") as f:
            f.write(msgpack.packb(table, use_bin_type=True))
        return {}
    if mode == "msgpack":
        import msgpack

        t0 = time.perf_counter()
        with open(os.path.join(shm, "bench-restart.msgpack"), "rb") as f:
            table = msgpack.unpackb(f.read())
        dt = time.perf_counter() - t0
        return {"seconds": dt, "keys": len(table), "rss_mb": _rss_mb()}
    raise SystemExit(f"unknown mode {mode}")


def _run(mode: str, db: str, shm: str) -> dict[str, object]:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "_child", mode, db, shm],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": repo},
        timeout=600,
        check=False,
    )
    if r.returncode != 0:
        raise SystemExit(f"{mode} failed: {r.stderr}")
    result: dict[str, object] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


async def _build(db: str, keys: int, value_bytes: int, partitions: int) -> None:
    from storage import Engine

    e = Engine.open(db, fsync="no")
    step = 20_000
    for start in range(0, keys, step):
        e.write_many(
            (i % partitions, b"key%012d" % i, os.urandom(value_bytes))
            for i in range(start, min(start + step, keys))
        )
        await asyncio.sleep(0)
    await e.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print(json.dumps(_child(*sys.argv[2:5])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--partitions", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shm-dir", default="/dev/shm")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    tmp = tempfile.mkdtemp(prefix="kv-bench-restart-")
    shm = tempfile.mkdtemp(prefix="kv-bench-restart-", dir=args.shm_dir)
    db = os.path.join(tmp, "db")
    try:
        t0 = time.perf_counter()
        asyncio.run(_build(db, args.keys, args.value_bytes, args.partitions))
        print(
            f"store: {args.keys} keys x {args.value_bytes} B values, {args.partitions} "
            f"partitions, built in {time.perf_counter() - t0:.1f} s"
        )
        _run("msgpack-write", db, shm)
        rows: dict[str, list[dict[str, object]]] = {}
        writes = []
        for _ in range(args.repeat):
            writes.append(_run("snapshot-write", db, shm))
            for mode in ("snapshot", "leveldb", "bare", "msgpack"):
                rows.setdefault(mode, []).append(_run(mode, db, shm))
        for r in rows["snapshot"]:
            if r["path"] != "snapshot":
                raise SystemExit(f"snapshot not used: {r['reason']}")
        w = min(writes, key=lambda r: float(r["seconds"]))  # type: ignore[arg-type]
        print(f"snapshot write (graceful stop): {w['seconds']:.3f} s, {w['file_mb']:.0f} MB file")
        best = {m: min(rs, key=lambda r: float(r["seconds"])) for m, rs in rows.items()}  # type: ignore[arg-type]
        lvl = float(best["leveldb"]["seconds"])  # type: ignore[arg-type]
        print(f"{'open via':<10} {'seconds':>8} {'peak RSS MB':>12} {'leveldb / this':>15}")
        for mode in ("snapshot", "leveldb", "bare", "msgpack"):
            r = best[mode]
            s = float(r["seconds"])  # type: ignore[arg-type]
            print(f"{mode:<10} {s:>8.3f} {float(r['rss_mb']):>12.0f} {lvl / s:>15.2f}")  # type: ignore[arg-type]
        snap = float(best["snapshot"]["seconds"])  # type: ignore[arg-type]
        bare = float(best["bare"]["seconds"])  # type: ignore[arg-type]
        print(
            f"snapshot is {lvl / snap:.2f}x faster than leveldb (target >= 4); "
            f"leveldb is {lvl / bare:.2f}x a bare iteration (target <= 3)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    main()
