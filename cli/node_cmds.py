"""``kv node``: run one node, or ask one node how it is."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import fields
from typing import Any

import click

from cli import output as out
from cli.options import after_options, json_option
from cli.remote import call_once
from kvstore.config import Settings, load_settings
from kvstore.core import messages as m
from kvstore.errors import KVError

_TYPES: dict[str, Any] = {"int": int, "float": float, "str": str, "bool": bool}
# Settings that have a shorter, friendlier flag.
_RENAMED = {"node_id": "name", "seeds": "seed"}


def settings_options(fn: Any) -> Any:
    """One flag per setting (``--probe-interval-s``), defaulting to None so that only what the
    user typed overrides the TOML file and KV_* environment."""
    for f in reversed(fields(Settings)):
        flag = "--" + _RENAMED.get(f.name, f.name).replace("_", "-")
        doc = f.metadata["doc"]
        if f.name == "seeds":
            opt = click.option(flag, f.name, multiple=True, help=doc + " Repeatable.")
        elif f.type == "bool":
            opt = click.option(flag + "/--no-" + flag[2:], f.name, default=None, help=f"{doc} [default: {f.default}]")
        else:
            typ = _TYPES.get(str(f.type), str)
            opt = click.option(flag, f.name, type=typ, default=None, help=f"{doc} [default: {f.default}]")
        fn = opt(fn)
    return fn


@click.group()
def node() -> None:
    """Run or inspect one node."""


@node.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="TOML settings file.")
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
@settings_options
def start(config_path: str | None, log_level: str, **overrides: Any) -> None:
    """Start a node in the foreground (SIGTERM or Ctrl-C stops it gracefully).

    Every setting can also come from a KV_<NAME> environment variable or the TOML file;
    flags win over both.
    """
    if not overrides.get("seeds"):
        overrides.pop("seeds", None)
    try:
        settings = load_settings(toml_path=config_path, overrides=overrides)
    except KVError as e:
        out.fail(str(e), out.EXIT_USAGE)
    from kvstore.runtime.server import run

    sys.exit(run(settings, log_level))


@node.command()
@json_option("Print the node's answer as JSON.")
@after_options
@click.pass_context
def ping(ctx: click.Context, as_json: bool) -> None:
    """Exit 0 if the node answers (for health checks), 3 if not."""
    addr = ctx.obj["nodes"].split(",")[0].strip()
    try:
        doc = asyncio.run(call_once(addr, "ping", [], ctx.obj["timeout"]))
    except KVError as e:
        out.fail_for(e)
    if as_json:
        out.print_json(doc)
        return
    click.echo(f"{doc['node']} at {doc['addr']}: ok (kvstore {doc['version']})")


@node.command()
@click.argument("target", metavar="NODE", required=False)
@after_options
@click.pass_context
def restart(ctx: click.Context, target: str | None) -> None:
    """Restart NODE in place (HOST:PORT; default: --node): it writes its shared-memory
    snapshot and re-executes itself with the same command line, then serves again."""
    from kvstore.runtime.rpc import RpcClient
    from kvstore.runtime.security import client_options

    addr = target or ctx.obj["nodes"].split(",")[0].strip()
    timeout = ctx.obj["timeout"]

    async def go() -> Any:
        rpc = RpcClient(connect_timeout_s=timeout, **client_options())
        try:
            before = await rpc.call(addr, m.RESTART, [], timeout)
            deadline = asyncio.get_running_loop().time() + 120
            while asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.2)
                try:
                    now = await rpc.call(addr, "ping", [], 1.0)
                except KVError:
                    continue
                if now["boot"] != before["boot"]:
                    return now
            raise KVError(f"{addr} did not come back within 120s")
        finally:
            await rpc.close()

    try:
        doc = asyncio.run(go())
    except KVError as e:
        out.fail_for(e)
    click.echo(f"{doc['node']} at {doc['addr']}: restarted")


@node.command()
@click.argument("target", metavar="NODE", required=False)
@after_options
@click.pass_context
def stop(ctx: click.Context, target: str | None) -> None:
    """Stop NODE gracefully (HOST:PORT; default: --node): it tells the cluster, finishes the
    requests it has, writes its shared-memory snapshot and exits. Waits until it is gone."""
    addr = target or ctx.obj["nodes"].split(",")[0].strip()
    timeout = ctx.obj["timeout"]

    async def go() -> Any:
        doc = await call_once(addr, m.STOP, [], timeout)
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
            try:
                await call_once(addr, "ping", [], 1.0)
            except KVError:
                return doc
        raise KVError(f"{addr} still answers 60s after being asked to stop")

    try:
        doc = asyncio.run(go())
    except KVError as e:
        out.fail_for(e)
    click.echo(f"{doc['node']} at {addr}: stopped")
