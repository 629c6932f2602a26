"""Transport benchmark: kvstore's msgpack-RPC server against the reference server, side by side.

    python benchmarks/bench_transport.py                 # project vs reference, dict handlers
    python benchmarks/bench_transport.py --target 127.0.0.1:7000 --ceiling
                                                         # a running node vs the 3-node ceiling

Both servers run as separate processes and are driven, one after the other for each load
point, by the same load generator (this file's ``load`` subcommand, a separate process),
so the only difference between two rows is the server. The machine is shared and noisy: read
the ratio column, not the absolute figures. Each point runs for ``--secs`` after ``--warm``.

Subcommands used internally (each prints one line):
    serve --port 0            the project's RpcServer with dict put/get, prints "ready PORT"
    load --port P --op put    kvstore.testing.load, the generator of `kv bench`: C connections
                              x W in flight (or --conns 1 --window 1: one blocking socket,
                              strictly one request at a time), prints one JSON line
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VALUE = b"x" * 100  # what the load generator puts
PREFILL = 100_000
KEY_FMT = "%016d"  # the served store holds KEY_FMT % i for every i below PREFILL


# --------------------------------------------------------------------------- serve


def serve(port: int, loop_kind: str, handlers: str = "sync") -> None:
    sys.path.insert(0, str(REPO))
    from kvstore.runtime.rpc import RpcServer, run

    store: dict[bytes, bytes] = {KEY_FMT.encode() % i: VALUE for i in range(PREFILL)}

    def put(k: bytes, v: bytes) -> bool:
        store[k] = v
        return True

    get = store.get

    async def aput(k: bytes, v: bytes) -> bool:
        store[k] = v
        return True

    async def aget(k: bytes) -> bytes | None:
        return store.get(k)

    def done(result: Any) -> asyncio.Future[Any]:
        f = asyncio.get_running_loop().create_future()
        f.set_result(result)
        return f

    def fput(k: bytes, v: bytes) -> asyncio.Future[Any]:
        store[k] = v
        return done(True)

    def fget(k: bytes) -> asyncio.Future[Any]:
        return done(store.get(k))

    table: dict[str, Any] = {"put": put, "get": get}
    if handlers == "async":  # the cost of a task per request, as coordinating handlers pay
        table = {"put": aput, "get": aget}
    elif handlers == "future":  # the cost of replying through a future's done callback
        table = {"put": fput, "get": fget}

    async def main() -> None:
        server = RpcServer(table)
        await server.start("127.0.0.1", port)
        print(
            "ready", server.port, loop_kind, type(asyncio.get_running_loop()).__module__, flush=True
        )
        await asyncio.Event().wait()

    run(main(), loop=loop_kind)


# --------------------------------------------------------------------------- load


def load(args: argparse.Namespace) -> None:
    """One point, through kvstore.testing.load (the generator `kv bench` uses too), or
    through kvstore's RpcClient with --driver rpcclient."""
    sys.path.insert(0, str(REPO))
    from kvstore.testing.load import LoadSpec, measure

    spec = LoadSpec(
        args.op, (f"{args.host}:{args.port}",), conns=args.conns, window=args.window,
        secs=args.secs, warm=args.warm, keys=args.keyspace, value_bytes=len(VALUE),
        key_fmt=KEY_FMT, seed=args.seed, node_api=args.proto == "node", server_pid=args.spid,
    )  # fmt: skip
    if args.driver == "rpcclient":
        from kvstore.runtime.rpc import run

        r = run(_load_rpcclient(spec), loop="uvloop")
    else:
        r = measure(spec)
    if "error" in r:
        raise SystemExit(r["error"])
    print(json.dumps({"op": args.op, "conns": args.conns, "window": args.window, **r}), flush=True)


async def _load_rpcclient(spec: Any) -> dict[str, Any]:
    """The same load through kvstore's RpcClient: conns pooled connections, conns x window
    concurrent callers, so its cost per call can be read against the raw generator's."""
    from kvstore.runtime.rpc import RpcClient
    from kvstore.testing.load import NPRE, Measurement, request_keys

    keys = request_keys(spec.keys, spec.key_fmt, spec.seed)
    extra: list[Any] = ([None, {}] if spec.op == "put" else [{}]) if spec.node_api else []
    client = RpcClient(conns_per_peer=spec.conns)
    addr = spec.addrs[0]
    meas = Measurement(spec.op == "get", spec.server_pid)
    stop = False
    pc = time.perf_counter
    op = spec.op

    async def caller(base: int) -> None:
        i = base
        while not stop:
            k = keys[i % NPRE]
            i += 1
            params = [k, VALUE, *extra] if op == "put" else [k, *extra]
            t0 = pc()
            try:
                res = await client.call(addr, op, params, 10.0)
            except Exception as e:
                if meas.measuring:
                    meas.failed(e)
            else:
                if meas.measuring:
                    meas.ok(pc() - t0, res)

    callers = [asyncio.create_task(caller(c * 997)) for c in range(spec.conns * spec.window)]
    await asyncio.sleep(spec.warm)
    meas.start()
    await asyncio.sleep(spec.secs)
    meas.stop()
    stop = True
    await asyncio.gather(*callers)
    await client.close()
    return meas.result()


# --------------------------------------------------------------------------- compare

POINTS: list[tuple[str, int, int]] = [
    ("put", 4, 64),
    ("get", 4, 64),
    ("put", 50, 1),
    ("get", 50, 1),
    ("put", 1, 1),
    ("get", 1, 1),
]


def _free_port() -> int:
    sys.path.insert(0, str(REPO))
    from kvstore.testing.processes import free_port

    return free_port()


def _start(
    cmd: Sequence[str], what: str, timeout_s: float = 30.0
) -> tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO
    )
    assert p.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if line.startswith("ready"):
            return p, line.strip()
        if not line and p.poll() is not None:
            break
    p.kill()
    raise SystemExit(f"{what} did not start: {' '.join(cmd)}")


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _drive(
    args: argparse.Namespace,
    port: int,
    pid: int,
    op: str,
    conns: int,
    window: int,
    proto: str,
    host: str = "127.0.0.1",
    driver: str = "raw",
) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "load",
        "--host", host, "--port", str(port), "--op", op,
        "--conns", str(conns), "--window", str(window),
        "--secs", str(args.secs), "--warm", str(args.warm),
        "--proto", proto, "--spid", str(pid), "--driver", driver,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.secs + args.warm + 60)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed: {out.stderr.strip()[-2000:]}")
    r: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return r


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    runs = sorted(runs, key=lambda r: r["ops_s"])
    return runs[len(runs) // 2]


def _table(
    title: str,
    a_name: str,
    b_name: str,
    rows: list[tuple[str, dict[str, Any], dict[str, Any]]],
    cpu_key: str = "server_cpu_pct",
) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    t.add_column("load")
    t.add_column(f"{a_name} ops/s", justify="right")
    t.add_column(f"{b_name} ops/s", justify="right")
    t.add_column("ratio", justify="right")
    t.add_column("ratio/CPU", justify="right")
    t.add_column(f"{a_name} p50/p99/p999 µs", justify="right")
    t.add_column(f"{b_name} p50/p99/p999 µs", justify="right")

    def lat(r: dict[str, Any]) -> str:
        s = f"{r['p50_us']:.0f}/{r['p99_us']:.0f}/{r['p999_us']:.0f}"
        return s + (f" ({r['errors']} err)" if r.get("errors") else "")

    for label, a, b in rows:
        ratio = a["ops_s"] / b["ops_s"] if b["ops_s"] else float("nan")
        # Throughput per second of CPU (of the server, or of the client when comparing
        # clients): steadier than ops/s when the box is busy.
        per_cpu = "-"
        if a.get(cpu_key) and b.get(cpu_key):
            per_cpu = f"{(a['ops_s'] / a[cpu_key]) / (b['ops_s'] / b[cpu_key]):.2f}"
        t.add_row(
            label, f"{a['ops_s']:,}", f"{b['ops_s']:,}", f"{ratio:.2f}", per_cpu, lat(a), lat(b)
        )
    Console(width=max(Console().width, 120)).print(t)


def _label(op: str, conns: int, window: int) -> str:
    return f"{op} {conns}x{window}" if (conns, window) != (1, 1) else f"{op} 1 in flight"


def compare(args: argparse.Namespace) -> None:
    ref_dir = Path(args.ref_dir).resolve()
    ref_script = ref_dir / "reference_server.py"
    if not ref_script.exists():
        raise SystemExit(f"reference server not found: {ref_script} (use --ref-dir)")
    procs: list[subprocess.Popen[str]] = []
    try:
        proj, line = _start(
            [
                sys.executable,
                __file__,
                "serve",
                "--port",
                "0",
                "--loop",
                args.loop,
                "--handlers",
                args.handlers,
            ],
            "project server",
        )
        procs.append(proj)
        proj_port = int(line.split()[1])
        ref_port = _free_port()
        ref, _ = _start(
            [sys.executable, str(ref_script), "--loop", args.loop, "--port", str(ref_port)],
            "reference server",
        )
        procs.append(ref)
        rows = []
        for op, conns, window in _points(args):
            pr: list[dict[str, Any]] = []
            rr: list[dict[str, Any]] = []
            for _ in range(args.repeat):  # interleaved, so drift on the box hits both alike
                pr.append(_drive(args, proj_port, proj.pid, op, conns, window, "simple"))
                rr.append(_drive(args, ref_port, ref.pid, op, conns, window, "simple"))
            p, r = _median(pr), _median(rr)
            rows.append((_label(op, conns, window), p, r))
            if args.json:
                print(
                    json.dumps({"load": _label(op, conns, window), "project": p, "reference": r}),
                    flush=True,
                )
        _table(
            f"kvstore RpcServer ({args.handlers} handlers) vs reference_server.py ({args.loop}, median of {args.repeat})",
            "project",
            "reference",
            rows,
        )
        if args.client:
            crows = []
            for op, conns, window in _points(args):
                cr: list[dict[str, Any]] = []
                rw: list[dict[str, Any]] = []
                for _ in range(args.repeat):
                    cr.append(
                        _drive(
                            args,
                            proj_port,
                            proj.pid,
                            op,
                            conns,
                            window,
                            "simple",
                            driver="rpcclient",
                        )
                    )
                    rw.append(_drive(args, proj_port, proj.pid, op, conns, window, "simple"))
                c, w = _median(cr), _median(rw)
                crows.append((_label(op, conns, window), c, w))
                if args.json:
                    print(
                        json.dumps({"load": _label(op, conns, window), "rpcclient": c, "raw": w}),
                        flush=True,
                    )
            _table(
                f"kvstore RpcClient vs the raw load generator, both against RpcServer (median of {args.repeat}; ratio/CPU is per client CPU)",
                "RpcClient",
                "raw",
                crows,
                cpu_key="client_cpu_pct",
            )
    finally:
        _stop(procs)


def target(args: argparse.Namespace) -> None:
    host, _, port_s = args.target.rpartition(":")
    port = int(port_s)
    procs: list[subprocess.Popen[str]] = []
    try:
        ceiling_port = 0
        if args.ceiling:
            script = Path(args.ref_dir).resolve() / "quorum_ceiling_node.py"
            ports = [_free_port() for _ in range(3)]
            for i, p in enumerate(ports):
                peers = ",".join(str(q) for j, q in enumerate(ports) if j != i)
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(script), "--port", str(p), "--peers", peers, "--loop", args.loop],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                    )
                )  # fmt: skip
            for p_ in procs:
                assert p_.stdout is not None
                if not p_.stdout.readline().startswith("ready"):
                    raise SystemExit("quorum ceiling node did not start")
            ceiling_port = ports[0]
        rows = []
        for op, conns, window in _points(args):
            t = _median(
                [_drive(args, port, 0, op, conns, window, "node", host) for _ in range(args.repeat)]
            )
            c = (
                _median(
                    [
                        _drive(args, ceiling_port, 0, op, conns, window, "simple")
                        for _ in range(args.repeat)
                    ]
                )
                if ceiling_port
                else {"ops_s": 0, "p50_us": 0, "p99_us": 0, "p999_us": 0}
            )
            rows.append((_label(op, conns, window), t, c))
            if args.json:
                print(
                    json.dumps({"load": _label(op, conns, window), "target": t, "ceiling": c}),
                    flush=True,
                )
        _table(
            f"{args.target} vs 3-node quorum ceiling (median of {args.repeat})",
            "target",
            "ceiling",
            rows,
        )
    finally:
        _stop(procs)


def _points(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    pts = POINTS
    if args.ops:
        pts = [p for p in pts if p[0] in args.ops.split(",")]
    if args.loads:
        want = set(args.loads.split(","))
        pts = [p for p in pts if f"{p[1]}x{p[2]}" in want]
    return pts


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd")
    sp = sub.add_parser("serve")
    sp.add_argument("--port", type=int, default=0)
    sp.add_argument("--loop", default="uvloop")
    sp.add_argument("--handlers", choices=("sync", "async", "future"), default="sync")
    lp = sub.add_parser("load")
    lp.add_argument("--host", default="127.0.0.1")
    lp.add_argument("--port", type=int, required=True)
    lp.add_argument("--op", choices=("put", "get"), default="put")
    lp.add_argument("--conns", type=int, default=4)
    lp.add_argument("--window", type=int, default=64)
    lp.add_argument("--secs", type=float, default=2.0)
    lp.add_argument("--warm", type=float, default=0.5)
    lp.add_argument("--keyspace", type=int, default=PREFILL)
    lp.add_argument("--seed", type=int, default=1)
    lp.add_argument("--proto", choices=("simple", "node"), default="simple")
    lp.add_argument("--spid", type=int, default=0)
    lp.add_argument("--driver", choices=("raw", "rpcclient"), default="raw")
    for p in (ap,):
        p.add_argument(
            "--ref-dir",
            default=str(REPO.parent / "shared" / "perf"),
            help="folder of reference_server.py",
        )
        p.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
        p.add_argument("--secs", type=float, default=2.0, help="measured seconds per point")
        p.add_argument("--warm", type=float, default=0.5, help="warm-up seconds per point")
        p.add_argument(
            "--handlers",
            choices=("sync", "async", "future"),
            default="sync",
            help="project server's handler kind",
        )
        p.add_argument("--repeat", type=int, default=1, help="runs per point (median reported)")
        p.add_argument("--ops", default="", help="e.g. put or put,get (default both)")
        p.add_argument("--loads", default="", help="e.g. 4x64,50x1,1x1 (default all)")
        p.add_argument("--target", default="", help="HOST:PORT of a running kvstore node to drive")
        p.add_argument(
            "--ceiling",
            action="store_true",
            help="with --target: compare with the 3-node quorum ceiling",
        )
        p.add_argument("--json", action="store_true", help="also print one JSON line per point")
        p.add_argument(
            "--client",
            action="store_true",
            help="also drive RpcServer with RpcClient (client cost)",
        )
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        serve(args.port, args.loop, args.handlers)
    elif args.cmd == "load":
        load(args)
    elif args.target:
        target(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
