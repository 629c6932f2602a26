"""Ownership handoff: when the ring changes, each node pulls the partitions it is gaining.

A ring change (join or leave) first installs ``next`` beside ``ring``. Every node that is a
replica of a partition in ``next`` but not in ``ring`` pulls that partition from a current
replica, in bounded batches in key order, merging each record with vector clocks. Pulling
(not pushing) gives back-pressure for free and makes resumption simple: the receiver's
progress (per partition, the last key merged) is persisted in metadata, so a crash of either
side resumes where it stopped. Writes during the change go to old and new replicas, so
once a partition's stream has been read to the end the new replica has everything.

When every member reports its transfers done, the change is committed by the lowest-named
live member (deterministic, so a double commit is harmless) and ``next`` becomes ``ring``.
After a grace period each node drops the partitions it no longer replicates.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from kvstore.config import Settings
from kvstore.core import messages as m
from kvstore.core import vclock
from kvstore.core.ring import Ring
from kvstore.errors import InvalidRequest, KVError
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.replica import Replica
from kvstore.runtime.rpc import RpcClient
from storage.engine import Engine

log = logging.getLogger("kvstore.handoff")

FETCH = m.HANDOFF_FETCH
STATUS = m.HANDOFF_STATUS
PROGRESS_PREFIX = b"handoff/"


@dataclass
class Transfers:
    """This node's inbound transfers for one pending ring version."""

    version: int
    # partition -> the old replicas it is pulled from (every one of them, see _plan)
    needed: dict[int, tuple[str, ...]] = field(default_factory=dict)
    cursor: dict[tuple[int, str], bytes] = field(default_factory=dict)  # last key merged
    pulled: dict[int, set[str]] = field(default_factory=dict)  # sources read to the end
    done: set[int] = field(default_factory=set)
    keys_moved: int = 0

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.needed)


class Handoff:
    def __init__(
        self,
        settings: Settings,
        view: ClusterView,
        replica: Replica,
        engine: Engine,
        rpc: RpcClient,
        *,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self.s = settings
        self.view = view
        self.replica = replica
        self.engine = engine
        self.rpc = rpc
        self.name = view.name
        self.current: Transfers | None = None
        # Records merged through handoff since start, across ring changes (metrics).
        self.keys_received = 0
        self._wake = asyncio.Event()
        self._rng = random.Random()
        # Told of each partition whose data this node dropped (anti-entropy forgets its tree).
        self.on_dropped = on_dropped

    # ------------------------------------------------------------------ serving side
    def fetch(self, p: Any, after: Any, limit: Any) -> list[Any]:
        """The next ``limit`` records of partition ``p`` after key ``after``, in key order,
        and whether there are more."""
        p = m.check_partition(p)
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InvalidRequest("limit must be in 1..10000")
        start = b"" if after is None else (after.encode() if isinstance(after, str) else bytes(after))
        keys = sorted(k for k, _ in self.engine.iter_partition(p) if k > start)
        out: list[list[bytes]] = []
        size = 0
        taken = 0
        # Bounded by bytes too: 500 records of a few MiB each is a reply no frame can carry,
        # and the transfer would stall on it forever. One record always goes.
        for k in keys[:limit]:
            rec = self.engine.get(p, k)
            if rec is not None:
                if out and size + len(k) + len(rec) > self.s.handoff_batch_bytes:
                    break
                out.append([k, rec])
                size += len(k) + len(rec)
            taken += 1
        return [out, len(keys) > taken]

    def status(self) -> dict[str, Any]:
        nxt = self.view.next
        t = self.current
        if nxt is None:
            return {"pending": False, "version": self.view.version, "needed": 0, "done": 0, "keys_moved": 0, "complete": True}
        if t is None or t.version != nxt.version:
            return {"pending": True, "version": nxt.version, "needed": -1, "done": 0, "keys_moved": 0, "complete": False}
        return {
            "pending": True,
            "version": t.version,
            "needed": len(t.needed),
            "done": len(t.done),
            "keys_moved": t.keys_moved,
            "complete": t.complete,
            "partitions_left": sorted(set(t.needed) - t.done)[:20],
        }

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {FETCH: self.fetch, STATUS: self.status}

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ pulling side
    def _plan(self, ring: Ring, nxt: Ring) -> dict[int, tuple[str, ...]]:
        """Partitions gained, each with all its old replicas as sources. One source is not
        enough: a write acknowledged by W of the N old replicas may be missing on any one of
        them, and the old replicas that lose the partition drop it without merging."""
        n = self.view.n
        needed: dict[int, tuple[str, ...]] = {}
        for p in range(nxt.partitions):
            new = nxt.preference_list(p, n)
            old = ring.preference_list(p, n)
            if self.name in new and self.name not in old:
                needed[p] = old
        return needed

    def _enough(self, t: Transfers, p: int) -> bool:
        """Pulled from every old replica that is up, and from at least N-W+1 of them: any
        N-W+1 of the old replicas hold every write acknowledged with the cluster's W."""
        sources = t.needed[p]
        got = t.pulled.get(p, set())
        if any(src not in got and self.view.is_up(src) for src in sources):
            return False
        return len(got) >= min(len(sources), max(1, self.view.n - self.s.w + 1))

    def _load_progress(self, version: int) -> Transfers:
        t = Transfers(version)
        raw = self.engine.meta_get(PROGRESS_PREFIX + b"%d" % version)
        if raw is not None:
            doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            t.cursor = {(int(p), str(src)): bytes(c) for p, src, c in doc.get("cursor", [])}
            t.pulled = {int(p): {str(x) for x in srcs} for p, srcs in doc.get("pulled", [])}
            t.done = {int(p) for p in doc.get("done", [])}
            t.keys_moved = int(doc.get("keys_moved", 0))
        return t

    async def _save_progress(self, t: Transfers) -> None:
        doc = {
            "cursor": [[p, src, c] for (p, src), c in sorted(t.cursor.items())],
            "pulled": [[p, sorted(srcs)] for p, srcs in sorted(t.pulled.items())],
            "done": sorted(t.done),
            "keys_moved": t.keys_moved,
        }
        await self.engine.meta_put(PROGRESS_PREFIX + b"%d" % t.version, msgpack.packb(doc, use_bin_type=True))

    async def _clear_stale(self, t: Transfers, p: int) -> None:
        """Before the first record of a gained partition is merged, drop whatever this node
        still holds of it from an earlier ownership (a drop cut short by a restart): that copy
        predates deletes whose tombstones have since been collected, and merging the fresh
        stream into it would bring those keys back."""
        if t.pulled.get(p) or any(pp == p for pp, _ in t.cursor):
            return  # this transfer already started on a clean partition
        if self.engine.count(p):
            self.replica.new_epoch()  # it forgets versions it may have coordinated
            n = await self.engine.drop_partition(p)
            if self.on_dropped is not None:
                self.on_dropped(p)
            log.info("partition %d: dropped %d stale keys kept from an earlier ownership", p, n)

    async def _pull_partition(self, t: Transfers, p: int) -> bool:
        await self._clear_stale(t, p)
        for src in t.needed[p]:
            if src == self.name or src in t.pulled.get(p, set()) or not self.view.is_up(src):
                continue
            await self._pull_from(t, p, src)
        if self._enough(t, p):
            t.done.add(p)
            await self._save_progress(t)
            return True
        return False

    async def _pull_from(self, t: Transfers, p: int, src: str) -> bool:
        addr = self.view.addr_of(src)
        while True:
            after = t.cursor.get((p, src))
            try:
                records, more = await self.rpc.call(addr, FETCH, [p, after, self.s.handoff_batch_keys], 10.0)
            except KVError as e:
                log.info("handoff of partition %d from %s paused: %s", p, src, e)
                return False
            for k, rec in records:
                await self.replica.merge_in(p, bytes(k), vclock.decode(bytes(rec)))
                t.cursor[(p, src)] = bytes(k)
                t.keys_moved += 1
                self.keys_received += 1
            if not more:
                t.pulled.setdefault(p, set()).add(src)
            await self._save_progress(t)
            if not more:
                return True
            await asyncio.sleep(0)  # let client traffic through between batches

    async def run(self) -> None:
        """Forever: whenever a ring change is pending, pull what this node gains."""
        while True:
            nxt, ring = self.view.next, self.view.ring
            if nxt is not None and ring is not None:
                t = self.current
                if t is None or t.version != nxt.version:
                    t = self._load_progress(nxt.version)
                    t.needed = self._plan(ring, nxt)
                    t.done &= set(t.needed)
                    self.current = t
                    log.info("ring change to v%d: %d partitions to pull", nxt.version, len(t.needed))
                for p in sorted(set(t.needed) - t.done):
                    if self.view.next is not nxt:
                        break
                    await self._pull_partition(t, p)
                if t.complete:
                    await self._save_progress(t)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ after commit
    async def drop_unowned(self) -> int:
        """Drop partitions this node replicates in neither the ring nor a pending change."""
        ring = self.view.ring
        if ring is None:
            return 0
        keep = ring.replicas_of(self.name, self.view.n)
        if self.view.next is not None:
            keep |= self.view.next.replicas_of(self.name, self.view.n)
        gone = [p for p in self.engine.partitions() if p not in keep]
        if not gone:
            return 0
        # This node forgets versions it coordinated: its future writes need a new actor id.
        self.replica.new_epoch()
        dropped = 0
        for p in gone:
            dropped += await self.engine.drop_partition(p)
        if dropped:
            log.info("dropped %d keys of partitions no longer replicated here", dropped)
        return dropped
