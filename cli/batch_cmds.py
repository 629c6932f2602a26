"""``kv get-many`` and ``kv put-many``: batches, one call per coordinator (loaded only
when one of them runs)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from cli import output as out
from cli.options import bucket_option, connection_options, json_option
from cli.session import run_client
from kvstore.errors import KVError

if TYPE_CHECKING:
    from kvstore.client import AsyncClient


@click.command("get-many")
@click.argument("keys", nargs=-1, required=True)
@json_option("Print one JSON object per key.")
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


@click.command("put-many")
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
