"""``kv incr`` / ``kv add`` / ``kv remove`` / ``kv register`` / ``kv map`` / ``kv fetch``: the
convergent data types (kvstore.core.crdt). ``kv get`` of such a key prints its plain value too.

Registered on the ``kv`` group by :func:`register`, which cli.main calls once it has defined
the helpers these commands share with put and get.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from cli import output as out
from kvstore.client import DatatypeResult
from kvstore.core import crdt
from kvstore.core.crdt import State


def plain_json(v: Any) -> Any:
    """A plain value with bytes shown as text (JSON has no bytes)."""
    if isinstance(v, bytes):
        return out.show_bytes(v)
    if isinstance(v, list):
        return [plain_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain_json(x) for k, x in v.items()}
    return v


def echo_value(v: Any) -> None:
    """Counters as a number, sets one member a line, registers as the value, maps as JSON."""
    if isinstance(v, list):
        for x in v:
            click.echo(out.show_bytes(x))
    elif isinstance(v, dict):
        click.echo(json.dumps(plain_json(v), sort_keys=True))
    elif isinstance(v, bytes):
        click.echo(out.show_bytes(v))
    elif v is not None:
        click.echo(str(v))


def show(res: DatatypeResult, key: str, as_json: bool) -> None:
    if as_json:
        out.print_json({
            "key": key, "type": res.type, "found": res.found, "value": plain_json(res.value),
            "context": out.encode_context(res.context),
        })
    else:
        echo_value(res.value)


def merged_state(values: list[bytes]) -> State | None:
    """For ``kv get``: the merge of sibling values when they are all data type states."""
    if not values or not all(crdt.is_state(v) for v in values):
        return None
    return crdt.from_siblings(values)


def register(cli: click.Group, run_client: Callable[..., Any], connection_options: Callable[[Any], Any]) -> None:
    def write_opts(f: Any) -> Any:
        f = click.option("--json", "as_json", is_flag=True, help="Print type, value and context as JSON.")(f)
        f = click.option("-w", type=int, default=None, help="Replicas that must acknowledge (default: cluster's W).")(f)
        return connection_options(f)

    @cli.command()
    @click.argument("key")
    @click.argument("n", type=int, default=1)
    @write_opts
    @click.pass_context
    def incr(ctx: click.Context, key: str, n: int, w: int | None, as_json: bool, node_after: str | None, timeout_after: float | None) -> None:
        """Add N (default 1; negative subtracts) to the counter KEY; prints its new value."""
        show(run_client(ctx, lambda kv: kv.incr(key, n, w=w)), key, as_json)

    @cli.command()
    @click.argument("key")
    @click.argument("members", nargs=-1, required=True)
    @write_opts
    @click.pass_context
    def add(ctx: click.Context, key: str, members: tuple[str, ...], w: int | None, as_json: bool, node_after: str | None, timeout_after: float | None) -> None:
        """Add MEMBERS to the set KEY (add-wins); prints the set."""
        show(run_client(ctx, lambda kv: kv.add(key, *members, w=w)), key, as_json)

    @cli.command()
    @click.argument("key")
    @click.argument("members", nargs=-1, required=True)
    @click.option("--context", "context", default=None, help="Context of `kv fetch --json`: remove only what it saw.")
    @write_opts
    @click.pass_context
    def remove(
        ctx: click.Context, key: str, members: tuple[str, ...], context: str | None, w: int | None, as_json: bool,
        node_after: str | None, timeout_after: float | None,
    ) -> None:
        """Remove MEMBERS from the set KEY (the adds this replica, or --context's read, saw)."""
        c = out.decode_context(context)
        show(run_client(ctx, lambda kv: kv.remove(key, *members, context=c, w=w)), key, as_json)

    @cli.command("register")
    @click.argument("key")
    @click.argument("value")
    @write_opts
    @click.pass_context
    def register_(ctx: click.Context, key: str, value: str, w: int | None, as_json: bool, node_after: str | None, timeout_after: float | None) -> None:
        """Set the register KEY to VALUE (last write wins)."""
        show(run_client(ctx, lambda kv: kv.set_register(key, value, w=w)), key, as_json)

    @cli.command("map")
    @click.argument("key")
    @click.option("--incr", "incrs", multiple=True, metavar="FIELD[=N]", help="Add N (default 1) to a counter field.")
    @click.option("--add", "adds", multiple=True, metavar="FIELD=MEMBER", help="Add a member to a set field.")
    @click.option("--remove", "removes", multiple=True, metavar="FIELD=MEMBER", help="Remove a member of a set field.")
    @click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE", help="Set a register field.")
    @click.option("--enable", multiple=True, metavar="FIELD", help="Enable a flag field.")
    @click.option("--disable", multiple=True, metavar="FIELD", help="Disable a flag field.")
    @click.option("--remove-field", "drop", multiple=True, metavar="FIELD:TYPE", help="Remove a field (e.g. visits:counter).")
    @click.option("--context", "context", default=None, help="Context of `kv fetch --json`: remove only what it saw.")
    @write_opts
    @click.pass_context
    def map_(
        ctx: click.Context, key: str, incrs: tuple[str, ...], adds: tuple[str, ...], removes: tuple[str, ...],
        sets: tuple[str, ...], enable: tuple[str, ...], disable: tuple[str, ...], drop: tuple[str, ...],
        context: str | None, w: int | None, as_json: bool,
        node_after: str | None, timeout_after: float | None,
    ) -> None:
        """Update fields of the map KEY; prints the map as JSON ("name_type": value)."""
        def pair(s: str, what: str, default: str | None = None) -> tuple[str, str]:
            name, sep, rest = s.partition("=")
            if not sep and default is None:
                out.fail(f"kv: {what} takes FIELD=VALUE, got {s!r}", out.EXIT_USAGE)
            return name, rest if sep else str(default)

        fields: dict[tuple[str, str], dict[str, Any]] = {}
        for s in incrs:
            name, n = pair(s, "--incr", "1")
            try:
                fields.setdefault((name, "counter"), {"incr": 0})["incr"] += int(n)
            except ValueError:
                out.fail(f"kv: --incr takes FIELD=N with N an integer, got {s!r}", out.EXIT_USAGE)
        for s in adds:
            name, v = pair(s, "--add")
            fields.setdefault((name, "set"), {}).setdefault("add", []).append(v)
        for s in removes:
            name, v = pair(s, "--remove")
            fields.setdefault((name, "set"), {}).setdefault("remove", []).append(v)
        for s in sets:
            name, v = pair(s, "--set")
            fields[(name, "register")] = {"set": v}
        for name in enable:
            fields[(name, "flag")] = {"enable": True}
        for name in disable:
            fields[(name, "flag")] = {"enable": False}
        dropped = []
        for s in drop:
            name, sep, t = s.rpartition(":")
            if not sep or t not in crdt.TYPES:
                out.fail(f"kv: --remove-field takes FIELD:TYPE (type one of {', '.join(crdt.TYPES)}), got {s!r}", out.EXIT_USAGE)
            dropped.append((name, t))
        if not fields and not dropped:
            out.fail("kv: nothing to do: give --incr, --add, --remove, --set, --enable, --disable or --remove-field", out.EXIT_USAGE)
        updates = [(name, t, op) for (name, t), op in fields.items()]
        c = out.decode_context(context)
        show(run_client(ctx, lambda kv: kv.update_map(key, updates, dropped, context=c, w=w)), key, as_json)

    @cli.command()
    @click.argument("key")
    @click.option("--type", "type_", type=click.Choice(crdt.TOP_TYPES), default=None, help="Expect this data type.")
    @click.option("-r", type=int, default=None, help="Replicas that must answer (default: cluster's R).")
    @click.option("--json", "as_json", is_flag=True, help="Print type, value and context as JSON.")
    @connection_options
    @click.pass_context
    def fetch(ctx: click.Context, key: str, type_: str | None, r: int | None, as_json: bool, node_after: str | None, timeout_after: float | None) -> None:
        """Print the value of the data type KEY (all siblings merged). Exit 1 if not found."""
        res = run_client(ctx, lambda kv: kv.fetch(key, type_, r=r))
        show(res, key, as_json)
        sys.exit(out.EXIT_OK if res.found else out.EXIT_NOT_FOUND)
