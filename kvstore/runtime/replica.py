"""A replica's side of replication: read the local version of a key, merge an incoming one.

Every write to the local store goes through ``merge_in``, so the stored object is always the
vclock merge of everything this node has seen for the key (nothing causally newer is ever
overwritten by something older, whichever path it came by: coordinator, read repair,
handoff or anti-entropy).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgpack

from kvstore.core import messages as m
from kvstore.core import vclock
from kvstore.core.vclock import Obj
from kvstore.errors import DotConflict, InternalError, InvalidRequest, NotOwner, to_wire
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.rpc.later import Gathered, replies_later
from kvstore.runtime.rpc.later import Reply as RpcReply
from storage.engine import Engine, OnDurable

# Keeps a hint: (target, partition, key, version).
KeepHint = Callable[[str, int, bytes, Obj], Awaitable[None]]

# Called after each stored change: (partition, key, old record, new record, new version),
# records as stored (None: absent) — Merkle trees hook in here and hash the records.
ChangeHook = Callable[[int, bytes, bytes | None, bytes | None, Obj | None], None]

log = logging.getLogger("kvstore.replica")


# Written by a clean stop, deleted (durably) by the start that reads it: ``[actor, counter]``.
CLEAN_STOP_KEY: Final = b"replica.clean_stop"


class Replica:
    """``actor`` is the name this node's writes carry in vector clocks: an epoch, 64 random
    bits (``~`` and 11 base64url characters; node names never hold a ``~``). Opaque, as
    Riak's vnode ids: every record carries it, and a short one keeps memory per key down
    (the node logs which actor it writes as). Within one epoch the node mints dot counters from one node-wide sequence
    (``counter``), so a dot is never minted twice, even for a key whose tombstone was
    collected here while a copy survived elsewhere.

    The epoch changes whenever the node may have forgotten versions it coordinated: every
    start that did not follow a clean stop (a crash may lose the un-synced log tail: the
    peers hold writes this node no longer knows it made), any failed storage write (rolled
    back here, perhaps stored by the peers), and dropped partitions. Without that, the next
    blind write of such a key would reuse a dot its peers already hold, and one of the two
    versions would be lost. A clean stop records the actor and its counter; the start that
    resumes them deletes the record durably before coordinating anything, so a crash after
    it is never mistaken for a clean stop.
    """

    def __init__(self, engine: Engine, name: str, *, lww: bool = False) -> None:
        self.engine = engine
        self.name = name
        self.lww = lww
        # Keys of named buckets follow their bucket's conflict mode, not the cluster's
        # (kvstore.runtime.buckets sets this; None: every key follows ``lww``).
        self.bucket_lww: Callable[[bytes], bool] | None = None
        self.hooks: list[ChangeHook] = []
        self.actor = ""
        # The highest dot counter minted under ``actor`` (for any key).
        self.counter = 0
        self._failed_epoch = False

    async def start(self) -> bool:
        """Resume the actor of a clean stop, or take a fresh epoch; True if resumed."""
        raw = self.engine.meta_get(CLEAN_STOP_KEY)
        resumed = False
        if raw is not None:
            try:
                marker = msgpack.unpackb(raw, raw=False)
                if len(marker) == 3:
                    name, actor, counter = marker
                else:  # the marker of a version whose actors were "name~hex"
                    actor, counter = marker
                    name = actor.split("~", 1)[0] if isinstance(actor, str) and "~" in actor else None
                # Only this node's own actor: a data dir moved to another node must not
                # make two nodes write as one.
                resumed = name == self.name and isinstance(actor, str) and bool(actor) and type(counter) is int
            except Exception:  # a damaged marker: not a clean stop
                resumed = False
            if resumed:
                self.actor, self.counter = actor, counter
            await self.engine.meta_delete(CLEAN_STOP_KEY)
            await self.engine.flush()  # synced: a crash from here on must not look clean
        if not resumed:
            self.new_epoch()
        return resumed

    def new_epoch(self) -> str:
        """Write under a fresh actor from now on. Random, so it needs no durable step before
        use: a later start either resumes it from a clean stop or takes another one."""
        self.actor = "~" + secrets.token_urlsafe(8)
        self.counter = 0
        return self.actor

    async def record_clean_stop(self) -> None:
        """At a graceful stop, once every write is durable: the next start may resume."""
        # After a failed write the engine refuses this too: the next start takes a new epoch.
        await self.engine.meta_put(CLEAN_STOP_KEY, msgpack.packb([self.name, self.actor, self.counter]))
        await self.engine.flush()

    def mint(self, local: Obj | None, context: vclock.VV, value: bytes | None, ts: int) -> Obj:
        """The new version of a write this node coordinates (not yet stored)."""
        new = vclock.update(local, context, value, self.actor, ts, self.counter)
        self.counter = new.vv[self.actor]
        return new

    def read(self, partition: int, key: bytes) -> Obj | None:
        rec = self.engine.get(partition, key)
        return None if rec is None else vclock.decode(rec)

    def read_raw(self, partition: int, key: bytes) -> bytes | None:
        return self.engine.get(partition, key)

    def apply(
        self, partition: int, key: bytes, incoming: Obj, record: bytes | None = None,
        on_done: OnDurable | None = None,
    ) -> asyncio.Future[None] | None:
        """Merge ``incoming`` (``record``: its encoding, if at hand) into the local version
        now (visible to the next read at once). The returned future completes when the merge
        is durable, None if nothing changed; with ``on_done``, that is called instead (with
        None or the error; at once if nothing changed) and None is returned. A replica
        acknowledges only after it."""
        return self._merge(partition, key, incoming, record, on_done)[1]

    async def merge_in(self, partition: int, key: bytes, incoming: Obj) -> Obj:
        """``apply`` for coroutines: returns the merged version once it is durable."""
        merged, durable = self._merge(partition, key, incoming)
        if durable is not None:
            await durable
        return merged

    def _merge(
        self, partition: int, key: bytes, incoming: Obj, incoming_rec: bytes | None = None,
        on_done: OnDurable | None = None,
    ) -> tuple[Obj, asyncio.Future[None] | None]:
        old_rec = self.engine.get(partition, key)
        if old_rec is not None and old_rec == incoming_rec:
            # The same canonical bytes: the same version, nothing to merge (a resend).
            if on_done is not None:
                on_done(None)
            return incoming, None
        local = None if old_rec is None else vclock.decode(old_rec)
        try:
            merged = vclock.sync(local, incoming)
        except DotConflict as e:
            log.error("partition %d key %r: %s; both versions kept as they are", partition, key[:64], e)
            raise
        if self.bucket_lww is not None and key[:1] == m.RESERVED_KEY_PREFIX[:1] and key.startswith(m.RESERVED_KEY_PREFIX):
            if self.bucket_lww(key):
                merged = vclock.lww(merged)
        elif self.lww:
            merged = vclock.lww(merged)
        if merged == local:
            if on_done is not None:
                on_done(None)
            return merged, None
        # The incoming record is stored as it came when it is the merge (the usual case: a
        # write that descends the local version), else the merge is encoded once.
        rec = incoming_rec if incoming_rec is not None and merged == incoming else vclock.encode(merged)
        return merged, self._store(partition, key, old_rec, merged, rec, on_done)

    def write_new(
        self, partition: int, key: bytes, old_rec: bytes | None, obj: Obj, record: bytes, on_done: OnDurable
    ) -> None:
        """Store a version this node just coordinated (already merged with the local one).
        ``old_rec`` is the key's record the caller read in the same call, nothing awaited
        since (the write path reads it once).

        Not a coroutine on purpose: the write is applied to the table *now*, so the next
        request for the key, even in the same loop turn, builds on it. (Deferring it to a
        task let two concurrent puts both start from the old version and mint the same dot,
        and one of the two siblings was lost.) ``on_done`` is called once it is durable.
        """
        self._store(partition, key, old_rec, obj, record, on_done)

    def _store(
        self, partition: int, key: bytes, old_rec: bytes | None, new: Obj, record: bytes,
        on_done: OnDurable | None = None,
    ) -> asyncio.Future[None] | None:
        """``record`` is ``encode(new)``: every stored record is that canonical encoding,
        which is what makes a record's hash its version's digest."""
        if on_done is not None:
            self.engine.put(partition, key, record, _Durable(self, partition, key, old_rec, record, new, on_done))
            return None
        durable = self.engine.put(partition, key, record)

        def after(f: asyncio.Future[None]) -> None:
            if not f.cancelled():
                self._stored(partition, key, old_rec, record, new, f.exception())

        durable.add_done_callback(after)
        return durable

    def _stored(
        self, partition: int, key: bytes, old_rec: bytes | None, record: bytes, new: Obj, exc: BaseException | None
    ) -> None:
        if exc is not None:
            # Rolled back here, but the peers may hold what this node coordinated: never
            # mint under this actor again.
            if not self._failed_epoch:
                self._failed_epoch = True
                log.warning("storage write failed: writes coordinated from now on use a new actor epoch")
                self.new_epoch()
            return
        # Hooks (Merkle trees) follow what is durable: a failed write changed nothing.
        for hook in self.hooks:
            hook(partition, key, old_rec, record, new)

    async def forget(self, partition: int, key: bytes, expected_digest: int) -> bool:
        """Remove a collected tombstone, but only if the local version is still exactly the
        one that was checked (a write that raced the collection must survive)."""
        rec = self.engine.get(partition, key)
        if rec is None or vclock.record_digest(rec) != expected_digest or not vclock.is_deleted(vclock.decode(rec)):
            return False
        await self.engine.delete(partition, key)
        for hook in self.hooks:
            hook(partition, key, rec, None, None)
        return True


class ReplicaServer:
    """The replica's side of the ``replica.*`` RPCs: reads, merges of versions a coordinator
    sends (or keeps as hints for another node), and batches of delivered hints. Only
    partitions this node replicates are served or stored (``not_owner`` otherwise)."""

    def __init__(self, replica: Replica, view: ClusterView, keep_hint: KeepHint | None) -> None:
        self.replica = replica
        self.view = view
        self.keep_hint = keep_hint

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            m.REPLICA_GET: self.get,
            m.REPLICA_PUT: self.put,
            m.REPLICA_MANY: self.many,
            m.REPLICA_PUT_BATCH: self.put_batch,
        }

    def _owned(self, p: Any) -> int:
        part = m.check_partition(p)
        view = self.view
        if not view.replicates(part):
            raise NotOwner(
                f"{view.name} does not replicate partition {part} in ring v{view.version}",
                ring_version=view.version,
            )
        return part

    def get(self, p: Any, key: Any) -> bytes | None:
        return self.replica.read_raw(self._owned(p), m.as_bytes(key, "key"))

    def put(self, p: Any, key: Any, record: Any, hint_for: Any = None) -> Any:
        """Merge a version sent by a coordinator; the reply goes once it is durable (a Future,
        so the hot path needs no task). With ``hint_for`` it is kept as a hint instead."""
        part, k, rec, obj, hint = self._incoming(p, key, record, hint_for)
        if hint is not None:
            assert self.keep_hint is not None
            return self.keep_hint(hint, part, k, obj)
        durable = self.replica.apply(self._owned(part), k, obj, rec)
        return True if durable is None else durable

    def _incoming(
        self, p: Any, key: Any, record: Any, hint_for: Any
    ) -> tuple[int, bytes, bytes, Obj, str | None]:
        """A replica put's parameters checked: partition, key, record and its version, and
        the primary to keep it for as a hint (None: merge it here)."""
        part = m.check_partition(p)
        k = m.as_bytes(key, "key")
        rec = m.as_bytes(record, "record")
        obj = vclock.decode(rec, canonical=True)
        hint = m.as_str(hint_for, "hint_for") if hint_for is not None and self.keep_hint is not None else None
        return part, k, rec, obj, hint

    @replies_later
    def many(self, ops: Any, *, reply: RpcReply | None = None) -> Any:
        """One peer's replica ops of one loop turn (kvstore.core.messages.REPLICA_MANY), each
        with its own outcome: one refused op (not owner, malformed) fails only itself. Ops are
        applied in order, so a get after a put of the same key sees it. The reply goes once
        every put in it is durable (they share the turn's storage batch)."""
        if type(ops) is not list or len(ops) > m.MAX_MANY_OPS:
            raise InvalidRequest(f"replica.many takes a list of at most {m.MAX_MANY_OPS} ops")
        return _Many(self, ops, reply).run()

    async def put_batch(self, items: Any) -> int:
        """Hints delivered by a peer: merge each, acknowledge once all are persisted."""
        if not isinstance(items, list):
            raise InvalidRequest("put_batch takes a list of [partition, key, record]")
        decoded = []
        for item in items:
            if not isinstance(item, list) or len(item) != 3:
                raise InvalidRequest("put_batch items are [partition, key, record]")
            p, key, record = item
            decoded.append((self._owned(p), m.as_bytes(key, "key"), vclock.decode(m.as_bytes(record, "record"))))
        # All checked before any is merged: a refused batch changes nothing.
        await asyncio.gather(*(self.replica.merge_in(p, k, obj) for p, k, obj in decoded))
        return len(decoded)


_BAD_OP: Final = "replica.many ops are [0, p, key] or [1, p, key, record, hint_for]"


class _Many(Gathered):
    """One replica.many call: the outcome of each op, and the reply once all are known.
    Merges report through the storage engine's callbacks (no future per op). Each op's slot
    of ``out`` (the ops list itself) is overwritten by its outcome, in place."""

    __slots__ = ("server",)

    def __init__(self, server: ReplicaServer, ops: list[Any], reply: RpcReply | None) -> None:
        super().__init__(ops, reply)
        self.server = server

    def run(self) -> Any:
        server = self.server
        replica = server.replica
        out = self.out
        for i, op in enumerate(out):
            try:
                if type(op) is not list or not op:
                    raise InvalidRequest(_BAD_OP)
                kind = op[0]
                if kind == m.MANY_GET and len(op) == 3:
                    out[i] = [0, server.get(op[1], op[2])]
                    continue
                if kind != m.MANY_PUT or len(op) != 5:
                    raise InvalidRequest(_BAD_OP)
                part, k, rec, obj, hint = server._incoming(op[1], op[2], op[3], op[4])
                if hint is not None:
                    assert server.keep_hint is not None
                    kept = asyncio.ensure_future(server.keep_hint(hint, part, k, obj))
                    self.left += 1
                    kept.add_done_callback(functools.partial(self._kept, i))
                    continue
                owned = server._owned(part)
                # Counted before the merge: a merge that changes nothing reports at once.
                self.left += 1
                try:
                    replica.apply(owned, k, obj, rec, _OpStored(self, i))
                except BaseException:
                    self.left -= 1
                    raise
            except Exception as e:
                out[i] = [1, to_wire(e)]
        return self.answer()

    def stored(self, i: int, exc: BaseException | None) -> None:
        self.out[i] = [0, True] if exc is None else [1, to_wire(exc)]
        self.one_less()

    def _kept(self, i: int, f: asyncio.Future[Any]) -> None:
        if f.cancelled():
            self.out[i] = [1, to_wire(InternalError("replica.many: hint cancelled"))]
        elif (e := f.exception()) is not None:
            self.out[i] = [1, to_wire(e)]
        else:
            self.out[i] = [0, f.result()]
        self.one_less()


class _OpStored:
    """An op of a replica.many call is durable, or failed (the engine's OnDurable). A
    callable, not functools.partial of a bound method: compiled, that costs a bound method,
    a partial and two calls through Python's call protocol per op."""

    __slots__ = ("i", "many")

    def __init__(self, many: _Many, i: int) -> None:
        self.many = many
        self.i = i

    def __call__(self, exc: BaseException | None) -> None:
        self.many.stored(self.i, exc)


class _Durable:
    """A store of :meth:`Replica._store` is durable, or failed: the hooks, then ``on_done``.
    One object, where a closure cost two (its cell environment and the function)."""

    __slots__ = ("key", "new", "old_rec", "on_done", "partition", "record", "replica")

    def __init__(
        self, replica: Replica, partition: int, key: bytes, old_rec: bytes | None, record: bytes, new: Obj,
        on_done: OnDurable,
    ) -> None:
        self.replica = replica
        self.partition = partition
        self.key = key
        self.old_rec = old_rec
        self.record = record
        self.new = new
        self.on_done = on_done

    def __call__(self, exc: BaseException | None) -> None:
        self.replica._stored(self.partition, self.key, self.old_rec, self.record, self.new, exc)
        self.on_done(exc)
