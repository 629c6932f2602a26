"""``kv cluster``: start a local cluster, and look at a running one."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli import output as out
from cli.options import after_options, json_option, nodes_of
from cli.remote import call_once
from kvstore.config import LOCAL_TIMINGS, node_flags
from kvstore.core import messages as m
from kvstore.core.zones import parse_zones
from kvstore.errors import KVError
from kvstore.testing.processes import die_with_parent


def _status(addr: str, timeout: float = 1.0) -> dict[str, Any] | None:
    try:
        return asyncio.run(call_once(addr, m.STATUS, [], timeout))  # type: ignore[no-any-return]
    except KVError:
        return None


def _why(log_dir: str | None, name: str) -> str:
    """The node's own account of a failed start, from its log, for a one-line error."""
    if not log_dir:
        return ""
    path = Path(log_dir) / f"{name}.log"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if "failed to start:" in line:
            return ": " + line.split("failed to start:", 1)[1].strip()
    return f" (see {path})"


def _http_port(first: int | None, i: int) -> int:
    """Node ``i``'s dashboard port: ``first + i`` as asked, else one the OS says is free.
    (A fixed default such as PORT+1000 would take ports that other local clusters, tests
    among them, picked as free for their RPC.) `make run` asks for 8000."""
    if first is not None:
        return first + i if first else 0
    from kvstore.testing.processes import free_port

    return free_port("127.0.0.1")


@click.group()
def cluster() -> None:
    """Start a local cluster, or inspect a running one."""


@cluster.command()
@click.option("--nodes", "count", default=3, show_default=True, type=click.IntRange(1, 64), help="How many nodes.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address every node listens on.")
@click.option("--port", default=7000, show_default=True, type=click.IntRange(1, 65535), help="First node's port; the others follow.")
@click.option("--data-dir", default="./kvdata", show_default=True, type=click.Path(file_okay=False), help="Each node keeps its store in DATA_DIR/nNAME.")
@click.option("--n-replicas", default=None, type=int, help="N (default: min(3, nodes)).")
@click.option("--ready-timeout", default=60.0, show_default=True, help="Seconds to wait for every node to serve.")
@click.option("--log-dir", default=None, type=click.Path(file_okay=False), help="Each node logs to LOG_DIR/NAME.log [default: DATA_DIR/logs]; '-' logs to this terminal.")
@click.option("--set", "extra", multiple=True, metavar="FLAG=VALUE", help="Pass a setting to every node, e.g. --set fsync=always.")
@click.option("--http-port", default=None, type=click.IntRange(0, 65535), help="First node's metrics/dashboard HTTP port (on 127.0.0.1); the others follow. 0: none. [default: a free port for each]")
@click.option("--zones", "zone_list", default=None, metavar="A,B,C", help="Put the nodes in these zones, round-robin (n1 in A, n2 in B, ...).")
def up(count: int, host: str, port: int, data_dir: str, n_replicas: int | None, ready_timeout: float, log_dir: str | None, extra: tuple[str, ...], http_port: int | None, zone_list: str | None) -> None:
    """Start COUNT nodes on HOST:PORT, PORT+1, ... and stay in the foreground.

    Prints a line per node, then `ready`. Ctrl-C or SIGTERM stops every node gracefully.
    Starting again with the same --data-dir brings every key back.
    """
    zones: tuple[str, ...] = ()
    if zone_list is not None:
        try:
            zones = parse_zones(zone_list)
        except ValueError as e:
            out.fail(f"--zones: {e}", out.EXIT_USAGE)
    n = n_replicas or min(3, count)
    r = w = min(2, n) if n > 1 else 1
    base = Path(data_dir)
    base.mkdir(parents=True, exist_ok=True)
    if log_dir is None:
        log_dir = str(base / "logs")
    if log_dir == "-":
        log_dir = None
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    first = f"{host}:{port}"
    procs: list[tuple[str, str, subprocess.Popen[bytes]]] = []
    stopping = False

    def stop_all(*_: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        click.echo("stopping every node ...", err=True)
        for _name, _addr, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for name, _addr, p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                click.echo(f"{name} did not stop in time; killing it", err=True)
                p.kill()
                p.wait()

    def on_signal(*_: Any) -> None:
        stop_all()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    for i in range(count):
        name = f"n{i + 1}"
        addr = f"{host}:{port + i}"
        cmd = [
            sys.executable, "-m", "cli", "node", "start",
            "--name", name, "--listen", addr, "--data-dir", str(base / name),
            "--n-replicas", str(n), "--r", str(r), "--w", str(w), *node_flags(LOCAL_TIMINGS),
        ]
        if i > 0:
            cmd += ["--seed", first]
        web = _http_port(http_port, i)
        if web:
            cmd += ["--http-port", str(web)]
        if zones:
            cmd += ["--zone", zones[i % len(zones)]]
        for kv in extra:
            k, sep, v = kv.partition("=")
            if not sep:
                out.fail(f"--set {kv!r}: expected FLAG=VALUE", out.EXIT_USAGE)
            cmd += [f"--{k.replace('_', '-')}", v]
        stderr: Any = None
        if log_dir:
            stderr = open(Path(log_dir) / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the node
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=stderr, start_new_session=True, preexec_fn=die_with_parent)
        procs.append((name, addr, p))
        where = f"  log {Path(log_dir) / (name + '.log')}" if log_dir else ""
        if web:
            where += f"  dashboard http://127.0.0.1:{web}/"
        zone = f"  zone {zones[i % len(zones)]}" if zones else ""
        click.echo(f"{name}  {addr}{zone}  data {base / name}  pid {p.pid}{where}")

    deadline = time.monotonic() + ready_timeout
    waiting = {name: addr for name, addr, _ in procs}
    pids = {name: p.pid for name, _, p in procs}
    while waiting:
        for name, addr, p in procs:
            if p.poll() is not None:
                stop_all()
                out.fail(f"node {name} ({addr}) exited with status {p.returncode} during start{_why(log_dir, name)}", 1)
        for name, addr in list(waiting.items()):
            st = _status(addr)
            # The pid check: another cluster already on these ports must not count as ours.
            if st is not None and st.get("pid") == pids[name] and len(st["members"]) >= count and not st["pending"]:
                waiting.pop(name)
        if waiting and time.monotonic() > deadline:
            stop_all()
            out.fail(f"not ready after {ready_timeout:.0f}s: {', '.join(sorted(waiting))}", out.EXIT_UNAVAILABLE)
        if waiting:
            time.sleep(0.1)
    click.echo("ready", err=False)
    sys.stdout.flush()
    while True:
        for name, addr, p in procs:
            if p.poll() is not None and not stopping:
                click.echo(f"kv: node {name} ({addr}) exited with status {p.returncode}", err=True)
                procs.remove((name, addr, p))
                break
        if not procs:
            sys.exit(1)
        time.sleep(0.5)


async def _gather(addrs: list[str], timeout: float) -> dict[str, Any]:
    """One look at the cluster: the first reachable node's status, then every member's own
    status and handoff progress, asked at once over one client."""
    from kvstore.runtime.rpc import RpcClient
    from kvstore.runtime.security import client_options

    rpc = RpcClient(connect_timeout_s=min(1.0, timeout), **client_options())
    try:
        first = None
        err: KVError | None = None
        for a in addrs:
            try:
                first = await rpc.call(a, m.STATUS, [], timeout)
                break
            except KVError as e:
                err = e
        if first is None:
            assert err is not None
            raise err

        async def ask(addr: str, method: str) -> Any:
            try:
                return await rpc.call(addr, method, [], timeout)
            except KVError:
                return None

        members = first["members"]
        statuses = await asyncio.gather(
            *(ask(mem["addr"], m.STATUS) if mem["name"] != first["node"] else asyncio.sleep(0, first) for mem in members)
        )
        handoffs = await asyncio.gather(*(ask(mem["addr"], m.HANDOFF_STATUS) for mem in members))
        return {
            "first": first,
            "nodes": {mem["name"]: st for mem, st in zip(members, statuses, strict=True)},
            "transfers": {mem["name"]: h for mem, h in zip(members, handoffs, strict=True)},
        }
    finally:
        await rpc.close()


def _snapshot(ctx: click.Context) -> dict[str, Any]:
    try:
        return asyncio.run(_gather(nodes_of(ctx), float(ctx.obj["timeout"])))
    except KVError as e:
        out.fail_for(e)


def _json_doc(snap: dict[str, Any]) -> dict[str, Any]:
    first = snap["first"]
    return {
        "ring_version": first["ring_version"], "nodes": snap["nodes"], "view_of": first["node"],
        "members": first["members"], "transfers": snap["transfers"],
    }


BAR_CELLS = 20


def _transfer_cell(h: dict[str, Any] | None) -> str:
    """Handoff progress of one node: a bar of partitions pulled while a ring change runs."""
    if h is None or not h.get("pending"):
        return "-"
    needed, done = int(h.get("needed", 0)), int(h.get("done", 0))
    if needed < 0:
        return "starting"
    label = f"{done}/{needed} partitions, {h.get('keys_moved', 0)} keys" + (" (done)" if h.get("complete") else "")
    if needed == 0:
        return label
    filled = min(BAR_CELLS, round(BAR_CELLS * done / needed))
    return "█" * filled + "░" * (BAR_CELLS - filled) + " " + label


def render_status(snap: dict[str, Any]) -> Any:
    """The status table (members, liveness, partitions, keys, hints pending per target,
    handoff progress) as a rich renderable, for `status` and `watch` alike."""
    from rich.table import Table

    first = snap["first"]
    per_node: dict[str, dict[str, Any] | None] = snap["nodes"]
    transfers: dict[str, dict[str, Any] | None] = snap["transfers"]
    nxt = next((h["version"] for h in transfers.values() if h and h.get("pending")), None)
    pending = f"  ring change to v{nxt} running" if nxt is not None or first.get("pending") else ""
    zones = first.get("zones") or []
    spread = f"  zones {','.join(zones)}" if len(zones) > 1 else ""
    cluster = f"cluster {first['cluster']}  " if first.get("cluster") else ""
    t = Table(title=f"{cluster}ring v{first['ring_version']}  N={first['n']} R={first['r']} W={first['w']}{spread}  (as seen by {first['node']}){pending}")
    right = ("inc", "health", "partitions", "keys")
    for col in ("node", "address", "zone", "state", "inc", "health", "damping", "partitions", "keys", "hints pending", "transfer"):
        t.add_column(col, justify="right" if col in right else "left", no_wrap=col == "transfer")
    for mem in first["members"]:
        st = per_node.get(mem["name"])
        state = mem.get("state", "unknown")
        if mem.get("restarting"):
            state += " (restarting)"
        if st is None:
            state += ", unreachable"
        damping = "damped" if mem.get("damped") else ""
        if mem.get("penalty"):
            damping = f"{damping} {mem['penalty']:.1f}".strip()
        health = mem.get("health")
        parts = str(mem["partitions"])
        if mem.get("next_partitions") is not None and mem["next_partitions"] != mem["partitions"]:
            parts += f" -> {mem['next_partitions']}"
        if st is None:
            hints_cell = "-"
        else:
            by_target = st.get("hints") or {}
            hints_cell = ", ".join(f"{k}: {v}" for k, v in sorted(by_target.items())) or "0"
        t.add_row(
            mem["name"], mem["addr"], str(mem.get("zone", "-")), state, str(mem.get("incarnation", "-")),
            "-" if health is None else str(health), damping or "-", parts,
            str(st["keys"]) if st else "-", hints_cell, _transfer_cell(transfers.get(mem["name"])),
        )
    return t


@cluster.command()
@json_option("Print the status of every reachable node, and its transfers, as JSON.")
@after_options
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Members, their address and liveness, partitions owned, keys held, hints pending for
    each peer, and a progress bar per node while a ring change hands partitions off."""
    snap = _snapshot(ctx)
    if as_json:
        out.print_json(_json_doc(snap))
        return
    out.console().print(render_status(snap))


@cluster.command()
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds between refreshes.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many refreshes (default: until Ctrl-C).")
@after_options
@click.pass_context
def watch(ctx: click.Context, interval: float, count: int | None) -> None:
    """`kv cluster status`, live: redrawn every --interval seconds until Ctrl-C (or --count
    refreshes). A node that stops answering shows as unreachable; if none answers, the last
    view stays with a line saying so, and the watch goes on."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    addrs = nodes_of(ctx)
    timeout = min(float(ctx.obj["timeout"]), max(interval, 1.0))
    last: Any = Text("waiting for the first answer ...")
    shown = 0
    # Ctrl-C raises KeyboardInterrupt wherever it lands, as before Python 3.11. asyncio.run's
    # own handler only cancels the look in progress, and 3.11's wait_for swallows a
    # cancellation that meets a connect just finished: that look then returns normally and
    # the watch went on (CI saw it ignore SIGINT for a minute). asyncio.run keeps a handler
    # that is not the default one.
    before = signal.signal(signal.SIGINT, _interrupt)
    # Raised inside one of a look's tasks, the KeyboardInterrupt also stays in that task, and
    # asyncio logs it with a traceback ("Task exception was never retrieved") when the task
    # is collected: noise after a clean stop, so not shown.
    quiet = _NoInterrupts()
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addFilter(quiet)
    try:
        with Live(last, console=out.console(), auto_refresh=False, transient=False) as live:
            while count is None or shown < count:
                t0 = time.monotonic()
                try:
                    last = render_status(asyncio.run(_gather(addrs, timeout)))
                    live.update(Group(last, Text(time.strftime("updated %H:%M:%S  (Ctrl-C to stop)"))), refresh=True)
                except KVError as e:
                    live.update(Group(last, Text(f"no node answers: {e}", style="red")), refresh=True)
                shown += 1
                if count is not None and shown >= count:
                    break
                time.sleep(max(0.0, interval - (time.monotonic() - t0)))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, before)
        gc.collect()  # such a task sits in a cycle: collected (and quieted) here, not at exit
        asyncio_log.removeFilter(quiet)
    if not sys.stdout.isatty():
        click.echo()  # rich leaves the last line open when the output is not a terminal


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


class _NoInterrupts(logging.Filter):
    """Drops log records that carry a KeyboardInterrupt (see watch)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info
        return not (exc and exc[0] is not None and issubclass(exc[0], KeyboardInterrupt))


def _first_reachable(ctx: click.Context) -> tuple[str, dict[str, Any]]:
    err: KVError | None = None
    for a in nodes_of(ctx):
        try:
            return a, asyncio.run(call_once(a, m.RING, [], ctx.obj["timeout"]))
        except KVError as e:
            err = e
    assert err is not None
    out.fail_for(err)


@cluster.command()
@click.argument("new_node", metavar="HOST:PORT")
@after_options
@click.pass_context
def join(ctx: click.Context, new_node: str) -> None:
    """Add the node listening at HOST:PORT to the cluster of --node.

    Ownership moves to it in the background (see `kv cluster transfers`); reads keep
    following the old owners until every partition has been handed off.
    """
    timeout = ctx.obj["timeout"]
    try:
        info = asyncio.run(call_once(new_node, "ping", [], timeout))
    except KVError as e:
        out.fail(f"cannot reach the new node: {e}", out.exit_code_for(e))
    via, _ = _first_reachable(ctx)
    try:
        # The new node's own zone (a node that predates zones says none: the default).
        doc = asyncio.run(call_once(via, m.JOIN, [info["node"], info["addr"], 0, info.get("zone")], timeout))
    except KVError as e:
        out.fail_for(e)
    nxt = doc.get("next")
    click.echo(f"{info['node']} joining: ring change to v{nxt['version'] if nxt else '?'} started")


@cluster.command()
@click.argument("node_name", metavar="NODE")
@after_options
@click.pass_context
def leave(ctx: click.Context, node_name: str) -> None:
    """Hand NODE's partitions to the others; it exits once they are all handed off.

    NODE is a member name (as in `kv cluster status`) or its HOST:PORT.
    """
    via, doc = _first_reachable(ctx)
    addrs = {str(k): str(v) for k, v in doc["addrs"].items()}
    name = next((n for n, a in addrs.items() if a == node_name), node_name)
    try:
        asyncio.run(call_once(via, m.LEAVE, [name], ctx.obj["timeout"]))
    except KVError as e:
        out.fail_for(e)
    click.echo(f"{name} leaving: its partitions are being handed off")


@cluster.command()
@json_option("Print each member's transfer status as JSON.")
@after_options
@click.pass_context
def transfers(ctx: click.Context, as_json: bool) -> None:
    """Progress of ownership handoff for a pending ring change."""
    _, doc = _first_reachable(ctx)
    addrs = {str(k): str(v) for k, v in doc["addrs"].items()}
    names = sorted(addrs)
    rows: dict[str, dict[str, Any] | None] = {}
    for n in names:
        try:
            rows[n] = asyncio.run(call_once(addrs[n], m.HANDOFF_STATUS, [], ctx.obj["timeout"]))
        except KVError:
            rows[n] = None
    if as_json:
        out.print_json(rows)
        return
    if doc.get("next") is None:
        click.echo(f"no ring change pending (ring v{doc['ring']['version']})")
        return
    from rich.table import Table

    t = Table(title=f"ring change to v{doc['next']['version']}")
    for col in ("node", "partitions to pull", "done", "keys moved", "complete"):
        t.add_column(col)
    for n in names:
        st = rows[n]
        if st is None:
            t.add_row(n, "-", "-", "-", "unreachable")
        else:
            t.add_row(n, str(st["needed"]), str(st["done"]), str(st["keys_moved"]), "yes" if st["complete"] else "no")
    out.console().print(t)


@cluster.command()
@json_option("Print each member's hint store as JSON.")
@after_options
@click.pass_context
def hints(ctx: click.Context, as_json: bool) -> None:
    """Hints each node holds for peers that were down (hinted handoff)."""
    _, doc = _first_reachable(ctx)
    addrs = {str(k): str(v) for k, v in doc["addrs"].items()}
    rows: dict[str, dict[str, Any] | None] = {}
    for n in sorted(addrs):
        try:
            rows[n] = asyncio.run(call_once(addrs[n], m.HINTS, [], ctx.obj["timeout"]))
        except KVError:
            rows[n] = None
    if as_json:
        out.print_json(rows)
        return
    from rich.table import Table

    t = Table(title="hinted handoff")
    cols = ("stored", "delivered", "refused_full", "refused_invalid", "rerouted", "expired")
    for col in ("node", "pending (per target)", "stored", "delivered", "refused (full)", "refused (invalid)", "rerouted", "expired"):
        t.add_column(col)
    for n, st in rows.items():
        if st is None:
            t.add_row(n, "unreachable", *("-" for _ in cols))
            continue
        pending = ", ".join(f"{k}: {v}" for k, v in st["pending"].items()) or "none"
        t.add_row(n, pending, *(str(st.get(c, "-")) for c in cols))
    out.console().print(t)


@cluster.command("rolling-restart")
@click.option("--node-timeout", default=120.0, show_default=True, help="Seconds each node may take to come back.")
@after_options
@click.pass_context
def rolling_restart(ctx: click.Context, node_timeout: float) -> None:
    """Restart every node in turn, each only after the previous one is back.

    A node counts as back when it serves again (a new boot id), every other node sees it
    up, and the hints held for it while it was away have been delivered. Stops and reports
    if a node does not come back.
    """
    _, doc = _first_reachable(ctx)
    addrs = {str(k): str(v) for k, v in doc["addrs"].items()}
    ring_members = doc["ring"]["nodes"] if "nodes" in doc["ring"] else sorted(addrs)
    names = [n for n in sorted(addrs) if n in ring_members]
    timeout = ctx.obj["timeout"]

    async def ask(addr: str, method: str) -> Any:
        return await call_once(addr, method, [], min(timeout, 2.0))

    async def back(name: str, old_boot: str) -> str | None:
        """None when the node is fully back, else what is still awaited."""
        try:
            ping = await ask(addrs[name], "ping")
        except KVError:
            return "serving"
        if ping["boot"] == old_boot:
            return "restart"
        for other in names:
            if other == name:
                continue
            try:
                st = await ask(addrs[other], m.STATUS)
                hints_for = (await ask(addrs[other], m.HINTS))["pending"].get(name, 0)
            except KVError:
                return f"{other} to answer"
            mem = next((x for x in st["members"] if x["name"] == name), None)
            if mem is None or not mem["up"] or mem.get("state", "alive") != "alive":
                return f"{other} to see it alive"
            if hints_for:
                return f"{other} to deliver {hints_for} hints"
        return None

    async def go() -> None:
        for i, name in enumerate(names, 1):
            click.echo(f"[{i}/{len(names)}] restarting {name} ({addrs[name]}) ...")
            t0 = time.monotonic()
            before = await ask(addrs[name], m.RESTART)
            waiting: str | None = "restart"
            while waiting is not None:
                if time.monotonic() - t0 > node_timeout:
                    out.fail(f"{name} is not back after {node_timeout:.0f}s (waiting for {waiting}); stopping here", out.EXIT_UNAVAILABLE)
                await asyncio.sleep(0.2)
                waiting = await back(name, before["boot"])
            click.echo(f"[{i}/{len(names)}] {name} back in {time.monotonic() - t0:.1f}s")
        click.echo(f"rolling restart done: {len(names)} nodes")

    try:
        asyncio.run(go())
    except KVError as e:
        out.fail_for(e)
