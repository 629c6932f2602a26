"""TTL: the background sweep that tombstones expired keys through the normal write path.

Reads already leave expired values out (each sibling carries its expiry, kvstore.core.vclock),
so the sweep only reclaims space, and it must never bring anything back. Each node keeps an
index of the keys it stores that will expire (a heap of ``(expires_ms, partition, key)``),
fed by every stored change (the replica's change hook, whatever path the version came by:
coordinator, replication, read repair, hints, handoff, anti-entropy) and, at start, by one
pass over the records whose first byte says they carry expiries. A sweep pops only what is
due: no scan of the store.

A due key is tombstoned by one node: the first live node of its preference list that
stores it; the others look again later, by when the tombstone has reached them (or, if
that node went down, they are first in turn). The tombstone is an ordinary delete with the
context of the local version: it supersedes exactly the expired versions this node holds,
so a newer write it has not seen survives as a sibling, replicas still holding the expired
value merge the tombstone like any other, and tombstone collection follows the usual rules.
A key with a live value that has not expired is left alone until that one expires.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from kvstore.config import Settings
from kvstore.core import bucket as b
from kvstore.core import messages as m
from kvstore.core import vclock
from kvstore.core.bucket import BucketProps
from kvstore.core.vclock import Obj
from kvstore.errors import KVError
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.replica import Replica

if TYPE_CHECKING:
    from kvstore.runtime.coordinator import Coordinator

log = logging.getLogger("kvstore.expiry")

# A node that is not the one to tombstone a due key looks at it again after this long.
RECHECK_MS: Final = 10_000


class Expiry:
    def __init__(
        self,
        settings: Settings,
        view: ClusterView,
        replica: Replica,
        coordinator: Coordinator,
        props: Callable[[str | None], BucketProps],
        *,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        self.s = settings
        self.view = view
        self.replica = replica
        self.c = coordinator
        self.props = props
        self.wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._heap: list[tuple[int, int, bytes]] = []
        # The earliest time each key is in the heap for (later duplicates are not pushed).
        self._due: dict[tuple[int, bytes], int] = {}
        self.swept = 0
        replica.hooks.append(self._on_change)

    def start(self) -> int:
        """Index the expiring keys already stored; returns how many."""
        for p, part in self.replica.engine.table().items():
            for key, rec in part.items():
                if vclock.has_expiry(rec):
                    try:
                        self._schedule(p, key, vclock.next_expiry(vclock.decode(rec)))
                    except KVError:
                        continue
        return len(self._due)

    @property
    def pending(self) -> int:
        return len(self._due)

    def _on_change(self, p: int, key: bytes, _old: bytes | None, rec: bytes | None, new: Obj | None) -> None:
        # The record's first byte says whether it carries expiries: most writes stop here.
        if rec is not None and new is not None and vclock.has_expiry(rec):
            self._schedule(p, key, vclock.next_expiry(new))

    def _schedule(self, p: int, key: bytes, at: int) -> None:
        if not at:
            return
        k = (p, key)
        cur = self._due.get(k)
        if cur is None or at < cur:
            self._due[k] = at
            heapq.heappush(self._heap, (at, p, key))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.s.ttl_sweep_interval_s)
            try:
                await self.sweep()
            except KVError as e:
                log.info("ttl sweep: %s", e)

    async def sweep(self) -> int:
        """Tombstone what is due now (at most ``ttl_sweep_max_keys``); returns how many."""
        now = self.wall_ms()
        heap = self._heap
        writes: list[asyncio.Future[dict[str, object]]] = []
        while heap and heap[0][0] <= now and len(writes) < self.s.ttl_sweep_max_keys:
            at, p, key = heapq.heappop(heap)
            if self._due.get((p, key)) != at:
                continue  # a stale duplicate
            del self._due[(p, key)]
            f = self._expire(p, key, now)
            if f is not None:
                writes.append(f)
        if not writes:
            return 0
        done = await asyncio.gather(*writes, return_exceptions=True)
        ok = sum(1 for r in done if not isinstance(r, BaseException))
        self.swept += ok
        if ok < len(done):
            log.info("ttl sweep: %d of %d tombstones not written (retried later)", len(done) - ok, len(done))
        return ok

    def _expire(self, p: int, key: bytes, now: int) -> asyncio.Future[dict[str, object]] | None:
        local = self.replica.read(p, key)
        if local is None:
            return None
        if vclock.values_at(local, now):
            # A value still live: look again when the next one expires (if any does).
            later = min((s.expires for s in local.siblings if s.value is not None and s.expires > now), default=0)
            self._schedule(p, key, later)
            return None
        if not any(s.value is not None for s in local.siblings):
            return None  # tombstones only: swept already
        ring = self.view.ring
        if ring is None:
            self._schedule(p, key, now + RECHECK_MS)
            return None
        bucket, _ = b.split_storage_key(key)
        try:
            props = self.props(None if bucket == b.DEFAULT else bucket)
        except KVError:
            self._schedule(p, key, now + RECHECK_MS)
            return None
        pref = self.view.read_preference(p)[: props.n]
        first = next((n for n in pref if self.view.is_up(n)), None)
        if first != self.view.name:
            self._schedule(p, key, now + RECHECK_MS)
            return None
        fut = self.c._coordinate_write(
            ring, p, pref, key, None, vclock.context_of(local), m.Options(),
            w=props.w, lww=props.lww, limits=props.limits(self.c.limits),
        )

        def after(f: asyncio.Future[dict[str, object]]) -> None:
            if f.cancelled() or f.exception() is not None:
                self._schedule(p, key, self.wall_ms() + RECHECK_MS)

        fut.add_done_callback(after)
        return fut
