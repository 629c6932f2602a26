"""``kv``: the command line of kvstore.

    kv put KEY VALUE        kv get KEY        kv delete KEY      (KEY may be BUCKET/KEY)
    kv get-many KEY...      kv put-many KEY=VALUE...   kv load FILE
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

import os
import sys
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cli import output as out
from cli.lazy import LazyGroup
from cli.options import after_options, bucket_option, connection_options, json_option
from cli.session import run_client
from kvstore.errors import KVError

if TYPE_CHECKING:
    from kvstore.client import AsyncClient

T = TypeVar("T")

DEFAULT_NODE = "127.0.0.1:7000"

# Start-up is most of a `kv get` (issue 15: at most 100 ms): a command's module, asyncio, the
# async client and rich load only when that command runs. get/put/delete use the blocking
# one-request path (kvstore.oneshot) and never load asyncio at all.
LAZY_COMMANDS = {
    "node": "cli.node_cmds:node",
    "cluster": "cli.cluster_cmds:cluster",
    "bench": "cli.bench_cmds:bench",
    "keys": "cli.keys_cmd:keys",
    "bucket": "cli.bucket_cmds:bucket",
    "get-many": "cli.batch_cmds:get_many",
    "put-many": "cli.batch_cmds:put_many",
    "load": "cli.load_cmd:load",
}
DATATYPE_COMMANDS = ("incr", "add", "remove", "register", "map", "fetch")

# kvstore.core.messages's names of the methods the fast path calls, spelled out because
# importing it loads dataclasses and vclock; tests/unit/test_cli_methods.py keeps them equal.
PUT = "put"
DELETE = "delete"
GET_MARKED = "get.marked"


def call_node(ctx: click.Context, method: str, params: list[Any], *, idempotent: bool) -> Any:
    """One data request over kvstore.oneshot (blocking, no asyncio), errors as one line."""
    from cli.options import nodes_of
    from kvstore.oneshot import call

    try:
        return call(nodes_of(ctx), method, params, timeout_s=float(ctx.obj["timeout"]), idempotent=idempotent)
    except KVError as e:
        out.fail_for(e)


def _load_datatype_command(name: str) -> click.Command | None:
    from cli.datatype_cmds import register

    group = click.Group()
    register(group, run_client, connection_options)
    return group.commands.get(name)


@click.group(
    cls=LazyGroup,
    lazy={**LAZY_COMMANDS, **{n: _load_datatype_command for n in DATATYPE_COMMANDS}},
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--node",
    "nodes",
    envvar="KV_NODES",
    default=DEFAULT_NODE,
    show_default=True,
    help="HOST:PORT of the node(s) to talk to, comma-separated (env KV_NODES).",
)
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for an answer.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every command that prints data; also after it).")
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
    as_json: bool,
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
    ctx.obj["json"] = as_json


def _plain(key: str, bucket: str | None, *conditions: Any) -> bool:
    """A request of the default bucket with no condition or TTL: it takes the blocking
    one-request path. Anything else (a bucket to resolve, a condition, a TTL) goes through
    the client library."""
    return bucket is None and "/" not in key and not any(c not in (None, False) for c in conditions)


def _options(quorum_name: str, quorum: int | None, strict: bool) -> dict[str, Any]:
    """The wire options of a data request (kvstore.core.messages.options_to_wire's form)."""
    opts: dict[str, Any] = {}
    if quorum is not None:
        opts[quorum_name] = quorum
    if strict:
        opts["strict"] = True
    return opts


@cli.command()
@click.argument("key")
@click.argument("value")
@click.option("--context", "context", default=None, help="Context from `kv get`: replaces what that read saw.")
@click.option("-w", type=int, default=None, help="Replicas that must acknowledge (default: the bucket's W).")
@click.option("--strict", is_flag=True, help="Count only the key's primary replicas (no fallbacks).")
@click.option("--if-none-match", is_flag=True, help="Only if KEY is absent (exit 4 otherwise).")
@click.option("--if-not-modified", default=None, metavar="CONTEXT", help="Only if KEY is still as the `kv get` that printed CONTEXT saw it (exit 4 otherwise).")
@click.option("--ttl", "ttl_s", type=click.FloatRange(0), default=None, help="Expire the value after this many seconds (0: never; default: the bucket's ttl_s).")
@json_option("Print the new context as JSON.")
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
    if _plain(key, bucket, if_none_match, if_not_modified, ttl_s):
        doc = call_node(ctx, PUT, [key.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"), c, _options("w", w, strict)], idempotent=False)
        new_context = bytes(doc["context"])
    else:
        from cli.bucket_cmds import resolve

        inm = out.decode_context(if_not_modified)

        async def go(kv: AsyncClient) -> Any:
            b, k = await resolve(kv, key, bucket)
            return await kv.put(
                k, value, context=c, w=w, strict=strict, bucket=b, if_none_match=if_none_match,
                if_not_modified=inm, ttl_s=ttl_s,
            )

        new_context = run_client(ctx, go).context
    if as_json:
        out.print_json({"context": out.encode_context(new_context)})


@cli.command()
@click.argument("key")
@click.option("-r", type=int, default=None, help="Replicas that must answer (default: cluster's R).")
@click.option("--strict", is_flag=True, help="Count only the key's primary replicas (no fallbacks).")
@json_option("Print values and context as JSON.")
@bucket_option
@connection_options
@click.pass_context
def get(
    ctx: click.Context, key: str, r: int | None, strict: bool, as_json: bool, bucket: str | None,
    node_after: str | None, timeout_after: float | None,
) -> None:
    """Print the value of KEY (siblings each on a line). Exit 1 if not found.

    A delete concurrent with a write leaves a tombstone beside the written value: it is
    marked on stderr ("kv: ... and a tombstone"), and in --json as "tombstone": true
    (default bucket)."""
    if _plain(key, bucket):
        doc = call_node(ctx, GET_MARKED, [key.encode("utf-8", "surrogateescape"), _options("r", r, strict)], idempotent=True)
        values = [bytes(v) for v in doc["values"]]
        context = bytes(doc["context"])
        tombstone = bool(doc.get("tombstone"))
    else:
        from cli.bucket_cmds import resolve

        async def go(kv: AsyncClient) -> Any:
            b, k = await resolve(kv, key, bucket)
            return await kv.get(k, r=r, strict=strict, bucket=b)

        res = run_client(ctx, go)
        values, context, tombstone = list(res.values), res.context, False
    # A data type's state starts with a NUL byte (kvstore.core.crdt.MAGIC): only such a
    # value loads the data type code, so a plain get does not pay for it.
    if values and values[0][:1] == b"\x00":
        show_datatype(key, values, as_json)
    if as_json:
        doc_out: dict[str, Any] = {
            "key": key, "found": bool(values), "values": [out.show_bytes(v) for v in values],
            "context": out.encode_context(context),
        }
        if tombstone:
            doc_out["tombstone"] = True
        out.print_json(doc_out)
    else:
        for v in values:
            click.echo(out.show_bytes(v))
        if len(values) > 1 or (tombstone and values):
            what = f"{len(values)} siblings" if len(values) > 1 else "1 value"
            if tombstone:
                what += " and a tombstone (a delete concurrent with the write)"
            click.echo(f"kv: {what}; to resolve, put with --context {out.encode_context(context)}", err=True)
    sys.exit(out.EXIT_OK if values else out.EXIT_NOT_FOUND)


def show_datatype(key: str, values: list[bytes], as_json: bool) -> None:
    """``kv get`` of a data type: its siblings merged into one plain value, as `kv fetch`
    shows it; exits. Returns when the values are not all data type states."""
    from cli.datatype_cmds import echo_value, merged_state, plain_json
    from kvstore.core import crdt, vclock

    state = merged_state(values)
    if state is None:
        return
    if as_json:
        out.print_json({"key": key, "found": True, "type": state.type, "value": plain_json(crdt.value(state)),
                        "context": out.encode_context(vclock.encode_context(crdt.context(state)))})
    else:
        echo_value(crdt.value(state))
    sys.exit(out.EXIT_OK)


@cli.command()
@click.argument("key")
@click.option("--context", "context", default=None, help="Context from `kv get`: delete only what that read saw.")
@click.option("-w", type=int, default=None, help="Replicas that must acknowledge (default: the bucket's W).")
@click.option("--if-not-modified", default=None, metavar="CONTEXT", help="Only if KEY is still as the `kv get` that printed CONTEXT saw it (exit 4 otherwise).")
@json_option("Print the tombstone's context as JSON.")
@bucket_option
@connection_options
@click.pass_context
def delete(
    ctx: click.Context, key: str, context: str | None, w: int | None, if_not_modified: str | None, as_json: bool,
    bucket: str | None, node_after: str | None, timeout_after: float | None,
) -> None:
    """Delete KEY: without --context, what a read finds now; with it, what that read saw
    (a value written concurrently survives as a sibling). A versioned tombstone."""
    c = out.decode_context(context)
    if _plain(key, bucket, if_not_modified):
        doc = call_node(ctx, DELETE, [key.encode("utf-8", "surrogateescape"), c, _options("w", w, False)], idempotent=False)
        new_context = bytes(doc["context"])
    else:
        from cli.bucket_cmds import resolve

        inm = out.decode_context(if_not_modified)

        async def go(kv: AsyncClient) -> Any:
            b, k = await resolve(kv, key, bucket)
            return await kv.delete(k, context=c, w=w, bucket=b, if_not_modified=inm)

        new_context = run_client(ctx, go).context
    if as_json:
        out.print_json({"key": key, "deleted": True, "context": out.encode_context(new_context)})


@cli.group()
def secret() -> None:
    """Cluster secrets (key files)."""


@secret.command("new")
@after_options
def secret_new() -> None:
    """Print a fresh random key: save it as a key file (chmod 600) and give it to every
    node and client with --secret-file. A second line in the file is a second accepted
    key, which is how keys are rotated (README, "Securing a cluster")."""
    from kvstore.runtime.security import new_secret

    click.echo(new_secret())


def main(argv: list[str] | None = None) -> Any:
    # Keep Python's own noise (e.g. BrokenPipe on `| head`) out of the user's way.
    try:
        return cli.main(args=argv, prog_name="kv", standalone_mode=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
