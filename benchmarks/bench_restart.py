"""Restart of one node: shared-memory snapshot vs LevelDB, against a bare iteration.

    python benchmarks/bench_restart.py [--keys 1000000] [--value-bytes 100] [--repeat 2]

Times what an operator sees: ``kv node start`` of a 1-node cluster (N=R=W=1) whose store
holds --keys keys of --value-bytes random values, from the exec of the process to

    ping     the first successful ``ping`` (the RPC listener is up)
    get      the first successful ``get`` (R=1) of a stored key: serving
    warm     ``aae.status`` shows trees_building == 0 and a tree for every partition that
             holds data (anti-entropy can compare roots: the node is fully warm)

along two paths, alternated --repeat times in one run:

    snapshot   after a graceful stop (SIGTERM), which writes the shared-memory snapshot
               (the stop's duration, snapshot write included, is reported too)
    leveldb    after a SIGKILL: the snapshot was invalidated when loaded, so the node
               rebuilds its table (and then its Merkle trees) from LevelDB

plus, each in a fresh child process of the same run:

    bare       plyvel iteration over the data keyspace building nothing (the floor)
    empty      the same node command on an empty data directory (interpreter, imports,
               listener: the fixed cost every start pays)

and then the store alone, without the node around it, each in a fresh child (so its peak
RSS is that of one path alone), --repeat times:

    Engine.open via snapshot   after ``write_snapshot`` (whose time and file size are shown)
    Engine.open via leveldb    the whole table from LevelDB
    msgpack                    ``msgpack.unpackb`` of the whole table from one file in the
                               snapshot dir: what the snapshot format is measured against

The store is filled without the cluster: a child process writes the records (dotted version
vector objects, as the node's replicas store them) straight into the node's LevelDB with
``storage.engine.Engine.write_many``. Peak RSS is VmHWM from /proc/PID/status read just
before the node is stopped. The LevelDB files stay in the page cache throughout (the box has
the RAM), so "leveldb" is a warm-cache figure: a cold disk only makes it slower.

Issue targets: snapshot path serving in <= 1 s; >= 4x faster to fully warm than the LevelDB
path; LevelDB path <= 3x the bare iteration; Engine.open >= 4x faster from the snapshot. The snapshot goes to --shm-dir (default
/dev/shm) and is removed at the end, as is the temporary store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NODE = "n1"
ENGINE_ID = "bench-restart-engine"  # the engine rows' snapshot: never the node's own
MSGPACK_FILE = "bench-restart.msgpack"
PARTITIONS = 256
STEP_S = 0.005  # poll period while waiting for a milestone: fine enough, cheap enough


# ---------------------------------------------------------------------- child processes


def _child_build(db: str, keys: int, value_bytes: int) -> dict[str, Any]:
    """Fill ``db`` as a node's replica would have: one encoded object per key, its
    partition from the ring's hash. Runs in a child so the parent's heap stays small."""
    import asyncio

    from kvstore.core import vclock
    from kvstore.core.ring import partition_of
    from storage.engine import Engine

    async def fill() -> None:
        e = Engine.open(db, fsync="no")
        ts = time.time_ns() // 1_000_000
        actor = f"{NODE}~bench"
        rnd = random_bytes(value_bytes)
        step = 20_000
        for start in range(0, keys, step):
            ops = []
            for i in range(start, min(start + step, keys)):
                k = b"key%012d" % i
                obj = vclock.update(None, {}, rnd(), actor, ts)
                ops.append((partition_of(k, PARTITIONS), k, vclock.encode(obj)))
            await e.write_many(ops)
        parts.update(e.partitions())
        await e.close()

    parts: set[int] = set()
    t0 = time.perf_counter()
    asyncio.run(fill())
    return {"seconds": time.perf_counter() - t0, "partitions": len(parts)}


def random_bytes(n: int) -> Any:
    """Values from one big urandom buffer sliced at moving offsets (os.urandom per key would
    dominate the fill)."""
    pool = os.urandom(1 << 20)
    state = {"at": 0}

    def next_value() -> bytes:
        at = state["at"]
        if at + n > len(pool):
            at = (at % 97) + 1  # wrap with a shift, so values do not simply repeat
        state["at"] = at + n
        return pool[at : at + n]

    return next_value


def _child_bare(db: str) -> dict[str, Any]:
    import resource

    import plyvel

    t0 = time.perf_counter()
    d = plyvel.DB(db)
    n = 0
    for _ in d.iterator(prefix=b"d", fill_cache=False):
        n += 1
    dt = time.perf_counter() - t0
    d.close()
    return {
        "seconds": dt,
        "keys": n,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _child_engine(mode: str, db: str, shm: str) -> dict[str, Any]:
    """One open of the store alone (or the msgpack floor), timed in this fresh process."""
    import resource

    import msgpack

    from storage import Engine, write_snapshot

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    if mode == "snapshot-write":
        e = Engine.open(db)
        info = write_snapshot(e, ENGINE_ID, shm)
        e.close_sync()
        return {"seconds": info.seconds, "file_mb": info.file_bytes / 1e6}
    if mode == "msgpack-write":
        import plyvel

        d = plyvel.DB(db)
        table = dict(d.iterator(prefix=b"d"))
        d.close()
        with open(os.path.join(shm, MSGPACK_FILE), "wb") as fh:
            fh.write(msgpack.packb(table, use_bin_type=True))
        return {}
    t0 = time.perf_counter()
    if mode == "msgpack":
        with open(os.path.join(shm, MSGPACK_FILE), "rb") as f:
            n = len(msgpack.unpackb(f.read()))
        return {"seconds": time.perf_counter() - t0, "keys": n, "rss_mb": rss_mb()}
    if mode == "snapshot":
        e = Engine.open(db, snapshot_dir=shm, node_id=ENGINE_ID)
    else:
        e = Engine.open(db)
    dt = time.perf_counter() - t0
    out = {"seconds": dt, "keys": e.count(), "rss_mb": rss_mb(), "path": e.load_stats.path,
           "reason": e.load_stats.reason}  # fmt: skip
    e.close_sync()
    return out


def _run_child(*args: str) -> dict[str, Any]:
    r = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "_child", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=900,
        check=False,
    )
    if r.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{r.stderr}")
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------------- a tiny RPC client

# A bare blocking msgpack-RPC call: no client library, no ring fetch, nothing that could
# itself take time to warm up; a refused connection is simply "not yet".


def rpc(addr: str, method: str, params: list[Any], timeout: float = 5.0) -> Any:
    import msgpack

    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(msgpack.packb([0, 1, method, params], use_bin_type=True))
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            unpacker.feed(chunk)
            for msg in unpacker:
                if msg[0] == 1 and msg[1] == 1:
                    if msg[2] is not None:
                        raise RuntimeError(f"{method}: {msg[2]}")
                    return msg[3]


def try_rpc(addr: str, method: str, params: list[Any]) -> tuple[bool, Any]:
    try:
        return True, rpc(addr, method, params)
    except (OSError, RuntimeError):
        return False, None


# ---------------------------------------------------------------------- node runs


def free_port() -> int:
    from kvstore.testing.processes import free_port as fp

    return fp()


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS in kB from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmHWM:", "VmRSS:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


class NodeRun:
    def __init__(self, data: Path, shm: Path, logs: Path, fsync: str) -> None:
        self.data = data
        self.shm = shm
        self.logs = logs
        self.fsync = fsync
        self.addr = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None

    def cmd(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cli",
            "node",
            "start",
            "--name",
            NODE,
            "--listen",
            self.addr,
            "--data-dir",
            str(self.data),
            "--snapshot-dir",
            str(self.shm),
            "--n-replicas",
            "1",
            "--r",
            "1",
            "--w",
            "1",
            "--partitions",
            str(PARTITIONS),
            "--fsync",
            self.fsync,
        ]

    def start_and_time(
        self, probe_key: bytes | None, partitions_with_data: int, timeout: float = 600.0
    ) -> dict[str, Any]:
        """Exec the node and time its milestones (see the module doc)."""
        assert self.proc is None
        logf = open(self.logs, "ab")  # noqa: SIM115 - handed to the child
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.cmd(),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            cwd=str(REPO),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        logf.close()
        deadline = t0 + timeout
        out: dict[str, Any] = {}

        def wait(what: str, pred: Any) -> Any:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise SystemExit(
                        f"node exited ({self.proc.returncode}) waiting for {what}; log {self.logs}"
                    )
                v = pred()
                if v:
                    out[what] = time.perf_counter() - t0
                    return v
                if time.perf_counter() > deadline:
                    raise SystemExit(f"timed out waiting for {what}; log {self.logs}")
                time.sleep(STEP_S)

        wait("ping", lambda: try_rpc(self.addr, "ping", [])[0])

        def got() -> bool:
            if probe_key is None:
                return True
            ok, doc = try_rpc(self.addr, "get", [probe_key, {"r": 1}])
            return ok and bool(doc and doc.get("values"))

        wait("get", got)

        def warm() -> dict[str, Any] | None:
            ok, st = try_rpc(self.addr, "cluster.status", [])
            if not ok or not st.get("aae"):
                return None
            aae = st["aae"]
            if aae["trees_building"] == 0 and aae["trees"] >= partitions_with_data:
                return dict(st)
            return None

        st = wait("warm", warm)
        out["load_path"] = st["load"]["path"]
        out["load_reason"] = st["load"]["reason"]
        out["load_s"] = st["load"]["seconds"]
        out["keys"] = st["keys"]
        out["trees"] = st["aae"]["trees"]
        mem = proc_status(self.proc.pid)
        out["hwm_mb"] = mem["VmHWM"] / 1024
        out["rss_mb"] = mem["VmRSS"] / 1024
        return out

    def stop(self, sig: int) -> float:
        """Stop with ``sig`` and return how long the process took to exit."""
        assert self.proc is not None
        t0 = time.perf_counter()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise SystemExit(f"node did not stop on signal {sig}; log {self.logs}") from None
        dt = time.perf_counter() - t0
        if sig == signal.SIGTERM and self.proc.returncode != 0:
            raise SystemExit(f"graceful stop exited {self.proc.returncode}; log {self.logs}")
        self.proc = None
        return dt

    def kill_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------- report


def _fmt(rows: list[dict[str, Any]], key: str, digits: int = 2) -> str:
    vals = [r[key] for r in rows]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.median(vals):.{digits}f} ({min(vals):.{digits}f}-{max(vals):.{digits}f})"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        mode, *rest = sys.argv[2:]
        if mode == "build":
            res = _child_build(rest[0], int(rest[1]), int(rest[2]))
        elif mode == "bare":
            res = _child_bare(rest[0])
        elif mode == "engine":
            res = _child_engine(*rest)
        else:
            raise SystemExit(f"unknown child {mode}")
        print(json.dumps(res))
        return

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2, help="snapshot/leveldb start pairs")
    ap.add_argument("--fsync", default="everysec", help="the node's --fsync")
    ap.add_argument("--shm-dir", default="/dev/shm")
    ap.add_argument("--json", action="store_true", help="also print every run as a JSON line")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))

    tmp = Path(tempfile.mkdtemp(prefix="kv-bench-node-restart-"))
    shm = Path(tempfile.mkdtemp(prefix="kv-bench-node-restart-", dir=args.shm_dir))
    data = tmp / NODE
    node = NodeRun(data, shm, tmp / f"{NODE}.log", args.fsync)
    empty = NodeRun(tmp / "empty", tmp / "empty-shm", tmp / "empty.log", args.fsync)
    runs: dict[str, list[dict[str, Any]]] = {"snapshot": [], "leveldb": [], "bare": [], "empty": []}
    engine: dict[str, list[dict[str, Any]]] = {"snapshot-write": [], "snapshot": [], "leveldb": [], "msgpack": []}
    stops: list[float] = []
    try:
        built = _run_child("build", str(data), str(args.keys), str(args.value_bytes))
        db_mb = sum(f.stat().st_size for f in data.iterdir() if f.is_file()) / 1e6
        print(
            f"store: {args.keys:,} keys x {args.value_bytes} B values, {PARTITIONS} partitions, "
            f"LevelDB {db_mb:.0f} MB, filled in {built['seconds']:.1f} s"
        )
        probe = b"key%012d" % (args.keys // 2) if args.keys else None

        # The first start of a fresh store also mints the store id, the ring and an actor
        # epoch: reported apart, not mixed into the leveldb rows.
        first = node.start_and_time(probe, built["partitions"])
        runs["first"] = [first]
        stops.append(node.stop(signal.SIGTERM))
        for _ in range(args.repeat):
            runs["bare"].append(_run_child("bare", str(data)))
            r = node.start_and_time(probe, built["partitions"])
            runs["snapshot"].append(r)
            node.stop(signal.SIGKILL)
            r = node.start_and_time(probe, built["partitions"])
            runs["leveldb"].append(r)
            stops.append(node.stop(signal.SIGTERM))
            e = empty.start_and_time(None, 0)
            runs["empty"].append(e)
            empty.stop(signal.SIGKILL)
        for path in ("snapshot", "leveldb"):
            for r in runs[path]:
                if r["load_path"] != path:
                    raise SystemExit(
                        f"expected a {path} load, the node says {r['load_path']}: {r['load_reason']}"
                    )
        # The store alone, once the node is stopped (LevelDB admits one process at a time).
        _run_child("engine", "msgpack-write", str(data), str(shm))
        for _ in range(args.repeat):
            for mode in engine:
                engine[mode].append(_run_child("engine", mode, str(data), str(shm)))
        for path in ("snapshot", "leveldb"):
            for r in engine[path]:
                if r["path"] != path:
                    raise SystemExit(f"Engine.open: expected a {path} load, got {r['path']}: {r['reason']}")
    finally:
        node.kill_quietly()
        empty.kill_quietly()
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        for k, rs in runs.items():
            for r in rs:
                print(json.dumps({"path": k, **r}))
        for k, rs in engine.items():
            for r in rs:
                print(json.dumps({"path": f"engine {k}", **r}))

    snap, lvl, bare, emp = runs["snapshot"], runs["leveldb"], runs["bare"], runs["empty"]
    n = args.repeat
    print(
        f"\nnode start, {n} run(s) per path: median (min-max) seconds from exec; fsync {args.fsync}"
    )
    print(
        f"{'path':<22} {'ping':>18} {'get (serving)':>18} {'warm (trees)':>18} {'store load':>18} {'VmHWM MB':>18}"
    )
    for label, rs in (
        ("snapshot", snap),
        ("leveldb", lvl),
        ("first boot (leveldb)", runs["first"]),
        ("empty store", emp),
    ):
        hwm = _fmt(rs, "hwm_mb", 0)
        print(
            f"{label:<22} {_fmt(rs, 'ping'):>18} {_fmt(rs, 'get'):>18} {_fmt(rs, 'warm'):>18} "
            f"{_fmt(rs, 'load_s') if 'load_s' in rs[0] else '-':>18} {hwm:>18}"
        )
    print(
        f"{'bare plyvel iteration':<22} {'':>18} {'':>18} {'':>18} {_fmt(bare, 'seconds'):>18} {_fmt(bare, 'rss_mb', 0):>18}"
    )
    print(
        "graceful stop (SIGTERM to exit, snapshot written): "
        + ", ".join(f"{s:.2f}" for s in stops)
        + " s (first boot's stop first)"
    )

    print(f"\nthe store alone, {n} run(s) each: median (min-max) seconds in a fresh process")
    print(f"{'open via':<22} {'seconds':>18} {'peak RSS MB':>18}")
    for label, rs in (
        ("Engine.open snapshot", engine["snapshot"]),
        ("Engine.open leveldb", engine["leveldb"]),
        ("msgpack.unpackb", engine["msgpack"]),
        ("bare plyvel iteration", bare),
    ):
        print(f"{label:<22} {_fmt(rs, 'seconds', 3):>18} {_fmt(rs, 'rss_mb', 0):>18}")
    w = engine["snapshot-write"]
    print(f"snapshot write: {_fmt(w, 'seconds', 3)} s, {w[0]['file_mb']:.0f} MB file")

    med = statistics.median
    warm_ratio = med(r["warm"] for r in lvl) / med(r["warm"] for r in snap)
    serve_ratio = med(r["get"] for r in lvl) / med(r["get"] for r in snap)
    bare_s = med(r["seconds"] for r in bare)
    load_vs_bare = med(r["load_s"] for r in lvl) / bare_s
    serve_vs_bare = med(r["get"] for r in lvl) / bare_s
    warm_vs_bare = med(r["warm"] for r in lvl) / bare_s
    snap_serving = med(r["get"] for r in snap)
    open_ratio = med(r["seconds"] for r in engine["leveldb"]) / med(r["seconds"] for r in engine["snapshot"])
    open_vs_bare = med(r["seconds"] for r in engine["leveldb"]) / bare_s

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print("\nratios (medians)")
    print(f"  leveldb / snapshot, serving            {serve_ratio:6.2f}x")
    print(
        f"  leveldb / snapshot, fully warm         {warm_ratio:6.2f}x   target >= 4x: {verdict(warm_ratio >= 4)}"
    )
    print(
        f"  snapshot serving                       {snap_serving:6.2f} s   target <= 1 s: {verdict(snap_serving <= 1.0)}"
    )
    print(
        f"  leveldb store load / bare iteration    {load_vs_bare:6.2f}x   target <= 3x: {verdict(load_vs_bare <= 3)}"
    )
    print(
        f"  Engine.open leveldb / snapshot         {open_ratio:6.2f}x   target >= 4x: {verdict(open_ratio >= 4)}"
    )
    print(f"  Engine.open leveldb / bare iteration   {open_vs_bare:6.2f}x")
    print(f"  leveldb serving (from exec) / bare     {serve_vs_bare:6.2f}x")
    print(f"  leveldb fully warm (from exec) / bare  {warm_vs_bare:6.2f}x")
    print(
        f"  VmHWM leveldb / snapshot               {med(r['hwm_mb'] for r in lvl) / med(r['hwm_mb'] for r in snap):6.2f}x"
    )


if __name__ == "__main__":
    main()
