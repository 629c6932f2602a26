"""``kv bucket``: create, change and look at buckets; and how a KEY argument names one.

A data command's KEY may be ``BUCKET/KEY``: when BUCKET is a bucket the cluster knows, the
key is KEY in it; otherwise the whole text is a key of the default bucket, exactly as before
buckets existed (so existing keys with a slash keep working). ``--bucket`` says it outright,
and ``--bucket default`` addresses a default-bucket key that would otherwise be taken apart.
"""

from __future__ import annotations

from typing import Any

import click

from cli import output as out
from kvstore.client import AsyncClient
from kvstore.core import bucket as bk
from kvstore.core import messages as m
from kvstore.errors import KVError


async def known_buckets(kv: AsyncClient) -> set[str]:
    last: KVError | None = None
    for addr in kv.nodes:
        try:
            return {str(b["name"]) for b in await kv.call(addr, m.BUCKET_LIST)}
        except KVError as e:
            last = e
    assert last is not None
    raise last


async def resolve(kv: AsyncClient, key: str, bucket: str | None) -> tuple[str | None, str]:
    """``(bucket, key)`` for a KEY argument (None: the default bucket)."""
    if bucket is not None:
        return (None if bucket == bk.DEFAULT else bucket), key
    head, sep, rest = key.partition("/")
    if sep and rest and head != bk.DEFAULT and head in await known_buckets(kv):
        return head, rest
    return None, key


def parse_props(pairs: tuple[str, ...]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            out.fail(f"property {pair!r} is not NAME=VALUE (e.g. n=2, conflict=lww, ttl_s=60)", out.EXIT_USAGE)
        props[name.strip().replace("-", "_")] = value.strip()
    return props


def _show(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.print_json(doc)
        return
    click.echo(doc["name"])
    for name in bk.PROPERTIES:
        click.echo(f"  {name} = {doc[name]}")


@click.group()
def bucket() -> None:
    """Buckets: key spaces with their own N, R, W, conflict mode, bounds, TTL and datatype.

    Properties: n (<= the cluster's n_replicas), r, w, conflict (siblings|lww),
    max_siblings, max_record_bytes, ttl_s (0: no expiry), datatype
    (none|counter|set|map|register). n and datatype cannot change once the bucket holds keys.
    """


def _admin(ctx: click.Context, method: str, *params: Any) -> Any:
    from cli.session import run_client

    async def go(kv: AsyncClient) -> Any:
        last: KVError | None = None
        for addr in kv.nodes:
            try:
                return await kv.call(addr, method, *params)
            except KVError as e:
                if not kv.retry.try_next(e, idempotent=method in (m.BUCKET_SHOW, m.BUCKET_LIST)):
                    raise
                last = e
        assert last is not None
        raise last

    return run_client(ctx, go)


@bucket.command("create")
@click.argument("name")
@click.argument("props", nargs=-1, metavar="[PROP=VALUE]...")
@click.option("--json", "as_json", is_flag=True, help="Print the properties as JSON.")
@click.pass_context
def create(ctx: click.Context, name: str, props: tuple[str, ...], as_json: bool) -> None:
    """Create bucket NAME; properties not given are the cluster's settings.

    Example: kv bucket create sessions n=2 ttl_s=3600 conflict=lww
    """
    _show(_admin(ctx, m.BUCKET_CREATE, name, parse_props(props)), as_json)


@bucket.command("set")
@click.argument("name")
@click.argument("props", nargs=-1, required=True, metavar="PROP=VALUE...")
@click.option("--json", "as_json", is_flag=True, help="Print the properties as JSON.")
@click.pass_context
def set_(ctx: click.Context, name: str, props: tuple[str, ...], as_json: bool) -> None:
    """Change properties of bucket NAME (n and datatype only while it is empty)."""
    _show(_admin(ctx, m.BUCKET_SET, name, parse_props(props)), as_json)


@bucket.command("show")
@click.argument("name", default=bk.DEFAULT)
@click.option("--json", "as_json", is_flag=True, help="Print the properties as JSON.")
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Print the properties of bucket NAME (default: the default bucket)."""
    _show(_admin(ctx, m.BUCKET_SHOW, name), as_json)


@bucket.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the buckets as JSON.")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List every bucket with its properties."""
    docs = _admin(ctx, m.BUCKET_LIST)
    if as_json:
        out.print_json(docs)
        return
    con = out.console()
    from rich.table import Table

    t = Table("bucket", *bk.PROPERTIES)
    for d in docs:
        t.add_row(str(d["name"]), *(str(d[p]) for p in bk.PROPERTIES))
    con.print(t)
