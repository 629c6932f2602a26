"""Hinted handoff: writes held for a replica that was down, delivered when it is back.

A hint is the record a down primary should have received, kept in this node's metadata
keyspace (never in the data table, so it is not served by reads here) under
``hint/<target>/<partition><key>`` with the time it was first stored. Hints for one key
merge with vector clocks, so repeated writes while the target is down cost one hint.

Delivery runs in the background: for each target that is up again, hints go in batches of
``hint_batch_keys`` through one ``replica.put_batch`` call, and are deleted only after the
target acknowledged them (it persists before acknowledging). A batch that fails leaves its
hints in place for the next round. The store is bounded by ``max_hints`` and
``hint_max_age_s``; what they turn away is logged and counted, and anti-entropy repairs it.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from kvstore.config import Settings
from kvstore.core import vclock
from kvstore.core.vclock import Obj
from kvstore.errors import KVError, Unavailable
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.rpc import RpcClient
from storage.engine import Engine

log = logging.getLogger("kvstore.hints")

PREFIX = b"hint/"
PUT_BATCH = "replica.put_batch"


def _hint_key(target: str, p: int, key: bytes) -> bytes:
    return PREFIX + target.encode() + b"/" + struct.pack(">I", p) + key


def _parse_key(k: bytes) -> tuple[str, int, bytes]:
    rest = k[len(PREFIX) :]
    target, _, tail = rest.partition(b"/")
    (p,) = struct.unpack(">I", tail[:4])
    return target.decode(), p, tail[4:]


@dataclass
class HintStats:
    stored: int = 0
    delivered: int = 0
    refused_full: int = 0
    expired: int = 0
    failed_batches: int = 0


class Hints:
    def __init__(
        self,
        settings: Settings,
        view: ClusterView,
        engine: Engine,
        rpc: RpcClient,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.s = settings
        self.view = view
        self.engine = engine
        self.rpc = rpc
        self.wall = wall
        self.stats = HintStats()
        # target -> number of pending hints (the hints themselves live in engine metadata,
        # which the engine keeps in memory too).
        self.pending: dict[str, int] = {}
        for k, _ in engine.meta_iter(PREFIX):
            target, _, _ = _parse_key(k)
            self.pending[target] = self.pending.get(target, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.pending.values())

    async def store(self, target: str, p: int, key: bytes, obj: Obj) -> None:
        """Durably keep ``obj`` for ``target``; raises Unavailable when the store is full."""
        hk = _hint_key(target, p, key)
        old = self.engine.meta_get(hk)
        if old is None:
            if self.total >= self.s.max_hints:
                self.stats.refused_full += 1
                if self.stats.refused_full == 1 or self.stats.refused_full % 1000 == 0:
                    log.warning("hint store full (%d hints): refusing hints (%d so far)", self.s.max_hints, self.stats.refused_full)
                raise Unavailable(f"hint store full ({self.s.max_hints} hints)", required=1)
            since = self.wall()
            merged = obj
        else:
            since, rec = msgpack.unpackb(old)
            merged = vclock.sync(vclock.decode(rec), obj)
        await self.engine.meta_put(hk, msgpack.packb([since, vclock.encode(merged)], use_bin_type=True))
        if old is None:
            self.pending[target] = self.pending.get(target, 0) + 1
            self.stats.stored += 1

    def by_target(self) -> dict[str, int]:
        return {t: n for t, n in sorted(self.pending.items()) if n}

    async def _deliver(self, target: str) -> int:
        prefix = PREFIX + target.encode() + b"/"
        addr = self.view.addr_of(target)
        delivered = 0
        while True:
            batch: list[tuple[bytes, int, bytes, bytes]] = []
            expired: list[bytes] = []
            cutoff = self.wall() - self.s.hint_max_age_s
            for hk, val in self.engine.meta_iter(prefix, limit=self.s.hint_batch_keys * 4):
                since, rec = msgpack.unpackb(val)
                if since < cutoff:
                    expired.append(hk)
                    continue
                _, p, key = _parse_key(hk)
                batch.append((hk, p, key, rec))
                if len(batch) >= self.s.hint_batch_keys:
                    break
            if expired:
                await self.engine.meta_write_many((k, None) for k in expired)
                self.stats.expired += len(expired)
                self.pending[target] = max(0, self.pending.get(target, 0) - len(expired))
                log.warning("dropped %d hints for %s older than %.0fs", len(expired), target, self.s.hint_max_age_s)
            if not batch:
                if expired:
                    continue  # a window of expired hints: there may be live ones after it
                return delivered
            try:
                await self.rpc.call(addr, PUT_BATCH, [[[p, k, rec] for _, p, k, rec in batch]], 10.0)
            except KVError as e:
                self.stats.failed_batches += 1
                log.info("hint delivery to %s paused: %s", target, e)
                return delivered
            # Delete only what we sent, and only if no newer hint replaced it meanwhile.
            sent = {hk: rec for hk, _, _, rec in batch}
            gone = []
            for hk, rec in sent.items():
                cur = self.engine.meta_get(hk)
                if cur is not None and msgpack.unpackb(cur)[1] == rec:
                    gone.append(hk)
            await self.engine.meta_write_many((k, None) for k in gone)
            self.pending[target] = max(0, self.pending.get(target, 0) - len(gone))
            self.stats.delivered += len(gone)
            delivered += len(gone)
            await asyncio.sleep(0)  # client traffic first

    async def run(self) -> None:
        while True:
            for target in [t for t, n in self.pending.items() if n]:
                if target in self.view.addrs and self.view.is_up(target):
                    n = await self._deliver(target)
                    if n:
                        log.info("delivered %d hints to %s (%d left)", n, target, self.pending.get(target, 0))
            await asyncio.sleep(self.s.hint_interval_s)
