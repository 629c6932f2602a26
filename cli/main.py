"""``kv``: the command line of kvstore.

    kv put KEY VALUE        kv get KEY        kv delete KEY      (KEY may be BUCKET/KEY)
    kv get-many KEY...      kv put-many KEY=VALUE...
    kv bucket create|set|show|list
    kv incr KEY [N]         kv add KEY MEMBER kv remove KEY MEMBER   kv map KEY ...   kv fetch KEY
    kv node start ...       kv node ping
    kv cluster up           kv cluster status
    kv bench                load a cluster, side by side with a bare msgpack-RPC server
    kv secret new           print a fresh key for a cluster's key file

Exit status: 0 ok (found), 1 not found, 2 usage (also a refused key or certificate), 3 unavailable or timed out,
4 a conditional write's condition did not hold.
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
from cli.bucket_cmds import bucket, resolve
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


def bucket_option(f: F) -> F:
    return click.option(
        "--bucket", "-b", default=None,
        help="Bucket of the key(s) (default: BUCKET/KEY names one when BUCKET exists, else the default bucket).",
    )(f)


@cli.command()
@click.argument("key")
@click.argument("value")
@click.option("--context", "context", default=None, help="Context from `kv get`: replaces what that read saw.")
@click.option("-w", type=int, default=None, help="Replicas that must acknowledge (default: the bucket's W).")
@click.option("--strict", is_flag=True, help="Count only the key's primary replicas (no fallbacks).")
@click.option("--if-none-match", is_flag=True, help="Only if KEY is absent (exit 4 otherwise).")
@click.option("--if-not-modified", default=None, metavar="CONTEXT", help="Only if KEY is still as the `kv get` that printed CONTEXT saw it (exit 4 otherwise).")
@click.option("--ttl", "ttl_s", type=click.FloatRange(0), default=None, help="Expire the value after this many seconds (0: never; default: the bucket's ttl_s).")
@click.option("--json", "as_json", is_flag=True, help="Print the new context as JSON.")
@bucket_option
@connection_options
@click.pass_context
def put(
    ctx: click.Context, key: str, value: str, context: str | None, w: int | None, strict: bool,
    if_none_match: bool, if_not_modified: str | None, ttl_s: float | None, as_json: bool, bucket: str | None,
    node_after: str | None, timeout_after: float | None,
) -> None:
    """Store VALUE under KEY."""
    c = out.decode_context(context)
    inm = out.decode_context(if_not_modified)

    async def go(kv: AsyncClient) -> Any:
        b, k = await resolve(kv, key, bucket)
        return await kv.put(
            k, value, context=c, w=w, strict=strict, bucket=b, if_none_match=if_none_match,
            if_not_modified=inm, ttl_s=ttl_s,
        )

    res = run_client(ctx, go)
    if as_json:
        out.print_json({"context": out.encode_context(res.context)})


@cli.command()
@click.argument("key")
@click.option("-r", type=int, default=None, help="Replicas that must answer (default: the bucket's R).")
@click.option("--strict", is_flag=True, help="Count only the key's primary replicas (no fallbacks).")
@click.option("--json", "as_json", is_flag=True, help="Print values and context as JSON.")
@bucket_option
@connection_options
@click.pass_context
def get(
    ctx: click.Context, key: str, r: int | None, strict: bool, as_json: bool, bucket: str | None,
    node_after: str | None, timeout_after: float | None,
) -> None:
    """Print the value of KEY (siblings each on a line). Exit 1 if not found."""

    async def go(kv: AsyncClient) -> Any:
        b, k = await resolve(kv, key, bucket)
        return await kv.get(k, r=r, strict=strict, bucket=b)

    res = run_client(ctx, go)
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
@click.option("-w", type=int, default=None, help="Replicas that must acknowledge (default: the bucket's W).")
@click.option("--if-not-modified", default=None, metavar="CONTEXT", help="Only if KEY is still as the `kv get` that printed CONTEXT saw it (exit 4 otherwise).")
@bucket_option
@connection_options
@click.pass_context
def delete(
    ctx: click.Context, key: str, context: str | None, w: int | None, if_not_modified: str | None,
    bucket: str | None, node_after: str | None, timeout_after: float | None,
) -> None:
    """Delete KEY: without --context, what a read finds now; with it, what that read saw
    (a value written concurrently survives as a sibling). A versioned tombstone."""
    c = out.decode_context(context)
    inm = out.decode_context(if_not_modified)

    async def go(kv: AsyncClient) -> Any:
        b, k = await resolve(kv, key, bucket)
        return await kv.delete(k, context=c, w=w, bucket=b, if_not_modified=inm)

    run_client(ctx, go)


@cli.command("get-many")
@click.argument("keys", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per key.")
@bucket_option
@connection_options
@click.pass_context
def get_many(
    ctx: click.Context, keys: tuple[str, ...], as_json: bool, bucket: str | None,
    node_after: str | None, timeout_after: float | None,
) -> None:
    """Read KEYS in one call per coordinator: KEY<TAB>VALUE per value found. Exit 1 if
    any is not found, 3 if any failed."""

    async def go(kv: AsyncClient) -> Any:
        b = None if bucket == "default" else bucket
        return await kv.get_many(list(keys), bucket=b)

    results = run_client(ctx, go)
    worst = out.EXIT_OK
    for key, res in zip(keys, results, strict=True):
        if isinstance(res, KVError):
            click.echo(f"kv: {key}: {res}", err=True)
            worst = max(worst, out.exit_code_for(res))
            continue
        if not res.found:
            worst = max(worst, out.EXIT_NOT_FOUND)
        if as_json:
            out.print_json({"key": key, "found": res.found, "values": [out.show_bytes(v) for v in res.values],
                            "context": out.encode_context(res.context)})
        else:
            for v in res.values:
                click.echo(f"{key}\t{out.show_bytes(v)}")
    sys.exit(worst)


@cli.command("put-many")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--ttl", "ttl_s", type=click.FloatRange(0), default=None, help="Expire the values after this many seconds.")
@bucket_option
@connection_options
@click.pass_context
def put_many(
    ctx: click.Context, pairs: tuple[str, ...], ttl_s: float | None, bucket: str | None,
    node_after: str | None, timeout_after: float | None,
) -> None:
    """Store each KEY=VALUE in one call per coordinator. Exit 3 if any failed (its outcome
    is unknown, as a single put's would be)."""
    items: list[tuple[str, str]] = []
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            out.fail(f"{pair!r} is not KEY=VALUE", out.EXIT_USAGE)
        items.append((k, v))

    async def go(kv: AsyncClient) -> Any:
        b = None if bucket == "default" else bucket
        return await kv.put_many(items, bucket=b, ttl_s=ttl_s)

    results = run_client(ctx, go)
    worst = out.EXIT_OK
    for (key, _), res in zip(items, results, strict=True):
        if isinstance(res, KVError):
            click.echo(f"kv: {key}: {res}", err=True)
            worst = max(worst, out.exit_code_for(res))
    sys.exit(worst)


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
cli.add_command(bucket)


def main(argv: list[str] | None = None) -> Any:
    # Keep Python's own noise (e.g. BrokenPipe on `| head`) out of the user's way.
    try:
        return cli.main(args=argv, prog_name="kv", standalone_mode=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
