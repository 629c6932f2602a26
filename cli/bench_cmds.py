"""``kv bench``: throughput and latency of a running cluster, side by side with a reference.

    kv bench                                   # put then get, 4 conns x 64 in flight, 3 s each
    kv --node 127.0.0.1:7000,127.0.0.1:7001 bench --ops get --conns 8 --window 16 --json

Every number is printed next to the same load against a reference in the same run: a bare
msgpack-RPC dict server (the project's ``RpcServer`` with sync ``put``/``get`` on a dict, no
replication, no storage). The machine, its load and the load generator are the same for both,
so the **ratio** (cluster ops/s / reference ops/s) is what to read; absolute figures move with
whatever else the machine is doing.

Processes (so that the CLI's own CPU does not distort either figure):

- the load generator, ``python -m cli.bench_cmds load SPEC`` (one per point): kvstore.testing.load,
  C connections x W requests in flight spread round-robin over the ``--node`` addresses; it
  prints one JSON line: ops/s of successful replies, error replies, p50/p99/p999, its own CPU %.
- the reference server, ``python -m cli.bench_cmds serve`` on a free loopback port.

Both get byte-identical requests, the node's public API: ``put [key, value, None, {}]`` and
``get [key, {}]``. Keys are ``kvbench:NNNNNNNN`` (a namespace of their own, never a user's
key), drawn from ``--keys`` with a fixed seed, so the get point reads what the put point wrote.
Puts carry no context: on a cluster with ``conflict = siblings`` each one adds a sibling
to its key, as any blind write does, so repeated runs grow those keys (``conflict = lww``,
or a throwaway cluster, keeps them at one value).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any, NoReturn

import click

from cli import output as out
from kvstore.config import parse_addr
from kvstore.errors import ConfigError, KVError

DEFAULT_NODE = "127.0.0.1:7000"
# Slack on top of warm + secs before a silent child is given up on.
CHILD_GRACE_S = 30.0
# Above this the generator, not the server, may be what limits the figure.
SATURATED_CPU_PCT = 90.0


# --------------------------------------------------------------------------- children


def _serve(keys: int, value_bytes: int) -> None:
    """The reference: RpcServer with sync dict handlers taking the node's parameters.

    It starts holding every key the generator can ask for (the keys of the pre-packed
    requests), so its gets always find a value: the cluster's hit rate is shown next to it.
    """
    from kvstore.runtime.rpc import RpcServer, run
    from kvstore.testing.load import request_keys

    value = b"x" * value_bytes
    store = dict.fromkeys(request_keys(keys), value)

    def put(key: bytes, value: bytes, context: Any, opts: Any) -> bool:
        store[key] = value
        return True

    def get(key: bytes, opts: Any) -> bytes | None:
        return store.get(key)

    async def main() -> None:
        server = RpcServer({"put": put, "get": get})
        await server.start("127.0.0.1", 0)
        print("ready", server.port, flush=True)
        await asyncio.Event().wait()

    run(main(), loop="auto")


def _child_main(argv: list[str]) -> None:
    from kvstore.testing.processes import die_with_parent

    die_with_parent()  # a `kv bench` killed outright leaves no generator or server behind
    if argv[:1] == ["serve"] and len(argv) == 3:
        _serve(int(argv[1]), int(argv[2]))
    elif argv[:1] == ["load"] and len(argv) == 2:
        from kvstore.testing.load import LoadSpec, measure

        print(json.dumps(measure(LoadSpec.from_doc(json.loads(argv[1])))), flush=True)
    else:
        sys.exit(
            "usage: python -m cli.bench_cmds serve KEYS VALUE_BYTES | load SPEC_JSON (kv bench)"
        )


# --------------------------------------------------------------------------- parent


class _Failed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _spawn(args: list[str], stdout: int) -> subprocess.Popen[str]:
    # A session of their own: Ctrl-C reaches only `kv bench`, which then stops them itself
    # (so no child prints a KeyboardInterrupt traceback on its way out).
    return subprocess.Popen(
        [sys.executable, "-m", "cli.bench_cmds", *args],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE if stdout == subprocess.PIPE else subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def _stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for f in (p.stdout, p.stderr):
        if f is not None:
            f.close()


def _start_reference(
    keys: int, value_bytes: int, timeout_s: float = 30.0
) -> tuple[subprocess.Popen[str], int]:
    import selectors

    p = _spawn(["serve", str(keys), str(value_bytes)], subprocess.PIPE)
    assert p.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                line = p.stdout.readline()
                if line.startswith("ready "):
                    return p, int(line.split()[1])
                if not line:
                    break
            elif p.poll() is not None:
                break
    finally:
        sel.close()
    err = p.stderr.read().strip().splitlines()[-1:] if p.stderr and p.poll() is not None else []
    _stop(p)
    raise _Failed(f"the reference server did not start{': ' + err[0] if err else ''}", 1)


class _Progress:
    """Which point runs and for how long, on stderr (stdout stays for the table or JSON)."""

    def __init__(self, total: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.total = total
        self.i = 0

    @contextlib.contextmanager
    def point(self, label: str) -> Iterator[Any]:
        self.i += 1
        head = f"[{self.i}/{self.total}] {label}"
        t0 = time.monotonic()
        if self.console.is_terminal:
            with self.console.status(head) as status:
                yield lambda: status.update(f"{head}  {time.monotonic() - t0:.1f} s")
        else:
            self.console.print(f"kv bench: {head} …")
            yield lambda: None
        self.elapsed = time.monotonic() - t0

    def done(self, r: dict[str, Any]) -> None:
        err = f", {r['errors']:,} errors" if r["errors"] else ""
        self.console.print(
            f"kv bench: [{self.i}/{self.total}] {r['ops_s']:,} ops/s, p50 {_dur(r['p50_us'])}, "
            f"p99 {_dur(r['p99_us'])}{err} ({self.elapsed:.1f} s)"
        )


def _run_point(spec: dict[str, Any], progress: _Progress, label: str) -> dict[str, Any]:
    p = _spawn(["load", json.dumps(spec)], subprocess.PIPE)
    try:
        limit = (
            time.monotonic()
            + spec["warm"]
            + spec["secs"]
            + spec["connect_timeout_s"]
            + CHILD_GRACE_S
        )
        with progress.point(label) as tick:
            while True:
                try:
                    # communicate() can be called again after a timeout without losing output.
                    stdout, stderr = p.communicate(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    tick()
                    if time.monotonic() > limit:
                        raise _Failed(f"the load generator did not finish ({label})", 1) from None
    finally:
        _stop(p)
    lines = stdout.strip().splitlines()
    try:
        r: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = stderr.strip().splitlines()[-1:] or [f"exit status {p.returncode}"]
        raise _Failed(f"the load generator failed ({label}): {tail[0]}", 1) from None
    if "error" in r:
        raise _Failed(r["error"], out.EXIT_UNAVAILABLE if r.get("unreachable") else 1)
    progress.done(r)
    return r


def _ping(addrs: list[str], timeout: float) -> None:
    """Fail early, and in one line, when a node does not answer."""
    from cli.remote import call_once

    try:
        for a in addrs:
            asyncio.run(call_once(a, "ping", [], timeout))
    except KVError as e:
        out.fail_for(e)


def _dur(us: float) -> str:
    # Three significant figures at most: the table has six latencies per row.
    if us < 1000:
        return f"{us:.0f} µs"
    ms = us / 1000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:,.0f} ms"


def _lat(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    return f"{_dur(r['p50_us'])} / {_dur(r['p99_us'])} / {_dur(r['p999_us'])}"


def _print_table(doc: dict[str, Any]) -> None:
    from rich.table import Table

    p = doc["params"]
    t = Table(
        title=f"kv bench: {', '.join(doc['nodes'])} vs a bare msgpack-RPC dict server, same run",
        caption=(
            f"{p['secs']} s per point after {p['warm']} s warm-up; {p['keys']:,} keys, "
            f"{p['value_bytes']} B values. ratio = cluster ops/s ÷ reference ops/s."
        ),
    )
    t.add_column("op", no_wrap=True)
    t.add_column("load", justify="right", no_wrap=True)
    t.add_column("ops/s cluster / reference", justify="right", no_wrap=True)
    t.add_column("ratio", justify="right", no_wrap=True)
    t.add_column("cluster p50 / p99 / p999", justify="right", no_wrap=True)
    t.add_column("reference p50 / p99 / p999", justify="right", no_wrap=True)
    t.add_column("errors", justify="right", no_wrap=True)
    notes: list[str] = []
    for row in doc["rows"]:
        c, r = row["cluster"], row["reference"]
        ops = f"{c['ops_s']:,} / {r['ops_s']:,}" if r else f"{c['ops_s']:,} / -"
        ratio = (
            "-" if row["ratio"] is None else f"{row['ratio']:.{2 if row['ratio'] >= 0.1 else 3}f}"
        )
        t.add_row(row["op"], row["load"], ops, ratio, _lat(c), _lat(r), f"{c['errors']:,}")
        if c["errors"]:
            notes.append(f"{row['op']}: {c['errors']:,} error replies, first: {c['first_error']}")
        for who, x in (("cluster", c), ("reference", r)):
            if x and x["hit_pct"] is not None and x["hit_pct"] < 100:
                notes.append(f"{row['op']} {who}: {x['hit_pct']}% of gets found a value")
            if x and (x["values_per_hit"] or 0) > 1:
                notes.append(
                    f"{row['op']} {who}: {x['values_per_hit']} values per get found: puts without "
                    "a context (this run's and earlier ones') left siblings on the kvbench: keys"
                )
            if x and (x["client_cpu_pct"] or 0) >= SATURATED_CPU_PCT:
                notes.append(
                    f"{row['op']} {who}: the load generator used {x['client_cpu_pct']}% of a core, "
                    "so it may be what limits this figure"
                )
    # Not a terminal (a pipe, a file): wide enough that no column is cut.
    console = out.console()
    console.print(t)
    for n in notes:
        console.print(f"  note: {n}", highlight=False)


def _compare(ctx: click.Context, secs: float, warm: float, as_json: bool) -> NoReturn:
    """``kv bench --compare``: run benchmarks/bench_throughput.py from the source tree (it starts
    every system itself, so --node does not apply) and exit with its status."""
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_throughput.py"
    if not script.exists():
        out.fail(f"--compare needs the source tree: {script} not found", out.EXIT_USAGE)
    args = [sys.executable, str(script)]
    for name, value in (("secs", secs), ("warm", warm)):
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            args += [f"--{name}", str(value)]
    if as_json:
        args.append("--json")
    try:
        code = subprocess.call(args)
    except KeyboardInterrupt:
        out.fail("interrupted", 130)
    sys.exit(code)


def _raise_interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


@click.command()
@click.option(
    "--ops", default="put,get", show_default=True, help="Points to run, in order: put, get or both."
)
@click.option(
    "--conns",
    default=4,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Connections (spread over the --node addresses).",
)
@click.option(
    "--window",
    default=64,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Requests in flight per connection.",
)
@click.option(
    "--secs",
    default=3.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Measured seconds per point.",
)
@click.option(
    "--warm",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 600),
    help="Warm-up seconds per point (not measured).",
)
@click.option(
    "--keys",
    default=100_000,
    show_default=True,
    type=click.IntRange(1, 10**8),
    help="Key space (keys kvbench:00000000 ...).",
)
@click.option(
    "--value-bytes",
    default=100,
    show_default=True,
    type=click.IntRange(0, 1024 * 1024),
    help="Size of each put's value.",
)
@click.option(
    "--reference/--no-reference",
    default=True,
    show_default=True,
    help="Also drive a bare msgpack-RPC dict server in this run.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option(
    "--compare",
    is_flag=True,
    help="Run issue 13's side-by-side benchmark instead (benchmarks/bench_throughput.py: its own "
    "kvstore 1- and 3-node clusters, the shared reference and ceiling, redis); --secs, --warm "
    "and --json are passed on when given.",
)
@click.pass_context
def bench(
    ctx: click.Context,
    ops: str,
    conns: int,
    window: int,
    secs: float,
    warm: float,
    keys: int,
    value_bytes: int,
    reference: bool,
    as_json: bool,
    compare: bool,
) -> None:
    """Measure the cluster's put/get throughput and latency next to a reference.

    C connections x W requests in flight from a separate load-generator process, first
    against --node, then against a bare msgpack-RPC dict server started for this run: read
    the ratio, not the absolute figures. Writes keys kvbench:NNNNNNNN (puts without a context,
    so on a `conflict = siblings` cluster repeated runs add siblings to them).
    """
    if compare:
        _compare(ctx, secs, warm, as_json)
    obj = ctx.obj or {}
    nodes: str = obj.get("nodes") or os.environ.get("KV_NODES") or DEFAULT_NODE
    timeout: float = obj.get("timeout") or 5.0
    op_list = [o.strip() for o in ops.split(",") if o.strip()]
    if not op_list or any(o not in ("put", "get") for o in op_list):
        out.fail(f"--ops {ops!r}: expected put, get or put,get", out.EXIT_USAGE)
    addrs = [a.strip() for a in nodes.split(",") if a.strip()]
    try:
        for a in addrs:
            parse_addr(a)
    except ConfigError as e:
        out.fail(str(e), out.EXIT_USAGE)
    if not addrs:
        out.fail("no node to benchmark (--node HOST:PORT)", out.EXIT_USAGE)

    base = {
        "conns": conns, "window": window, "secs": secs, "warm": warm, "keys": keys,
        "value_bytes": value_bytes, "connect_timeout_s": timeout,
    }  # fmt: skip
    load = f"{conns}x{window}"
    progress = _Progress(len(op_list) * (2 if reference else 1))
    ref: subprocess.Popen[str] | None = None
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    rows: list[dict[str, Any]] = []
    try:
        _ping(addrs, timeout)
        if reference:
            ref, ref_port = _start_reference(keys, value_bytes)
        for op in op_list:
            c = _run_point({**base, "op": op, "addrs": addrs}, progress, f"{op} {load} → cluster")
            r = None
            if ref is not None:
                r = _run_point(
                    {**base, "op": op, "addrs": [f"127.0.0.1:{ref_port}"], "server_pid": ref.pid},
                    progress,
                    f"{op} {load} → reference",
                )
            ratio = round(c["ops_s"] / r["ops_s"], 3) if r and r["ops_s"] else None
            rows.append({"op": op, "load": load, "cluster": c, "reference": r, "ratio": ratio})
    except _Failed as e:
        out.fail(str(e), e.code)
    except KeyboardInterrupt:
        out.fail("interrupted", 130)
    finally:
        if ref is not None:
            _stop(ref)
        signal.signal(signal.SIGTERM, old_term)

    doc = {"nodes": addrs, "params": {**base, "ops": op_list}, "rows": rows}
    if as_json:
        out.print_json(doc)
    else:
        _print_table(doc)
    # A point where every request failed measured nothing: say so in the exit status too.
    dead = [row for row in rows if row["cluster"]["n"] == 0]
    if dead:
        c = dead[0]["cluster"]
        why = f": {c['first_error']}" if c["first_error"] else " (no reply in time)"
        out.fail(f"no {dead[0]['op']} succeeded{why}", out.EXIT_UNAVAILABLE)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
