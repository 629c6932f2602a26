"""Batches: ``get_many`` and ``put_many``, several requests in one call to one coordinator.

The client groups a batch by each key's first preference-list node, so a batch costs one
round trip per coordinator. Here every item becomes the request it would be alone (its own
request machine, all running at once on this node, their replica calls batched per peer in
the loop turn as usual); an item this node does not coordinate (the client's ring was
stale) is forwarded like a single request. Items fail or succeed on their own: the answer
is one ``{"ok": result}`` or ``{"error": {code, message}}`` per item, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from kvstore.core import messages as m
from kvstore.errors import InvalidRequest, to_wire

if TYPE_CHECKING:
    from kvstore.runtime.coordinator import Coordinator

MAX_BATCH_ITEMS = m.MAX_BATCH_ITEMS


def _items(raw: Any, width: tuple[int, ...], what: str) -> list[list[Any]]:
    if not isinstance(raw, list):
        raise InvalidRequest(f"{what} takes a list of items")
    if len(raw) > MAX_BATCH_ITEMS:
        raise InvalidRequest(f"{what}: {len(raw)} items, over the limit of {MAX_BATCH_ITEMS} per call")
    for it in raw:
        if not isinstance(it, list) or len(it) not in width:
            raise InvalidRequest(f"{what} items are {' or '.join(str(w) for w in width)}-element lists")
    return raw


async def _run(starts: list[Callable[[], Awaitable[dict[str, Any]]]]) -> list[dict[str, Any]]:
    futs: list[asyncio.Future[Any]] = []
    for start in starts:
        try:
            futs.append(asyncio.ensure_future(start()))
        except Exception as e:  # a request refused before it started (bad key, unknown bucket)
            f = asyncio.get_running_loop().create_future()
            f.set_exception(e)
            futs.append(f)
    done = await asyncio.gather(*futs, return_exceptions=True)
    return [{"error": to_wire(r)} if isinstance(r, BaseException) else {"ok": r} for r in done]


def handlers(c: Coordinator) -> dict[str, Callable[..., Any]]:
    async def get_many(items: Any) -> list[dict[str, Any]]:
        """``[[key, opts], ...]`` -> one result of ``get`` per item."""
        its = _items(items, (1, 2), m.GET_MANY)

        def one(it: list[Any]) -> Callable[[], Awaitable[dict[str, Any]]]:
            return lambda: c.get(it[0], it[1] if len(it) > 1 else None)

        return await _run([one(it) for it in its])

    async def put_many(items: Any) -> list[dict[str, Any]]:
        """``[[key, value, context, opts], ...]`` -> one result of ``put`` per item (a None
        value is a delete)."""
        its = _items(items, (2, 3, 4), m.PUT_MANY)

        def one(it: list[Any]) -> Callable[[], Awaitable[dict[str, Any]]]:
            key, value = it[0], it[1]
            ctx = it[2] if len(it) > 2 else None
            opts = it[3] if len(it) > 3 else None
            if value is None:
                return lambda: c.delete(key, ctx, opts)
            return lambda: c.put(key, value, ctx, opts)

        return await _run([one(it) for it in its])

    return {m.GET_MANY: get_many, m.PUT_MANY: put_many}
