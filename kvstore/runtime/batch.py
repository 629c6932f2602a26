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
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from kvstore.core import messages as m
from kvstore.errors import InvalidRequest, to_wire
from kvstore.runtime.rpc.later import LATER, Gathered, replies_later
from kvstore.runtime.rpc.later import Reply as RpcReply

if TYPE_CHECKING:
    from kvstore.runtime.coordinator import Coordinator

MAX_BATCH_ITEMS: Final = m.MAX_BATCH_ITEMS


def _items(raw: Any, width: tuple[int, ...], what: str) -> list[list[Any]]:
    if not isinstance(raw, list):
        raise InvalidRequest(f"{what} takes a list of items")
    if len(raw) > MAX_BATCH_ITEMS:
        raise InvalidRequest(f"{what}: {len(raw)} items, over the limit of {MAX_BATCH_ITEMS} per call")
    for it in raw:
        if not isinstance(it, list) or len(it) not in width:
            raise InvalidRequest(f"{what} items are {' or '.join(str(w) for w in width)}-element lists")
    return raw


class _Gather(Gathered):
    """The items of one batch: each one's outcome in its slot, the answer once all are in.
    Items answer through reply callbacks (kvstore.runtime.rpc.later), so a batch of N costs
    no future, task or loop turn per item; an item the coordinator hands back as a future
    or coroutine (forwarded, or a data-model request) is awaited as such."""

    __slots__ = ()

    def __init__(self, n: int, reply: RpcReply | None) -> None:
        super().__init__([None] * n, reply, pending=n)

    def start(self, i: int, request: Callable[..., Any], *args: Any) -> None:
        """Item ``i`` is ``request(*args, reply=…)`` (the coordinator's get, put or delete)."""
        try:
            r = request(*args, reply=functools.partial(self._answered, i))
        except Exception as e:  # a request refused before it started (bad key, unknown bucket)
            self._answered(i, None, e)
            return
        if r is LATER:
            return
        if isinstance(r, Awaitable):
            fut = asyncio.ensure_future(r)
            fut.add_done_callback(functools.partial(self._awaited, i))
            return
        self._answered(i, r, None)

    def _awaited(self, i: int, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            self._answered(i, None, asyncio.CancelledError())
        else:
            e = fut.exception()
            self._answered(i, None if e is not None else fut.result(), e)

    def _answered(self, i: int, result: Any, exc: BaseException | None) -> None:
        self.out[i] = {"error": to_wire(exc)} if exc is not None else {"ok": result}
        self.one_less()


def handlers(c: Coordinator) -> dict[str, Callable[..., Any]]:
    @replies_later
    def get_many(items: Any, *, reply: RpcReply | None = None) -> Any:
        """``[[key, opts], ...]`` -> one result of ``get`` per item."""
        its = _items(items, (1, 2), m.GET_MANY)
        g = _Gather(len(its), reply)
        for i, it in enumerate(its):
            key, opts = it[0], (it[1] if len(it) > 1 else None)
            g.start(i, c.get, key, opts)
        return g.answer()

    @replies_later
    def put_many(items: Any, *, reply: RpcReply | None = None) -> Any:
        """``[[key, value, context, opts], ...]`` -> one result of ``put`` per item (a None
        value is a delete)."""
        its = _items(items, (2, 3, 4), m.PUT_MANY)
        g = _Gather(len(its), reply)
        for i, it in enumerate(its):
            key, value = it[0], it[1]
            ctx = it[2] if len(it) > 2 else None
            opts = it[3] if len(it) > 3 else None
            if value is None:
                g.start(i, c.delete, key, ctx, opts)
            else:
                g.start(i, c.put, key, value, ctx, opts)
        return g.answer()

    return {m.GET_MANY: get_many, m.PUT_MANY: put_many}
