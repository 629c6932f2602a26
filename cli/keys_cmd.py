"""``kv keys``: stream the cluster's live keys, throttled by every node (kvstore.runtime.keylist).

The ring says which nodes replicate each partition; each partition is paged from one of them
(the first of its preference list that answers, the next one with the same cursor if it
fails), so every key is printed once, as soon as its page arrives. Keys come partition by
partition, sorted within a partition, not globally sorted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from cli import output as out
from cli.options import after_options, json_option, nodes_of
from kvstore.errors import KVError, Unavailable


async def _ring(rpc: Any, seeds: list[str], timeout: float) -> dict[str, Any]:
    from kvstore.core import messages as m

    last: KVError | None = None
    for a in seeds:
        try:
            return await rpc.call(a, m.RING, [], timeout)  # type: ignore[no-any-return]
        except KVError as e:
            last = e
    assert last is not None
    raise last


async def stream_keys(seeds: list[str], timeout: float, prefix: bytes, limit: int | None, emit: Any) -> int:
    """Call ``emit(key)`` for each live key (at most ``limit``); returns how many."""
    from kvstore.core import messages as m
    from kvstore.core.ring import Ring
    from kvstore.runtime.rpc import RpcClient
    from kvstore.runtime.security import client_options

    rpc = RpcClient(connect_timeout_s=min(1.0, timeout), **client_options())
    try:
        doc = await _ring(rpc, seeds, timeout)
        ring = Ring.from_wire(doc["ring"])
        addrs = {str(k): str(v) for k, v in doc["addrs"].items()}
        n = int(doc.get("n", 3))
        shown = 0
        for p in range(ring.partitions):
            replicas = [addrs[x] for x in ring.preference_list(p, n) if x in addrs]
            cursor: bytes | None = None
            while True:
                want = None if limit is None else limit - shown
                if want is not None and want <= 0:
                    return shown
                page = None
                err: KVError | None = None
                for a in replicas:
                    try:
                        page = await rpc.call(a, m.KEYS_LIST, [p, cursor, prefix, None], timeout)
                        break
                    except KVError as e:
                        err = e
                if page is None:
                    raise err or Unavailable(f"no replica of partition {p} is known", required=1)
                for k in page["keys"]:
                    if limit is not None and shown >= limit:
                        return shown
                    emit(bytes(k))
                    shown += 1
                cursor = None if page["next"] is None else bytes(page["next"])
                if cursor is None:
                    break
        return shown
    finally:
        await rpc.close()


@click.command()
@click.option("--prefix", default="", help="Only keys that start with this.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many keys.")
@json_option("Print one JSON string a line.")
@after_options
@click.pass_context
def keys(ctx: click.Context, prefix: str, limit: int | None, as_json: bool) -> None:
    """Stream the live keys of the cluster (tombstones left out), one a line.

    Each key is printed once, partition by partition. Every node paces the scan
    (keys_list_rate_per_s), so listing does not slow requests down; a big store takes a
    while. Ctrl-C stops it.
    """
    import json

    def emit(k: bytes) -> None:
        text = out.show_bytes(k)
        click.echo(json.dumps(text) if as_json else text)

    try:
        asyncio.run(stream_keys(nodes_of(ctx), float(ctx.obj["timeout"]), prefix.encode("utf-8", "surrogateescape"), limit, emit))
    except KVError as e:
        out.fail_for(e)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
