"""Hinted handoff: writes held for a replica that was down, delivered when it is back.

A hint is the record a down primary should have received, kept in this node's metadata
keyspace (never in the data table, so it is not served by reads here) under
``hint/<len><target><partition><key>`` (see :func:`hint_key`) with the time it was first
stored. Hints for one key merge with vector clocks, so repeated writes while the target is
down cost one hint.

Delivery runs in the background: for each target that is up again, hints go in batches of
at most ``hint_batch_keys`` hints and ``hint_batch_bytes`` bytes (a larger hint goes alone)
through one ``replica.put_batch`` call, and are deleted only after the target acknowledged
them (it persists before acknowledging). A batch that fails because the target cannot be
reached leaves its hints in place for the next round; one refused for any other reason is
retried hint by hint, so one bad hint never holds back the others, and a hint refused as
invalid on its own is logged, counted and set aside until the ring changes (it is never
dropped for it: expiry takes it if it is never taken).

Expiry (``hint_max_age_s`` since first stored) is checked right before each send, because
``tombstone_grace_s`` is only safe against hints that are never sent late (see config.py).

A hint whose target no longer replicates its partition (the ring changed while it was held)
is handed to the partition's current replicas instead: merged here if this node is one, kept
as a hint for each of the others, keeping its first-stored time. The store is bounded by
``max_hints``; what it turns away is logged and counted, and anti-entropy repairs it.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from kvstore.config import Settings
from kvstore.core import messages as m
from kvstore.core import vclock
from kvstore.core.vclock import Obj
from kvstore.errors import (
    InvalidRequest,
    KVError,
    ProtocolError,
    StorageError,
    Timeout,
    Unavailable,
    UnknownMethod,
    Unreachable,
)
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.replica import Replica
from kvstore.runtime.rpc import RpcClient
from storage.engine import Engine

log = logging.getLogger("kvstore.hints")

PREFIX = b"hint/"
PUT_BATCH = m.REPLICA_PUT_BATCH
DELIVERY_TIMEOUT_S = 10.0
# Counted against hint_batch_bytes for each hint besides its key and record (msgpack
# framing of [partition, key, record]).
_ITEM_OVERHEAD_BYTES = 16
# Errors that say the target (not one hint) cannot take hints now: wait for the next round.
_TARGET_ERRORS = (Unreachable, Timeout, Unavailable, StorageError, UnknownMethod, ProtocolError)

_LEN = struct.Struct(">H")
_PART = struct.Struct(">I")


def target_prefix(target: str) -> bytes:
    """The prefix of every hint key for ``target``. Length-prefixed, so it is never a prefix
    of another target's keys whatever the names contain."""
    t = target.encode("utf-8", "surrogatepass")
    return PREFIX + _LEN.pack(len(t)) + t


def hint_key(target: str, p: int, key: bytes) -> bytes:
    return target_prefix(target) + _PART.pack(p) + key


def parse_hint_key(k: bytes) -> tuple[str, int, bytes]:
    """Inverse of :func:`hint_key`; ValueError for anything else."""
    start = len(PREFIX)
    if not k.startswith(PREFIX) or len(k) < start + _LEN.size:
        raise ValueError("not a hint key")
    (n,) = _LEN.unpack_from(k, start)
    start += _LEN.size
    if len(k) < start + n + _PART.size:
        raise ValueError("truncated hint key")
    target = k[start : start + n].decode("utf-8", "surrogatepass")
    (p,) = _PART.unpack_from(k, start + n)
    return target, p, k[start + n + _PART.size :]


def _unpack_hint(val: bytes) -> tuple[float, bytes]:
    """``(first stored, record)`` of a stored hint; ValueError if it is not one."""
    try:
        d = msgpack.unpackb(val)
    except Exception:
        raise ValueError("hint value is not msgpack") from None
    if (
        not isinstance(d, list)
        or len(d) != 2
        or isinstance(d[0], bool)
        or not isinstance(d[0], int | float)
        or not isinstance(d[1], bytes)
    ):
        raise ValueError("hint value is not [since, record]")
    return float(d[0]), d[1]


@dataclass(frozen=True, slots=True)
class _Hint:
    hk: bytes
    p: int
    key: bytes
    since: float
    rec: bytes
    raw: bytes  # the stored value: a hint is deleted only while it is still this

    @property
    def size(self) -> int:
        return len(self.key) + len(self.rec) + _ITEM_OVERHEAD_BYTES


@dataclass
class HintStats:
    stored: int = 0
    delivered: int = 0
    refused_full: int = 0
    expired: int = 0
    failed_batches: int = 0
    # Refused by the target as invalid on their own (set aside, see Hints._parked).
    refused_invalid: int = 0
    # Unreadable here (not a hint of this layout or this cluster): logged and dropped.
    unreadable: int = 0
    # Handed to the partition's current replicas because the target no longer is one.
    rerouted: int = 0


class Hints:
    def __init__(
        self,
        settings: Settings,
        view: ClusterView,
        engine: Engine,
        rpc: RpcClient,
        replica: Replica,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.s = settings
        self.view = view
        self.engine = engine
        self.rpc = rpc
        self.replica = replica
        self.wall = wall
        self.stats = HintStats()
        # target -> hints stored for it / delivered to it since start (metrics).
        self.stored_to: dict[str, int] = {}
        self.delivered_to: dict[str, int] = {}
        # target -> number of pending hints (the hints themselves live in engine metadata,
        # which the engine keeps in memory too).
        self.pending: dict[str, int] = {}
        # target -> ring version its hints were last checked against for ownership, so a
        # target that stays down is scanned once per ring change, not every round.
        self._checked: dict[str, int] = {}
        # hint key -> (stored value, ring version) of hints the target refused on their own:
        # skipped until the hint or the ring changes.
        self._parked: dict[bytes, tuple[bytes, int]] = {}
        unreadable = 0
        for k, _ in engine.meta_iter(PREFIX):
            try:
                target, _, _ = parse_hint_key(k)
            except ValueError:
                unreadable += 1
                continue
            self.pending[target] = self.pending.get(target, 0) + 1
        if unreadable:
            log.warning("ignoring %d hint keys in an unknown layout", unreadable)

    @property
    def total(self) -> int:
        return sum(self.pending.values())

    async def store(self, target: str, p: int, key: bytes, obj: Obj, *, since: float | None = None) -> None:
        """Durably keep ``obj`` for ``target``; raises Unavailable when the store is full.

        ``since`` carries the first-stored time of a hint being handed on: expiry must count
        from the write that made it, not from the hand-over.
        """
        hk = hint_key(target, p, key)
        old = self.engine.meta_get(hk)
        if old is None:
            if self.total >= self.s.max_hints:
                self.stats.refused_full += 1
                if self.stats.refused_full == 1 or self.stats.refused_full % 1000 == 0:
                    log.warning("hint store full (%d hints): refusing hints (%d so far)", self.s.max_hints, self.stats.refused_full)
                raise Unavailable(f"hint store full ({self.s.max_hints} hints)", required=1)
            first = self.wall() if since is None else since
            merged = obj
        else:
            try:
                first, rec = _unpack_hint(old)
                merged = vclock.sync(vclock.decode(rec), obj)
            except (ValueError, KVError) as e:
                log.warning("replacing an unreadable hint for %s (%s)", target, e)
                first, merged = self.wall(), obj
            if since is not None:
                first = min(first, since)
        await self.engine.meta_put(hk, msgpack.packb([first, vclock.encode(merged)], use_bin_type=True))
        if old is None:
            self.pending[target] = self.pending.get(target, 0) + 1
            self.stats.stored += 1
            self.stored_to[target] = self.stored_to.get(target, 0) + 1

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {m.HINTS: lambda: {"node": self.view.name, "pending": self.by_target(), **vars(self.stats)}}

    def by_target(self) -> dict[str, int]:
        return {t: n for t, n in sorted(self.pending.items()) if n}

    # ------------------------------------------------------------------ delivery

    def _owners(self, p: int) -> tuple[str, ...] | None:
        """Who replicates ``p`` now (the pending ring's replicas too); None without a ring."""
        ring = self.view.ring
        if ring is None:
            return None
        owners = ring.preference_list(p, self.s.n_replicas)
        if self.view.next is not None:
            owners += tuple(x for x in self.view.next.preference_list(p, self.s.n_replicas) if x not in owners)
        return owners

    async def _forget(self, target: str, hints: list[_Hint]) -> int:
        """Delete these hints unless a newer write merged into one of them meanwhile."""
        gone = [h.hk for h in hints if self.engine.meta_get(h.hk) == h.raw]
        for k in gone:
            self._parked.pop(k, None)
        if gone:
            await self.engine.meta_write_many((k, None) for k in gone)
            self.pending[target] = max(0, self.pending.get(target, 0) - len(gone))
        return len(gone)

    async def _drop_unreadable(self, target: str, found: list[tuple[bytes, bytes]]) -> None:
        """Delete hints that cannot be read, unless a write replaced one meanwhile."""
        gone = [k for k, val in found if self.engine.meta_get(k) == val]
        if gone:
            await self.engine.meta_write_many((k, None) for k in gone)
            self.pending[target] = max(0, self.pending.get(target, 0) - len(gone))
            self.stats.unreadable += len(gone)
            log.warning("dropped %d unreadable hints for %s", len(gone), target)

    async def _drop_expired(self, target: str, hints: list[_Hint]) -> None:
        n = await self._forget(target, hints)
        self.stats.expired += n
        if n:
            log.warning("dropped %d hints for %s older than %.0fs", n, target, self.s.hint_max_age_s)

    async def _reroute(self, target: str, h: _Hint, owners: tuple[str, ...]) -> None:
        """Hand a hint to the partition's current replicas; it is deleted only once every one
        of them has it (merged here, or kept as a hint for it)."""
        try:
            obj = vclock.decode(h.rec)
        except KVError:
            await self._drop_unreadable(target, [(h.hk, h.raw)])
            return
        try:
            for q in owners:
                if q == self.view.name:
                    await self.replica.merge_in(h.p, h.key, obj)
                else:
                    await self.store(q, h.p, h.key, obj, since=h.since)
        except KVError as e:
            log.info("could not hand on a hint for %s (kept for the next round): %s", target, e)
            return
        if await self._forget(target, [h]):
            self.stats.rerouted += 1

    def _read_window(
        self, target: str, after: bytes | None
    ) -> tuple[list[_Hint], list[tuple[bytes, bytes]], bytes | None]:
        """The next hints of ``target`` after the cursor: (hints, unreadable keys, new cursor)."""
        hints: list[_Hint] = []
        bad: list[tuple[bytes, bytes]] = []
        last = None
        for hk, val in self.engine.meta_iter(target_prefix(target), after=after, limit=self.s.hint_batch_keys):
            last = hk
            try:
                _, p, key = parse_hint_key(hk)
                since, rec = _unpack_hint(val)
            except ValueError:
                bad.append((hk, val))
                continue
            hints.append(_Hint(hk, p, key, since, rec, val))
        return hints, bad, last

    async def _scan(self, target: str, *, send: bool) -> int:
        """One pass over ``target``'s hints: drop what is expired or unreadable, hand on what
        it no longer replicates and, if ``send``, deliver the rest. Returns how many it
        delivered; stops early when the target cannot take hints now."""
        addr = self.view.addrs.get(target)
        delivered = 0
        after: bytes | None = None
        while True:
            hints, bad, after = self._read_window(target, after)
            if after is None:
                return delivered
            if bad:
                await self._drop_unreadable(target, bad)
            cutoff = self.wall() - self.s.hint_max_age_s
            expired = [h for h in hints if h.since < cutoff]
            if expired:
                await self._drop_expired(target, expired)
            todo: list[_Hint] = []
            for h in hints:
                if h.since < cutoff:
                    continue
                try:
                    owners = self._owners(h.p)
                except InvalidRequest:  # a partition outside the ring: not a hint of this cluster
                    await self._drop_unreadable(target, [(h.hk, h.raw)])
                    continue
                if owners is not None and target not in owners:
                    await self._reroute(target, h, owners)
                elif self._parked.get(h.hk) != (h.raw, self.view.version):
                    todo.append(h)
            if send and addr is not None and todo:
                for batch in self._batches(todo):
                    n = await self._send(addr, target, batch)
                    if n is None:
                        return delivered
                    delivered += n
                await asyncio.sleep(0)  # client traffic first

    def _batches(self, hints: list[_Hint]) -> list[list[_Hint]]:
        out: list[list[_Hint]] = []
        cur: list[_Hint] = []
        size = 0
        for h in hints:
            if cur and (size + h.size > self.s.hint_batch_bytes or len(cur) >= self.s.hint_batch_keys):
                out.append(cur)
                cur, size = [], 0
            cur.append(h)
            size += h.size
        if cur:
            out.append(cur)
        return out

    async def _send(self, addr: str, target: str, batch: list[_Hint]) -> int | None:
        """Deliver one batch; how many hints it delivered, None when the target cannot take
        hints now (the rest wait for the next round)."""
        # Checked again here, right before sending: the hints of a window are sent one batch
        # after another, and a hint sent after its age could outlive the tombstone grace.
        cutoff = self.wall() - self.s.hint_max_age_s
        expired = [h for h in batch if h.since < cutoff]
        if expired:
            await self._drop_expired(target, expired)
            batch = [h for h in batch if h.since >= cutoff]
            if not batch:
                return 0
        try:
            await self.rpc.call(addr, PUT_BATCH, [[[h.p, h.key, h.rec] for h in batch]], DELIVERY_TIMEOUT_S)
        except _TARGET_ERRORS as e:
            self.stats.failed_batches += 1
            log.info("hint delivery to %s paused: %s", target, e)
            return None
        except KVError as e:
            self.stats.failed_batches += 1
            if len(batch) > 1:
                # One bad hint must not hold back the others: find it by sending each alone.
                log.info("a batch of %d hints for %s failed (%s); retrying them one by one", len(batch), target, e)
                delivered = 0
                for h in batch:
                    n = await self._send(addr, target, [h])
                    if n is None:
                        return None
                    delivered += n
                return delivered
            h = batch[0]
            if isinstance(e, InvalidRequest):
                # Refused on its own, and not for want of the target: set it aside until the
                # ring changes (it may have been refused by a node that already knows a newer
                # ring) or it changes, instead of resending it every round. Expiry still
                # applies, so a hint that is never taken goes after hint_max_age_s.
                self._parked[h.hk] = (h.raw, self.view.version)
                self.stats.refused_invalid += 1
                log.warning(
                    "a hint for %s (partition %d, key %r, %d bytes) was refused, set aside: %s",
                    target, h.p, h.key[:64], len(h.rec), e,
                )
            else:
                log.info("a hint for %s (key %r) failed, kept for the next round: %s", target, h.key[:64], e)
            return 0
        n = await self._forget(target, batch)
        self.stats.delivered += n
        self.delivered_to[target] = self.delivered_to.get(target, 0) + n
        return n

    async def tick(self) -> int:
        """One round: deliver to each target that is up, and check the hints of the others
        against the ring once per ring version. Returns how many hints it delivered."""
        version = self.view.version
        total = 0
        for target in [t for t, n in self.pending.items() if n]:
            up = target in self.view.addrs and self.view.is_up(target)
            if not up and self._checked.get(target) == version:
                continue
            try:
                n = await self._scan(target, send=up)
            except KVError as e:
                log.warning("hints for %s: %s", target, e)
                continue
            self._checked[target] = version
            if n:
                total += n
                log.info("delivered %d hints to %s (%d left)", n, target, self.pending.get(target, 0))
        return total

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.s.hint_interval_s)
