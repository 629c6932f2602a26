"""Active anti-entropy: Merkle-tree exchanges between replicas, and tombstone collection.

Trees. Each partition this node stores has a :class:`~kvstore.core.merkle.MerkleTree` over
``(key, vclock.digest(obj))``. It is kept current by a :class:`Replica` hook on every
stored change (O(1) per write); nothing rescans the store per exchange. At construction
the component takes a shallow copy of the whole table (before the node serves, so no write
is half-done: a write changes the table first and calls the hook after it is persisted) and
creates an empty tree per partition; hooks apply their deltas to those trees at once, and a
background builder adds the copied ``(key, digest)`` terms, yielding to the loop every few
thousand keys. Leaf hashes are sums, so the order of the two does not matter; a partition
serves exchanges once its builder pass is done.

Exchanges. Every ``aae_interval_s`` the node asks each live peer for the roots of the
partitions both replicate (one ``aae.roots`` call per peer) and notes agreement. Where
roots differ it starts an exchange — at most ``aae_exchanges_per_min`` per minute — that
descends only into differing subtrees (``aae.level``, one round trip per level), lists the
``(key, digest)`` pairs of the differing leaf buckets on both sides (``aae.entries``) and,
for each key that differs, pulls the peer's record (``replica.get``), merges it locally with
vector clocks and pushes the merge back (``replica.put``) unless the peer already has it.
Repairs are paced by a token bucket of ``aae_max_repairs_per_s``.

Self-check. While listing its own entries a node recomputes the leaf hashes of those
buckets from the store. A mismatch that outlives in-flight writes means a hook was missed
(for example a write cancelled between storing and its hook); the partition's tree is then
rebuilt, with a settling window in which hooks of writes that the rebuild's copy already
contains are not counted twice.

Alone. A node that is its ring's only member (no ring change pending) has no one to compare
a tree with, whatever N is: while so, the first write makes it drop its trees and keep none
(a tenth of a single node's put), tombstones are still tracked, and nothing is exported or
answered as ready. The first write or round after another member appears builds every
partition's tree again from a copy of the table, as a rebuild does (with its settling window).

Tombstones. A delete is a tombstone sibling. Collecting it too early resurrects the value
on a replica that missed the delete. So the first node of a partition's preference list
collects a tombstone-only key only when ``tombstone_grace_s`` has passed since its newest
sibling, no ring change is pending, and every replica in the preference list answers with
the very same tombstone (same digest); then each replica is told ``aae.forget`` and deletes
the key only if its version still has that digest. Any replica down or different: nothing
happens (hints and anti-entropy first bring it the tombstone).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Final

import msgpack

from kvstore.config import Settings
from kvstore.core import merkle, vclock
from kvstore.core import messages as m
from kvstore.core.merkle import MerkleTree
from kvstore.core.ring import Ring
from kvstore.core.vclock import Obj, record_digest
from kvstore.errors import InvalidRequest, KVError
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.replica import Replica
from kvstore.runtime.rpc import RpcClient
from storage.engine import Engine

log = logging.getLogger("kvstore.antientropy")

__all__ = [
    "ENTRIES",
    "FORGET",
    "LEVEL",
    "ROOT",
    "ROOTS",
    "STATUS",
    "AntiEntropy",
    "TokenBucket",
]

ROOT: Final = m.AAE_ROOT
ROOTS: Final = m.AAE_ROOTS
LEVEL: Final = m.AAE_LEVEL
ENTRIES: Final = m.AAE_ENTRIES
FORGET: Final = m.AAE_FORGET
STATUS: Final = m.AAE_STATUS

# The builder yields to the loop after this many keys, so client requests are not held up
# for more than a few milliseconds while trees are built.
BUILD_YIELD_KEYS: Final = 2000
# Aim for about this many keys per aae.entries answer (well under max_frame_bytes).
ENTRIES_TARGET_KEYS: Final = 5000
# Keys repaired at once within one exchange (each costs one or two round trips).
REPAIR_CONCURRENCY: Final = 32
# A leaf that disagrees with the store is checked again after this long, so that writes
# stored but not yet hooked (a few ms of group commit) are not taken for a missed hook.
RECHECK_DELAY_S: Final = 0.25
# Hooks of writes already contained in a rebuild's copy may arrive for a while after it;
# within this window they are recognised and not counted twice.
SETTLE_S: Final = 30.0
# At most one rebuild per partition per this long (a partition whose keys are always in
# flight must not rebuild in a loop).
REBUILD_MIN_INTERVAL_S: Final = 30.0
# Tombstones checked for collection per tick (each costs N round trips).
GC_CHECKS_PER_TICK: Final = 500

EXPORT_LAYOUT: Final = 1


def _int_list(xs: Any, what: str) -> list[int]:
    if not isinstance(xs, list | tuple):
        raise InvalidRequest(f"{what} must be a list of integers")
    for x in xs:
        if isinstance(x, bool) or not isinstance(x, int):
            raise InvalidRequest(f"{what} must be a list of integers")
    return list(xs)


def _newest_ts(obj: Obj) -> int:
    return max((s.ts for s in obj.siblings), default=0)


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up; time from ``clock`` (s)."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]) -> None:
        self.rate = max(rate, 1e-9)
        self.capacity = max(capacity, 1.0)
        self.clock = clock
        self.tokens = self.capacity
        self.at = clock()

    def _fill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def try_take(self, n: float = 1.0) -> bool:
        self._fill()
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    async def take(self, n: float = 1.0) -> None:
        while not self.try_take(n):
            await asyncio.sleep(max((n - self.tokens) / self.rate, 0.001))


@dataclass(slots=True)
class Counters:
    root_checks: int = 0  # partition roots compared with a peer
    exchanges: int = 0  # exchanges started (descents into a differing tree)
    exchange_errors: int = 0  # exchanges cut short by a peer error or timeout
    keys_covered: int = 0  # keys of partitions whose roots were compared
    keys_compared: int = 0  # (key, digest) pairs compared at the leaf stage
    keys_repaired: int = 0  # keys that changed on this node or its peer through an exchange
    trees_built: int = 0  # builder passes completed (startup and rebuilds)
    trees_rebuilt: int = 0  # rebuilds after a self-check failed
    tombstones_checked: int = 0
    tombstones_collected: int = 0


@dataclass(slots=True)
class _Settle:
    """A rebuild's copy of the partition and the keys hooked since, for double-count checks."""

    copy: dict[bytes, bytes]
    applied: set[bytes]
    until: float


class AntiEntropy:
    """One node's anti-entropy. Construct before the node serves (see module doc)."""

    def __init__(
        self,
        settings: Settings,
        view: ClusterView,
        replica: Replica,
        engine: Engine,
        rpc: RpcClient,
        *,
        wall_ms: Callable[[], int] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.s = settings
        self.view = view
        self.replica = replica
        self.engine = engine
        self.rpc = rpc
        self.name = view.name
        self.wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self.clock = clock or time.monotonic
        self.counters = Counters()
        # Duration of the last builder pass (metrics: kvstore_aae_tree_build_seconds).
        self.last_build_s = 0.0
        self._trees: dict[int, MerkleTree] = {}
        self._empty = MerkleTree()  # read-only stand-in for partitions with no tree yet
        self._building: set[int] = set()
        # partition -> copy of its table taken when construction or a rebuild started.
        self._to_build: dict[int, dict[bytes, bytes]] = {}
        self._settle: dict[int, _Settle] = {}
        self._rebuilt_at: dict[int, float] = {}
        # Tombstone-only keys: (partition, key) -> ts (ms) of their newest sibling.
        self._tombs: dict[tuple[int, bytes], int] = {}
        # (partition, peer) -> clock() of the last time both had the same root.
        self._agreed: dict[tuple[int, str], float] = {}
        self._last_exchange: dict[tuple[int, str], float] = {}
        per_s = settings.aae_exchanges_per_min / 60.0
        # Refill tokens continuously; the burst is what one interval earns, so no minute
        # ever sees much more than aae_exchanges_per_min starts.
        self._exchange_tokens = TokenBucket(
            per_s, max(1.0, per_s * settings.aae_interval_s), self.clock
        )
        self._repair_tokens = TokenBucket(
            settings.aae_max_repairs_per_s, settings.aae_max_repairs_per_s, self.clock
        )
        self._mine_cache: tuple[int, tuple[int, ...]] | None = None
        # True while the node is alone in its ring and keeps no trees (see _alone).
        self._dormant = False
        # _alone's answer and the (ring, pending ring) it was worked out for: every write
        # asks, and the ring changes rarely (a Ring's members are read by name, uncompiled).
        self._alone_for: tuple[Ring | None, Ring | None] = (None, None)
        self._alone_was = False
        self._checks: set[asyncio.Future[None]] = set()
        self._closed = False
        for p, d in engine.table().items():
            if d:
                self._to_build[p] = d.copy()
                self._trees[p] = MerkleTree()
                self._building.add(p)
        replica.hooks.append(self._on_change)

    # ------------------------------------------------------------------ trees

    def _tree(self, p: int) -> MerkleTree:
        t = self._trees.get(p)
        if t is None:
            # Nothing stored for p when this component started (or since p was dropped):
            # the hooks alone make it complete.
            t = self._trees[p] = MerkleTree()
        return t

    def _peek(self, p: int) -> MerkleTree:
        """The tree of ``p`` for reading; never creates one (peers choose ``p``)."""
        t = self._trees.get(p)
        return self._empty if t is None else t

    def _part(self, p: Any) -> int:
        part = m.check_partition(p)
        if part >= self.s.partitions:
            raise InvalidRequest(f"partition {part} out of range 0..{self.s.partitions - 1}")
        return part

    def ready(self, p: int) -> bool:
        """The tree of ``p`` holds every key (its builder pass is done)."""
        return not self._dormant and p not in self._building

    def _alone(self) -> bool:
        """Whether this node is the ring's only member, with no ring change pending: no
        partition has a second replica, so there is no one to compare a tree with."""
        ring, nxt = self.view.ring, self.view.next
        seen = self._alone_for
        if ring is seen[0] and nxt is seen[1] and ring is not None:
            return self._alone_was
        alone = False
        if ring is not None and nxt is None:
            members = ring.members
            alone = len(members) == 1 and members[0] == self.name
        self._alone_for = (ring, nxt)
        self._alone_was = alone
        return alone

    def _sleep(self) -> None:
        """Stop keeping trees (see "Alone" in the module doc); tombstones are still tracked."""
        self._dormant = True
        self._trees.clear()
        self._building.clear()
        self._to_build.clear()
        self._settle.clear()
        log.info("anti-entropy: this node is the ring's only member; trees are not kept until another joins")

    def _wake(self) -> None:
        """Keep trees again: each partition's is built from a copy of its table, as a
        rebuild is (hooks of writes the copy holds already are not counted twice)."""
        self._dormant = False
        # Every partition that holds a key is rebuilt (and only those can hold tombstones),
        # so the builder reads all of them from the copies again.
        self._tombs.clear()
        now = self.clock()
        for p, d in self.engine.table().items():
            if d:
                self._start_build(p, now)
        log.info("anti-entropy: the ring has other members; building the trees")

    def _on_change(self, p: int, key: bytes, old: bytes | None, rec: bytes | None, new: Obj | None) -> None:
        if self._alone():
            if not self._dormant:
                self._sleep()
            self._track_tomb(p, key, new)
            return
        if self._dormant:
            self._wake()
        st = self._settle.get(p)
        if st is not None:
            if self.clock() > st.until:
                del self._settle[p]
            elif self._counted_by_rebuild(st, key, new):
                return
            else:
                st.applied.add(key)
        self._tree(p).update(
            key,
            None if old is None else record_digest(old),
            None if rec is None else record_digest(rec),
        )
        self._track_tomb(p, key, new)

    def _track_tomb(self, p: int, key: bytes, new: Obj | None) -> None:
        if new is not None and vclock.is_deleted(new):
            self._tombs[(p, key)] = _newest_ts(new)
        elif self._tombs:  # most of the time there are none: no key tuple to build
            self._tombs.pop((p, key), None)

    @staticmethod
    def _counted_by_rebuild(st: _Settle, key: bytes, new: Obj | None) -> bool:
        """True for the hook of a write that was stored before the rebuild copied the table
        (its result is in the copy already). Stored versions only grow, so such a write's
        result is one the copied version descends; a later write's never is (unless equal,
        a no-op either way)."""
        if key in st.applied:
            return False
        rec = st.copy.get(key)
        if new is None:
            return rec is None  # removed before the copy
        if rec is None:
            return False
        try:
            return vclock.descends(vclock.decode(rec), new)
        except InvalidRequest:
            return False

    def drop(self, p: int) -> None:
        """Forget partition ``p``'s tree (the node dropped the partition's data)."""
        self._trees.pop(p, None)
        self._building.discard(p)
        self._to_build.pop(p, None)
        self._settle.pop(p, None)
        for k in [k for k in self._tombs if k[0] == p]:
            del self._tombs[k]

    def prune(self) -> list[int]:
        """Drop the trees of partitions this node no longer stores nor replicates; call it
        after the node dropped handed-off partitions. Returns the partitions dropped."""
        ring = self.view.ring
        if ring is None:
            return []
        keep = ring.replicas_of(self.name, self.view.n)
        if self.view.next is not None:
            keep |= self.view.next.replicas_of(self.name, self.view.n)
        gone = [p for p in self._trees if p not in keep and self.engine.count(p) == 0]
        for p in gone:
            self.drop(p)
        return gone

    async def _build_pending(self) -> None:
        """Add the copied (key, digest) terms of every partition waiting for its builder."""
        budget = BUILD_YIELD_KEYS
        while self._to_build:
            p = min(self._to_build)
            copy = self._to_build.pop(p)
            tree = self._trees.get(p)
            if tree is None:  # dropped meanwhile
                continue
            for key, rec in copy.items():
                try:
                    digest, tomb_ts = vclock.record_summary(rec)
                except InvalidRequest:
                    log.warning("partition %d: unreadable record for key %r left out of its tree", p, key[:40])
                    continue
                tree.update(key, None, digest)
                if tomb_ts is not None and (p, key) not in self._tombs:
                    self._tombs[(p, key)] = tomb_ts
                budget -= 1
                if budget <= 0:
                    budget = BUILD_YIELD_KEYS
                    await asyncio.sleep(0)
                    if self._trees.get(p) is not tree:
                        break  # dropped or rebuilt while we yielded
            else:
                if self._trees.get(p) is tree:
                    self._building.discard(p)
                    self.counters.trees_built += 1

    def _rebuild(self, p: int) -> None:
        """Start over for ``p`` from a fresh copy of its table (its tree missed a change)."""
        now = self.clock()
        if now - self._rebuilt_at.get(p, -1e9) < REBUILD_MIN_INTERVAL_S:
            return
        self._rebuilt_at[p] = now
        self.counters.trees_rebuilt += 1
        log.warning("partition %d: Merkle tree disagrees with the store; rebuilding it", p)
        for k in [k for k in self._tombs if k[0] == p]:
            del self._tombs[k]
        self._start_build(p, now)

    def _start_build(self, p: int, now: float) -> None:
        """A new tree for ``p``, built from a copy of its table taken now; until ``now`` +
        SETTLE_S, hooks of writes the copy already holds are not counted again."""
        copy = dict(self.engine.table().get(p) or {})
        self._trees[p] = MerkleTree()
        self._building.add(p)
        self._to_build[p] = copy
        self._settle[p] = _Settle(copy, set(), now + SETTLE_S)

    def _entries(self, p: int, buckets: Iterable[int]) -> dict[int, dict[bytes, int]]:
        """bucket -> {key: digest} of this node's keys of ``p`` in ``buckets``, from the store."""
        bucket_of = self._empty.bucket_of
        want = set(buckets)
        out: dict[int, dict[bytes, int]] = {b: {} for b in want}
        for key, rec in self.engine.iter_partition(p):
            b = bucket_of(key)
            if b in want:
                try:
                    out[b][key] = vclock.record_digest(rec)
                except InvalidRequest:
                    continue
        return out

    def _mismatched(self, p: int, by_bucket: dict[int, dict[bytes, int]]) -> list[int]:
        """Buckets whose leaf hash differs from the sum over the store's keys."""
        tree = self._peek(p)
        buckets = sorted(by_bucket)
        leaves = tree.level_hashes(tree.depth, buckets)
        bad = []
        for b, leaf in zip(buckets, leaves, strict=True):
            total = 0
            for key, dg in by_bucket[b].items():
                total += merkle.item_hash(key, dg)
            if total & 0xFFFFFFFFFFFFFFFF != leaf:
                bad.append(b)
        return bad

    async def _self_check(self, p: int, by_bucket: dict[int, dict[bytes, int]]) -> None:
        if not self.ready(p):
            return
        bad = self._mismatched(p, by_bucket)
        if not bad:
            return
        await asyncio.sleep(RECHECK_DELAY_S)
        if self.ready(p) and self._mismatched(p, self._entries(p, bad)):
            self._rebuild(p)

    # ------------------------------------------------------------------ snapshot

    def export(self) -> bytes:
        """Every complete tree and the pending tombstones, tagged with the store's write
        position; call after the store is flushed, right before its snapshot is written."""
        trees = {p: t.to_bytes() for p, t in self._trees.items() if self.ready(p) and t.root()}
        tombs = [[p, k, ts] for (p, k), ts in self._tombs.items() if p in trees]
        return msgpack.packb(  # type: ignore[no-any-return]
            {"layout": EXPORT_LAYOUT, "position": self.engine.position, "trees": trees, "tombs": tombs},
            use_bin_type=True,
        )

    def import_(self, data: bytes) -> bool:
        """Adopt exported trees instead of building them, if they describe exactly this
        store (same write position, nothing written since). Call right after construction.
        False (and nothing changed) otherwise."""
        try:
            doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if doc.get("layout") != EXPORT_LAYOUT or doc.get("position") != self.engine.position:
                return False
            trees = {int(p): MerkleTree.from_bytes(b) for p, b in doc["trees"].items()}
            tombs = [(int(p), bytes(k), int(ts)) for p, k, ts in doc["tombs"]]
        except (KVError, ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException):
            return False
        if set(trees) != set(self._to_build):
            return False  # it must cover exactly the partitions holding data now
        for p, t in trees.items():
            self._trees[p] = t
            self._building.discard(p)
            self._to_build.pop(p, None)
        for p, k, ts in tombs:
            self._tombs[(p, k)] = ts
        return True

    # ------------------------------------------------------------------ RPC handlers

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            ROOT: self.h_root,
            ROOTS: self.h_roots,
            LEVEL: self.h_level,
            ENTRIES: self.h_entries,
            FORGET: self.h_forget,
            STATUS: self.status,
        }

    def h_root(self, p: Any) -> int | None:
        """Root of partition ``p``; None while its tree is still being built."""
        part = self._part(p)
        return self._peek(part).root() if self.ready(part) else None

    def h_roots(self, ps: Any) -> list[int | None]:
        return [self.h_root(p) for p in _int_list(ps, "partitions")]

    def h_level(self, p: Any, level: Any, indices: Any) -> list[int] | None:
        part = self._part(p)
        if not self.ready(part):
            return None
        return self._peek(part).level_hashes(level, _int_list(indices, "indices"))

    def h_entries(self, p: Any, buckets: Any) -> list[list[Any]] | None:
        """[key, digest] of this node's keys of ``p`` in ``buckets``."""
        part = self._part(p)
        if not self.ready(part):
            return None
        want = _int_list(buckets, "buckets")
        leaves = self._empty.leaves
        if any(not 0 <= b < leaves for b in want):
            raise InvalidRequest(f"buckets must be in 0..{leaves - 1}")
        by_bucket = self._entries(part, want)
        # The peer is exchanging because our roots differ: a good moment to check ours.
        self._spawn_check(part, by_bucket)
        return [[k, d] for per in by_bucket.values() for k, d in per.items()]

    async def h_forget(self, p: Any, key: Any, digest: Any) -> bool:
        """Delete a collected tombstone if this node's version still has ``digest``."""
        if isinstance(digest, bool) or not isinstance(digest, int):
            raise InvalidRequest("digest must be an integer")
        return await self.replica.forget(self._part(p), m.as_bytes(key, "key"), digest)

    def status(self) -> dict[str, Any]:
        now = self.clock()
        ages: list[float] = []
        never = 0
        mine = self._mine()
        for p in mine:
            peers = [x for x in self.view.read_preference(p) if x != self.name]
            if not peers:
                continue
            at = [self._agreed.get((p, x)) for x in peers]
            if any(a is None for a in at):
                never += 1
            else:
                ages.append(now - min(a for a in at if a is not None))
        return {
            "node": self.name,
            **asdict(self.counters),
            "trees": len(self._trees),
            "trees_building": len(self._building),
            "dormant": self._dormant,
            "tombstones_pending": len(self._tombs),
            "partitions": len(mine),
            "agreement": {
                "never": never,
                "max_s": round(max(ages), 3) if ages else None,
                "median_s": round(statistics.median(ages), 3) if ages else None,
            },
        }

    # ------------------------------------------------------------------ background loop

    def _spawn_check(self, p: int, by_bucket: dict[int, dict[bytes, int]]) -> None:
        task = asyncio.ensure_future(self._self_check(p, by_bucket))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    def _mine(self) -> tuple[int, ...]:
        """Partitions this node replicates in the current ring."""
        ring = self.view.ring
        if ring is None:
            return ()
        if self._mine_cache is None or self._mine_cache[0] != ring.version:
            mine = tuple(p for p in range(ring.partitions) if self.name in self.view.read_preference(p))
            self._mine_cache = (ring.version, mine)
        return self._mine_cache[1]

    async def run(self) -> None:
        """Build the trees, then forever: compare roots, exchange, collect tombstones."""
        builder = asyncio.ensure_future(self._builder())
        try:
            while not self._closed:
                await asyncio.sleep(self.s.aae_interval_s)
                try:
                    await self.tick()
                except asyncio.CancelledError:
                    raise
                except KVError as e:
                    log.info("anti-entropy round: %s", e)
                except Exception:
                    log.exception("anti-entropy round failed")
        finally:
            builder.cancel()
            for t in list(self._checks):
                t.cancel()

    async def _builder(self) -> None:
        """Runs the builder whenever partitions wait for it (startup, rebuilds)."""
        t0 = time.perf_counter()
        n = self.engine.count()
        await self._build_pending()
        self.last_build_s = time.perf_counter() - t0
        log.info("anti-entropy trees built: %d partitions, %d keys in %.2fs", self.counters.trees_built, n, self.last_build_s)
        while not self._closed:
            await asyncio.sleep(0.2)
            if self._to_build:
                t0 = time.perf_counter()
                await self._build_pending()
                self.last_build_s = time.perf_counter() - t0

    async def tick(self) -> None:
        """One round: root comparisons with every live peer, exchanges where they differ
        (rate-limited), then tombstone collection."""
        if self.view.ring is None:
            return
        if self._dormant and not self._alone():
            self._wake()  # a member joined and no write has come through since
        await self._reset_emptied()
        # An exchange repairs both sides, so of each pair of replicas only the lower-named one
        # starts it: otherwise both would do the same work in the same round.
        due = [(p, peer) for p, peer in await self._compare_roots() if self.name < peer]
        due.sort(key=lambda pp: self._last_exchange.get(pp, -1.0))
        for p, peer in due:
            if not self._exchange_tokens.try_take():
                break
            await self.exchange(p, peer)
        if self.view.next is None:
            await self.collect_tombstones()

    async def _reset_emptied(self) -> None:
        """A partition whose data is gone (dropped after a ring change) but whose tree still
        holds terms gets an empty tree (when the node did not call :meth:`drop`)."""
        stale = [p for p, t in self._trees.items() if self.ready(p) and t.root() and self.engine.count(p) == 0]
        if not stale:
            return
        await asyncio.sleep(RECHECK_DELAY_S)
        for p in stale:
            t = self._trees.get(p)
            if t is not None and self.ready(p) and t.root() and self.engine.count(p) == 0:
                log.info("partition %d: no keys left; resetting its tree", p)
                self.drop(p)

    async def _compare_roots(self) -> list[tuple[int, str]]:
        by_peer: dict[str, list[int]] = {}
        for p in self._mine():
            if not self.ready(p):
                continue
            for x in self.view.read_preference(p):
                if x != self.name and self.view.is_up(x):
                    by_peer.setdefault(x, []).append(p)

        async def ask(peer: str, ps: list[int]) -> list[tuple[int, str]]:
            try:
                theirs = await self.rpc.call(self.view.addr_of(peer), ROOTS, [ps], self.s.request_timeout_s)
            except KVError as e:
                log.debug("roots from %s: %s", peer, e)
                return []
            if not isinstance(theirs, list) or len(theirs) != len(ps):
                return []
            now = self.clock()
            differ = []
            for p, r in zip(ps, theirs, strict=True):
                if r is None or not self.ready(p):
                    continue
                self.counters.root_checks += 1
                self.counters.keys_covered += self.engine.count(p)
                if r == self._peek(p).root():
                    self._agreed[(p, peer)] = now
                else:
                    differ.append((p, peer))
            return differ

        results = await asyncio.gather(*(ask(x, ps) for x, ps in by_peer.items()))
        return [pp for r in results for pp in r]

    async def exchange(self, p: int, peer: str) -> int:
        """Compare partition ``p`` with ``peer`` and repair what differs; returns the number
        of keys repaired."""
        if not self.ready(p):
            return 0
        self.counters.exchanges += 1
        self._last_exchange[(p, peer)] = self.clock()
        addr = self.view.addr_of(peer)
        timeout = self.s.request_timeout_s
        tree = self._tree(p)
        repaired = 0
        try:
            level, ask = 0, [0]
            while ask:
                theirs = await self.rpc.call(addr, LEVEL, [p, level, ask], timeout)
                if theirs is None or self._tree(p) is not tree:
                    return 0  # their tree (or ours) is being built
                ask = tree.differing_children(level, ask, theirs)
                if level == tree.depth:
                    break
                level += 1
            if ask:
                per_call = max(1, ENTRIES_TARGET_KEYS * tree.leaves // max(self.engine.count(p), 1))
                for i in range(0, len(ask), per_call):
                    chunk = ask[i : i + per_call]
                    got = await self.rpc.call(addr, ENTRIES, [p, chunk], timeout * 4)
                    if got is None:
                        return repaired
                    theirs_map = {bytes(k): int(d) for k, d in got}
                    ours_by_bucket = self._entries(p, chunk)
                    ours_map = {k: d for per in ours_by_bucket.values() for k, d in per.items()}
                    self.counters.keys_compared += len(ours_map) + sum(1 for k in theirs_map if k not in ours_map)
                    self._spawn_check(p, ours_by_bucket)
                    keys = merkle.diff_entries(ours_map, theirs_map)
                    repaired += await self._repair(p, addr, keys, theirs_map)
            if await self.rpc.call(addr, ROOT, [p], timeout) == self._peek(p).root():
                self._agreed[(p, peer)] = self.clock()
        except KVError as e:
            self.counters.exchange_errors += 1
            log.info("exchange of partition %d with %s: %s", p, peer, e)
        return repaired

    async def _repair(self, p: int, addr: str, keys: list[bytes], theirs: dict[bytes, int]) -> int:
        sem = asyncio.Semaphore(REPAIR_CONCURRENCY)
        timeout = self.s.request_timeout_s

        async def one(key: bytes) -> bool:
            async with sem:
                await self._repair_tokens.take()
                # Their record only if they have the key; ours is read after the merge.
                rec = await self.rpc.call(addr, m.REPLICA_GET, [p, key], timeout) if key in theirs else None
                local = self.replica.read(p, key)
                remote = vclock.decode(bytes(rec)) if rec is not None else None
                merged = await self.replica.merge_in(p, key, remote) if remote is not None else local
                if merged is None:
                    return False
                changed = merged != local
                if remote is None or vclock.digest(merged) != vclock.digest(remote):
                    await self.rpc.call(addr, m.REPLICA_PUT, [p, key, vclock.encode(merged), None], timeout)
                    changed = True
                return changed

        results = await asyncio.gather(*(one(k) for k in keys), return_exceptions=True)
        n = 0
        for r in results:
            if isinstance(r, BaseException):
                if isinstance(r, asyncio.CancelledError):
                    raise r
                if not isinstance(r, KVError):
                    raise r
                self.counters.exchange_errors += 1
            elif r:
                n += 1
        self.counters.keys_repaired += n
        return n

    # ------------------------------------------------------------------ tombstones

    async def collect_tombstones(self) -> int:
        """Collect old tombstones held identically by every replica, for partitions this
        node leads; returns how many keys were removed here."""
        ring = self.view.ring
        if ring is None or self.view.next is not None or not self._tombs:
            return 0
        cutoff = self.wall_ms() - int(self.s.tombstone_grace_s * 1000)
        todo = [
            (p, k)
            for (p, k), ts in self._tombs.items()
            if ts <= cutoff and self.view.read_preference(p)[0] == self.name
        ][:GC_CHECKS_PER_TICK]
        if not todo:
            return 0
        results = await asyncio.gather(*(self._collect(p, k) for p, k in todo), return_exceptions=True)
        n = 0
        for r in results:
            if r is True:
                n += 1
            elif isinstance(r, BaseException) and not isinstance(r, KVError):
                raise r
        return n

    async def _collect(self, p: int, key: bytes) -> bool:
        local = self.replica.read(p, key)
        if local is None or not vclock.is_deleted(local):
            self._tombs.pop((p, key), None)
            return False
        pref = self.view.read_preference(p)
        peers = [x for x in pref if x != self.name]
        if any(not self.view.is_up(x) for x in peers):
            return False
        self.counters.tombstones_checked += 1
        dg = vclock.digest(local)
        timeout = self.s.request_timeout_s
        try:
            recs = await asyncio.gather(
                *(self.rpc.call(self.view.addr_of(x), m.REPLICA_GET, [p, key], timeout) for x in peers)
            )
        except KVError:
            return False
        for rec in recs:
            if rec is None:
                return False  # a replica lacks it: let anti-entropy bring it the tombstone
            obj = vclock.decode(bytes(rec))
            if not vclock.is_deleted(obj) or vclock.digest(obj) != dg:
                return False
        # Every replica holds this exact tombstone. Each removes it only if unchanged, so
        # a write racing this collection survives (and is then pushed back by exchanges).
        await asyncio.gather(
            *(self.rpc.call(self.view.addr_of(x), FORGET, [p, key, dg], timeout) for x in peers),
            return_exceptions=True,
        )
        if await self.replica.forget(p, key, dg):
            self.counters.tombstones_collected += 1
            return True
        return False

    async def close(self) -> None:
        self._closed = True
        for t in list(self._checks):
            t.cancel()
        if self._checks:
            await asyncio.gather(*self._checks, return_exceptions=True)
