"""``kv``: the command line of kvstore.

    kv put KEY VALUE        kv get KEY        kv delete KEY
    kv incr KEY [N]         kv add KEY MEMBER kv remove KEY MEMBER   kv map KEY ...   kv fetch KEY
    kv node start ...       kv node ping
    kv cluster up           kv cluster status
    kv bench                load a cluster, side by side with a bare msgpack-RPC server
    kv secret new           print a fresh key for a cluster's key file

Exit status: 0 ok (found), 1 not found, 2 usage (also a refused key or certificate), 3 unavailable or timed out.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from cli import output as out
from cli.bench_cmds import bench
from cli.cluster_cmds import cluster
from cli.datatype_cmds import echo_value, merged_state, plain_json
from cli.datatype_cmds import register as register_datatype_cmds
from cli.node_cmds import node
from kvstore.client import AsyncClient
from kvstore.core import crdt, vclock
from kvstore.errors import KVError

T = TypeVar("T")

DEFAULT_NODE = "127.0.0.1:7000"


def run_client(ctx: click.Context, fn: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Run one client operation with a one-line error on failure, never a traceback."""
    # --node and --timeout given after the subcommand win over the group's.
    nodes: str = ctx.params.get("node_after") or ctx.obj["nodes"]
    timeout: float = ctx.params.get("timeout_after") or ctx.obj["timeout"]

    async def go() -> T:
        async with AsyncClient(nodes, timeout_s=timeout) as c:
            return await fn(c)

    try:
        return asyncio.run(go())
    except KVError as e:
        out.fail_for(e)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--node",
    "nodes",
    envvar="KV_NODES",
    default=DEFAULT_NODE,
    show_default=True,
    help="HOST:PORT of the node(s) to talk to, comma-separated (env KV_NODES).",
)
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for an answer.")
@click.option("--secret-file", default=None, help="Key file of the cluster secret (env KV_SECRET_FILE).")
@click.option("--tls-ca-file", default=None, help="Use TLS; check nodes' certificates against this CA (env KV_TLS_CA_FILE).")
@click.option("--tls-cert-file", default=None, help="Our certificate, for mutual TLS (env KV_TLS_CERT_FILE).")
@click.option("--tls-key-file", default=None, help="Key of --tls-cert-file (env KV_TLS_KEY_FILE).")
@click.version_option(package_name="kvstore", prog_name="kv")
@click.pass_context
def cli(
    ctx: click.Context,
    nodes: str,
    timeout: float,
    secret_file: str | None,
    tls_ca_file: str | None,
    tls_cert_file: str | None,
    tls_key_file: str | None,
) -> None:
    """kvstore: a Dynamo-style distributed key-value store.

    Talks to the node given by --node or KV_NODES (default 127.0.0.1:7000); start a local
    cluster with `kv cluster up`. A cluster with a secret needs --secret-file (or
    KV_SECRET_FILE); see "Securing a cluster" in the README.
    """
    # Through the environment, so every command, every client it makes and every node
    # `kv cluster up` starts reads the same files as a node would.
    for var, value in (
        ("KV_SECRET_FILE", secret_file),
        ("KV_TLS_CA_FILE", tls_ca_file),
        ("KV_TLS_CERT_FILE", tls_cert_file),
        ("KV_TLS_KEY_FILE", tls_key_file),
    ):
        if value is not None:
            os.environ[var] = value
    ctx.ensure_object(dict)
    ctx.obj["nodes"] = nodes
    ctx.obj["timeout"] = timeout


F = TypeVar("F", bound=Callable[..., Any])


def connection_options(f: F) -> F:
    """``--node`` and ``--timeout`` after a data command too (``kv get a --node H:P``)."""
    f = click.option("--timeout", "timeout_after", type=float, default=None, help="Seconds to wait for an answer.")(f)
    f = click.option("--node", "node_after", default=None, help="HOST:PORT of the node(s) to talk to (as before the command).")(f)
    return f


@cli.command()
@click.argument("key")
@click.argument("value")
@click.option("--context", "context", default=None, help="Context from `kv get`: replaces what that read saw.")
@click.option("-w", type=int, default=None, help="Replicas that must acknowledge (default: cluster's W).")
@click.option("--strict", is_flag=True, help="Count only the key's primary replicas (no fallbacks).")
@click.option("--json", "as_json", is_flag=True, help="Print the new context as JSON.")
@connection_options
@click.pass_context
def put(
    ctx: click.Context, key: str, value: str, context: str | None, w: int | None, strict: bool, as_json: bool,
    node_after: str | None, timeout_after: float | None,
) -> None:
    """Store VALUE under KEY."""
    c = out.decode_context(context)
    res = run_client(ctx, lambda kv: kv.put(key, value, context=c, w=w, strict=strict))
    if as_json:
        out.print_json({"context": out.encode_context(res.context)})


@cli.command()
@click.argument("key")
@click.option("-r", type=int, default=None, help="Replicas that must answer (default: cluster's R).")
@click.option("--strict", is_flag=True, help="Count only the key's primary replicas (no fallbacks).")
@click.option("--json", "as_json", is_flag=True, help="Print values and context as JSON.")
@connection_options
@click.pass_context
def get(
    ctx: click.Context, key: str, r: int | None, strict: bool, as_json: bool,
    node_after: str | None, timeout_after: float | None,
) -> None:
    """Print the value of KEY (siblings each on a line). Exit 1 if not found."""
    res = run_client(ctx, lambda kv: kv.get(key, r=r, strict=strict))
    state = merged_state(res.values)
    if state is not None:
        # A data type: its siblings merged into one plain value, as `kv fetch` shows it.
        if as_json:
            out.print_json({"key": key, "found": True, "type": state.type, "value": plain_json(crdt.value(state)),
                            "context": out.encode_context(vclock.encode_context(crdt.context(state)))})
        else:
            echo_value(crdt.value(state))
        sys.exit(out.EXIT_OK)
    if as_json:
        out.print_json(
            {
                "key": key,
                "found": res.found,
                "values": [out.show_bytes(v) for v in res.values],
                "context": out.encode_context(res.context),
            }
        )
    else:
        for v in res.values:
            click.echo(out.show_bytes(v))
        if len(res.values) > 1:
            click.echo(
                f"kv: {len(res.values)} siblings; to resolve, put with --context {out.encode_context(res.context)}",
                err=True,
            )
    sys.exit(out.EXIT_OK if res.found else out.EXIT_NOT_FOUND)


@cli.command()
@click.argument("key")
@click.option("--context", "context", default=None, help="Context from `kv get`: delete only what that read saw.")
@click.option("-w", type=int, default=None, help="Replicas that must acknowledge (default: cluster's W).")
@connection_options
@click.pass_context
def delete(
    ctx: click.Context, key: str, context: str | None, w: int | None, node_after: str | None, timeout_after: float | None
) -> None:
    """Delete KEY: without --context, what a read finds now; with it, what that read saw
    (a value written concurrently survives as a sibling). A versioned tombstone."""
    c = out.decode_context(context)
    run_client(ctx, lambda kv: kv.delete(key, context=c, w=w))


@cli.group()
def secret() -> None:
    """Cluster secrets (key files)."""


@secret.command("new")
def secret_new() -> None:
    """Print a fresh random key: save it as a key file (chmod 600) and give it to every
    node and client with --secret-file. A second line in the file is a second accepted
    key, which is how keys are rotated (README, "Securing a cluster")."""
    from kvstore.runtime.security import new_secret

    click.echo(new_secret())


register_datatype_cmds(cli, run_client, connection_options)
cli.add_command(node)
cli.add_command(cluster)
cli.add_command(bench)


def main(argv: list[str] | None = None) -> Any:
    # Keep Python's own noise (e.g. BrokenPipe on `| head`) out of the user's way.
    try:
        return cli.main(args=argv, prog_name="kv", standalone_mode=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
