"""The bucket registry of one node: durable, spread to every member, looked up per request.

Why its own exchange rather than the ring's metadata or SWIM's: the ring document changes
only through the claimant's two-phase ring changes (handoff, commit) and its version means
"ownership moved"; folding bucket edits into it would start or race ring changes. SWIM's
piggybacked updates are small UDP payloads with bounded retransmits. A bucket registry is
a small last-writer-wins map (kvstore.core.bucket.merge), so it spreads the way the ring
view already does: a push to every member on each change, and a periodic pull from one
random live member (digests compared first, the document sent only when they differ), so a
member that missed the push, or was down, converges within ``bucket_sync_interval_s``.
Stored in the engine's metadata, so a restarted node serves its buckets at once.

Changes go through the claimant (the lowest-named live member of the ring, as joins do),
so versions of one cluster are minted in one place; if two claimants overlap (a
partition), the larger version wins everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import msgpack

from kvstore.config import Settings
from kvstore.core import bucket as b
from kvstore.core import messages as m
from kvstore.core.bucket import BucketProps, Entry
from kvstore.errors import ChangeRefused, InvalidRequest, KVError, Unavailable, UnknownBucket
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.rpc import RpcClient
from storage.engine import Engine

log = logging.getLogger("kvstore.buckets")

META_KEY = b"buckets.registry"
# Keys checked between two yields to the event loop while counting a bucket's keys.
_SCAN_CHUNK = 20_000


class BucketRegistry:
    def __init__(self, settings: Settings, view: ClusterView, engine: Engine, rpc: RpcClient) -> None:
        self.s = settings
        self.view = view
        self.engine = engine
        self.rpc = rpc
        self.cluster_limits = settings.limits
        self.default = b.default_props(settings.limits, settings.r, settings.w, settings.conflict)
        self.doc: dict[str, Entry] = {}
        self._digest = b.digest(self.doc)
        self._rng = random.Random()
        # Called with the name of each bucket whose properties changed here.
        self.listeners: list[Callable[[str], None]] = []

    # ------------------------------------------------------------------ lookups
    def props(self, bucket: str | None) -> BucketProps:
        """The properties of ``bucket`` (None or "default": the default bucket)."""
        if bucket is None:
            return self.default
        e = self.doc.get(bucket)
        if e is None:
            if bucket == b.DEFAULT:
                return self.default
            raise UnknownBucket(f"no bucket {bucket!r} (create it with `kv bucket create {bucket}`)", bucket=bucket)
        return e.props

    def lww_of(self, skey: bytes) -> bool:
        """Whether the bucket of storage key ``skey`` keeps only the newest write (the
        replica's merge asks; an unknown bucket keeps siblings, losing nothing)."""
        name, _ = b.split_storage_key(skey)
        e = self.doc.get(name)
        return e is not None and e.props.lww

    def limits(self, props: BucketProps) -> m.Limits:
        return props.limits(self.cluster_limits)

    # ------------------------------------------------------------------ persistence
    def load(self) -> None:
        raw = self.engine.meta_get(META_KEY)
        if raw is not None:
            try:
                self.doc = b.doc_from_wire(msgpack.unpackb(raw, raw=False))
            except (KVError, ValueError, TypeError) as e:
                # Peers hold the same document: start empty and take theirs.
                log.warning("stored bucket registry unreadable (%s); taking the cluster's", e)
                self.doc = {}
        self._digest = b.digest(self.doc)

    async def _adopt(self, other: dict[str, Entry]) -> bool:
        merged = b.merge(self.doc, other)
        changed = [n for n, e in merged.items() if self.doc.get(n) != e]
        if not changed:
            return False
        self.doc = merged
        self._digest = b.digest(merged)
        await self.engine.meta_put(META_KEY, msgpack.packb(b.doc_to_wire(merged), use_bin_type=True))
        for name in changed:
            log.info("bucket %s: %s", name, merged[name].props)
            for cb in self.listeners:
                cb(name)
        return True

    # ------------------------------------------------------------------ RPC handlers
    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            m.BUCKET_CREATE: self.create,
            m.BUCKET_SET: self.set,
            m.BUCKET_SHOW: self.show,
            m.BUCKET_LIST: self.list_all,
            m.BUCKET_SYNC: self.sync,
            m.BUCKET_COUNT: self.count,
        }

    def show(self, name: Any) -> dict[str, Any]:
        return self.props(None if name is None else m.as_str(name, "bucket")).to_wire()

    def list_all(self) -> list[dict[str, Any]]:
        return [self.default.to_wire()] + [e.props.to_wire() for _, e in sorted(self.doc.items())]

    async def create(self, name: Any, props: Any = None, hops: Any = 0) -> dict[str, Any]:
        """Make a bucket (its unnamed properties are the cluster's settings)."""
        bucket = b.check_name(name)
        if bucket == b.DEFAULT:
            raise InvalidRequest("the default bucket exists already; its properties are the cluster's settings")
        changes = _changes(props)
        forwarded = await self._via_claimant(m.BUCKET_CREATE, [bucket, changes], hops)
        if forwarded is not None:
            return forwarded
        if bucket in self.doc:
            raise InvalidRequest(f"bucket {bucket!r} exists already (change it with `kv bucket set`)")
        new = b.validate(b.new_props(bucket, changes, self.default), self.cluster_limits)
        await self._commit(new)
        return new.to_wire()

    async def set(self, name: Any, props: Any, hops: Any = 0) -> dict[str, Any]:
        """Change properties of an existing bucket, refusing what cannot be changed live."""
        bucket = b.check_name(name)
        if bucket == b.DEFAULT:
            raise ChangeRefused("the default bucket's properties are the cluster's settings (kvstore.config)")
        changes = _changes(props)
        if not changes:
            raise InvalidRequest("no property to change")
        forwarded = await self._via_claimant(m.BUCKET_SET, [bucket, changes], hops)
        if forwarded is not None:
            return forwarded
        old = self.props(bucket)
        new = b.validate(b.new_props(bucket, changes, old), self.cluster_limits)
        fixed = [p for p in b.LIVE_ONLY_WHEN_EMPTY if getattr(new, p) != getattr(old, p)]
        if fixed:
            keys = await self._cluster_count(bucket)
            if keys:
                raise ChangeRefused(
                    f"bucket {bucket!r} holds keys ({keys} stored copies found on the members): its {' and '.join(fixed)} cannot change on a live "
                    "cluster (existing keys would be under-replicated or misread); create a new bucket and copy "
                    "the keys into it",
                    bucket=bucket, copies=keys,
                )
        await self._commit(new)
        return new.to_wire()

    async def sync(self, digest: Any, doc: Any = None) -> Any:
        """A peer's pull: its digest, and its document when it has changes to give. Answers
        with this node's document only when the digests differ."""
        if doc is not None:
            await self._adopt(b.doc_from_wire(doc))
        if digest == self._digest:
            return None
        return b.doc_to_wire(self.doc)

    async def count(self, name: Any) -> int:
        """Keys of ``name`` stored on this node (tombstones included: they are keys until
        collected). A scan of the in-memory table, for the rare admin change that needs it."""
        prefix = b.storage_key(b.check_name(name), b"")
        n = 0
        seen = 0
        for p in self.engine.partitions():
            for key, _ in self.engine.iter_partition(p):
                if key.startswith(prefix):
                    n += 1
                seen += 1
                if seen % _SCAN_CHUNK == 0:
                    await asyncio.sleep(0)
        return n

    # ------------------------------------------------------------------ changes
    def _claimant(self) -> str | None:
        ring = self.view.ring
        if ring is None:
            return None
        live = [n for n in ring.members if self.view.is_up(n)]
        return live[0] if live else None

    async def _via_claimant(self, method: str, params: list[Any], hops: Any) -> dict[str, Any] | None:
        claimant = self._claimant()
        if claimant is None:
            raise Unavailable("this node has not joined a ring yet", required=1)
        if claimant == self.view.name or hops:
            return None
        doc = await self.rpc.call(self.view.addr_of(claimant), method, [*params, 1], 10.0)
        # Take the change at once, so a read of the bucket here right after sees it.
        await self._pull_from(self.view.addr_of(claimant))
        return doc  # type: ignore[no-any-return]

    async def _cluster_count(self, bucket: str) -> int:
        """Keys of ``bucket`` on every member; Unavailable if any member cannot say."""
        total = await self.count(bucket)
        for n in self.view.members():
            if n == self.view.name:
                continue
            try:
                total += int(await self.rpc.call(self.view.addr_of(n), m.BUCKET_COUNT, [bucket], 30.0))
            except KVError as e:
                raise Unavailable(
                    f"cannot tell whether bucket {bucket!r} is empty: {n} did not answer ({e}); retry when every "
                    "member is up", required=1,
                ) from None
        return total

    async def _commit(self, props: BucketProps) -> None:
        top = max((e.counter for e in self.doc.values()), default=0)
        await self._adopt({props.name: Entry(props, top + 1, self.view.name)})
        await self._push()

    async def _push(self) -> None:
        wire = b.doc_to_wire(self.doc)

        async def one(n: str) -> None:
            try:
                await self.rpc.call(self.view.addr_of(n), m.BUCKET_SYNC, [self._digest, wire], 2.0)
            except KVError as e:
                log.info("bucket registry push to %s failed (the periodic pull will bring it): %s", n, e)

        await asyncio.gather(*(one(n) for n in self.view.members() if n != self.view.name))

    async def _pull_from(self, addr: str) -> None:
        doc = await self.rpc.call(addr, m.BUCKET_SYNC, [self._digest, None], 2.0)
        if doc is not None:
            await self._adopt(b.doc_from_wire(doc))

    async def run(self) -> None:
        """Pull from one random live member every ``bucket_sync_interval_s``."""
        while True:
            await asyncio.sleep(self.s.bucket_sync_interval_s)
            others = [n for n in self.view.members() if n != self.view.name and self.view.is_up(n)]
            if not others:
                continue
            try:
                await self._pull_from(self.view.addr_of(self._rng.choice(others)))
            except KVError as e:
                log.debug("bucket registry pull: %s", e)


def _changes(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidRequest("bucket properties must be a map of name to value")
    out = {m.as_str(k, "property"): v for k, v in raw.items()}
    if "name" in out:
        raise InvalidRequest("a bucket's name is not a property (create a new bucket instead)")
    return out
