"""``get.marked``: a get whose reply also says whether a tombstone stands beside the values.

A delete made with the context of a read that did not see a concurrent write leaves a
tombstone sibling next to that write's value. ``get`` shows only live values (an empty list
for a deleted key), so a user cannot tell "written" from "written, and concurrently deleted";
``kv get`` marks the second.

The values and context are those of the ordinary coordinated get (forwarded, quorum, read
repair: kvstore.runtime.coordinator), untouched; the mark comes from a second look at the
key's preference-list replicas (reachable ones, in parallel), whose records are merged by
vector clock as a read merges them: a tombstone that survives the merge is concurrent with
the values. It costs one more round of replica reads, so only ``kv get`` asks for it; the
client library's ``get`` stays one read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kvstore.core import messages as m
from kvstore.core import vclock
from kvstore.core.vclock import Obj
from kvstore.errors import KVError
from kvstore.runtime.coordinator import Coordinator
from kvstore.runtime.rpc import RpcClient

__all__ = ["MarkedGet"]


class MarkedGet:
    def __init__(self, coord: Coordinator, rpc: RpcClient) -> None:
        self.coord = coord
        self.rpc = rpc

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {m.GET_MARKED: self.get}

    async def _record(self, node: str, p: int, key: bytes, timeout: float) -> Obj | None:
        c = self.coord
        if node == c.name:
            return c.replica.read(p, key)
        try:
            raw = await self.rpc.call(c.view.addr_of(node), m.REPLICA_GET, [p, key], timeout)
        except KVError:
            return None  # the quorum read already answered for the values; the mark is best effort
        return None if raw is None else vclock.decode(m.as_bytes(raw, "record"))

    async def get(self, raw_key: Any, raw_opts: Any = None) -> dict[str, Any]:
        c = self.coord
        reply = dict(await c.get(raw_key, raw_opts))
        key = m.check_key(raw_key, c.limits)
        _ring, p, pref = c._locate(key)
        objs = await asyncio.gather(*(self._record(n, p, key, c.s.forward_timeout_s) for n in pref))
        merged = vclock.sync_all(objs)
        if merged is not None and c.lww:
            merged = vclock.lww(merged)  # one version shown, as the get shows it
        reply["tombstone"] = merged is not None and any(s.value is None for s in merged.siblings)
        return reply
