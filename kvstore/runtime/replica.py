"""A replica's side of replication: read the local version of a key, merge an incoming one.

Every write to the local store goes through ``merge_in``, so the stored object is always the
vclock merge of everything this node has seen for the key (nothing causally newer is ever
overwritten by something older, whichever path it came by: coordinator, read repair,
handoff or anti-entropy).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

from kvstore.core import vclock
from kvstore.core.vclock import Obj
from storage.engine import Engine

# Called after each stored change: (partition, key, old, new) — Merkle trees hook in here.
ChangeHook = Callable[[int, bytes, Obj | None, Obj | None], None]


ACTOR_KEY = b"replica.actor"


class Replica:
    """``actor`` is the name this node's writes carry in vector clocks: the node name plus an
    epoch that changes whenever the node may have forgotten versions it coordinated (a new
    data directory, or partitions dropped after a ring change). Without it, a node that
    coordinates a blind write for a key it no longer holds would number the new version
    with a dot its peers have already seen, and they would discard it as old."""

    def __init__(self, engine: Engine, name: str, *, lww: bool = False) -> None:
        self.engine = engine
        self.name = name
        self.lww = lww
        self.hooks: list[ChangeHook] = []
        raw = engine.meta_get(ACTOR_KEY)
        self.actor = raw.decode() if raw else ""

    async def new_epoch(self) -> str:
        """Pick a fresh actor id and persist it before any write can use it."""
        self.actor = f"{self.name}~{secrets.token_hex(4)}"
        await self.engine.meta_put(ACTOR_KEY, self.actor.encode())
        return self.actor

    def read(self, partition: int, key: bytes) -> Obj | None:
        rec = self.engine.get(partition, key)
        return None if rec is None else vclock.decode(rec)

    def read_raw(self, partition: int, key: bytes) -> bytes | None:
        return self.engine.get(partition, key)

    def apply(self, partition: int, key: bytes, incoming: Obj) -> asyncio.Future[None] | None:
        """Merge ``incoming`` into the local version now (visible to the next read at once);
        the returned future completes when the merge is durable, None if nothing changed.
        A replica acknowledges only after that future."""
        return self._merge(partition, key, incoming)[1]

    async def merge_in(self, partition: int, key: bytes, incoming: Obj) -> Obj:
        """``apply`` for coroutines: returns the merged version once it is durable."""
        merged, durable = self._merge(partition, key, incoming)
        if durable is not None:
            await durable
        return merged

    def _merge(self, partition: int, key: bytes, incoming: Obj) -> tuple[Obj, asyncio.Future[None] | None]:
        local = self.read(partition, key)
        merged = vclock.sync(local, incoming)
        if self.lww:
            merged = vclock.lww(merged)
        if merged == local:
            return merged, None
        return merged, self._store(partition, key, local, merged)

    def write_new(self, partition: int, key: bytes, obj: Obj) -> asyncio.Future[None]:
        """Store a version this node just coordinated (already merged with the local one).

        Not a coroutine on purpose: the write is applied to the table *now*, so the next
        request for the key, even in the same loop turn, builds on it. (Deferring it to a
        task let two concurrent puts both start from the old version and mint the same dot,
        and one of the two siblings was lost.) The future completes once it is durable.
        """
        return self._store(partition, key, self.read(partition, key), obj)

    def _store(self, partition: int, key: bytes, old: Obj | None, new: Obj) -> asyncio.Future[None]:
        durable = self.engine.put(partition, key, vclock.encode(new))
        if self.hooks:
            hooks = self.hooks

            def after(f: asyncio.Future[None]) -> None:
                # Hooks (Merkle trees) follow what is durable: a failed write changed nothing.
                if not f.cancelled() and f.exception() is None:
                    for hook in hooks:
                        hook(partition, key, old, new)

            durable.add_done_callback(after)
        return durable

    async def forget(self, partition: int, key: bytes, expected_digest: int) -> bool:
        """Remove a collected tombstone, but only if the local version is still exactly the
        one that was checked (a write that raced the collection must survive)."""
        local = self.read(partition, key)
        if local is None or vclock.digest(local) != expected_digest or not vclock.is_deleted(local):
            return False
        await self.engine.delete(partition, key)
        for hook in self.hooks:
            hook(partition, key, local, None)
        return True
