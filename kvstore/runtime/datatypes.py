"""The data path of convergent data types (kvstore.core.crdt): ``dt.update`` and ``dt.fetch``.

An update is coordinated by a replica of the key, like a put (a node outside the preference
list forwards it there, through the coordinator's own forwarding). The coordinator reads its
local record, merges the states of all its siblings, applies the operation as its replica's
actor (``name~epoch``, so a dot is never minted twice: a fresh epoch after any possible loss
of local state, and dots drawn above the node-wide counter), and writes the new state through
the coordinator's write machine with the local record's clock as context, so the write
supersedes exactly the siblings it merged.

Two coordinators updating at once leave two siblings (each superseding what it read): a
fetch merges them, and the next update at either one merges them into one state again. Read
repair, hints and anti-entropy move records by vector clock and keep siblings, which is all a
state-based CRDT needs: whichever siblings a replica ends up with, their merge contains every
acknowledged update.

The type of a key comes from the request (``_datatype_for``), or from the bucket's
``datatype`` property when the request names a bucket that declares one (a request that
names another type is refused). In a bucket, the key's replicas are the bucket's first N
and W is the bucket's (kvstore.runtime.datamodel).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kvstore.core import bucket as bk
from kvstore.core import crdt, vclock
from kvstore.core import messages as m
from kvstore.core.crdt import State
from kvstore.core.vclock import Obj
from kvstore.errors import InvalidRequest, TooLarge, Unavailable
from kvstore.runtime.coordinator import Coordinator
from kvstore.runtime.rpc.later import LATER, replies_later
from kvstore.runtime.rpc.later import Reply as RpcReply

__all__ = ["Datatypes"]


def _datatype_for(key: bytes, requested: Any) -> str:
    """The data type of ``key``. Until buckets declare one, the request names it."""
    if requested is None:
        raise InvalidRequest("say which data type the key holds: counter, set, map or register")
    t = m.as_str(requested, "type")
    if t not in crdt.TOP_TYPES:
        raise InvalidRequest(f"unknown data type {t!r}; one of {', '.join(crdt.TOP_TYPES)}")
    return t


def _local_state(obj: Obj | None) -> State | None:
    return None if obj is None else crdt.from_siblings(s.value for s in obj.siblings if s.value is not None)


class Datatypes:
    """``dt.update`` / ``dt.fetch`` on one node, on top of its Coordinator."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            # A bound method, not a lambda: one call less, and the server gives it its reply
            # callback (replies_later).
            m.DT_UPDATE: self.update,
            m.FWD_DT_UPDATE: lambda key, type_, op, ctx=None, opts=None: self.update(
                key, type_, op, ctx, opts, forwarded=True
            ),
            m.DT_FETCH: lambda key, type_=None, opts=None: self.fetch(key, type_, opts),
        }

    def _check_mode(self) -> None:
        if self.coord.lww:
            # lww keeps one sibling of concurrent writes: concurrent updates would be lost.
            raise InvalidRequest("data types need conflict = siblings (this cluster runs lww)")

    @replies_later
    def update(
        self, raw_key: Any, raw_type: Any, raw_op: Any, raw_ctx: Any = None, raw_opts: Any = None, *,
        forwarded: bool = False, reply: RpcReply | None = None,
    ) -> Any:
        """Apply one operation; the reply (once W replicas hold the new state) carries the
        coordinator's value after it and the data type's context. Given the server's ``reply``
        callback, answers through it (LATER) or at once; else returns a future or, forwarded
        to a replica of the key, a coroutine."""
        c = self.coord
        key = m.check_key(raw_key, c.limits)
        opts = m.parse_options(raw_opts, "w", c.limits)
        props = c._data_path().lookup(opts.bucket) if isinstance(opts, m.DataOptions) else None
        if props is None:
            self._check_mode()
            type_ = _datatype_for(key, raw_type)
            skey = key
            ring, p, pref = c._locate(key)
            w, limits = None, c.limits
        else:
            if props.lww:
                raise InvalidRequest(f"data types need conflict = siblings (bucket {props.name!r} is lww)")
            if props.datatype != "none":
                if raw_type is not None and m.as_str(raw_type, "type") != props.datatype:
                    raise InvalidRequest(f"bucket {props.name!r} holds {props.datatype}s, not {m.as_str(raw_type, 'type')}s")
                raw_type = props.datatype
            type_ = _datatype_for(key, raw_type)
            skey = bk.storage_key(props.name, key)
            ring, p, pref = c._locate(skey)
            pref = pref[: props.n]
            w, limits = props.w, props.limits(c.limits)
        op = crdt.parse_op(type_, raw_op)
        raw_context = m.check_context(raw_ctx)
        ctx = vclock.decode_context(raw_context) if raw_context else None
        if c.name not in pref:
            if forwarded:
                raise Unavailable("forwarded update reached a node outside the preference list", required=1)
            # Not idempotent: an increment sent twice counts twice.
            return c._forward(m.FWD_DT_UPDATE, pref, [key, type_, raw_op, raw_context, m.options_to_wire(opts, "w")], False)
        replica = c.replica
        # From here to the local write nothing yields: no other request can slip in between
        # the read and the write, so the write's context covers all the local siblings.
        local = replica.read(p, skey)
        new = crdt.apply(
            _local_state(local), op, actor=replica.actor, floor=replica.counter, ts=c.wall_ms(), ctx=ctx
        )
        # The node-wide counter goes past every dot just minted: the next update of any key
        # (and the version vector's own dot, minted next) draws above them.
        replica.counter = max(replica.counter, new.clock.get(replica.actor, 0))
        body = crdt.encode(new)
        if len(body) > c.limits.max_value_bytes:
            raise TooLarge(
                f"the {type_} would be {len(body)} bytes, over the limit of {c.limits.max_value_bytes} (max_value_bytes)"
            )
        drive = c._begin_write(ring, p, pref, skey, body, vclock.context_of(local), opts, w=w, limits=limits)
        done = {"type": type_, "value": crdt.value(new), "context": vclock.encode_context(crdt.context(new))}
        if reply is not None:
            # The write's own answer (its version's context) is replaced by the type's.
            return done if drive.answer(_Answered(reply, done)) is not LATER else LATER
        written = drive.future()
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def finish(f: asyncio.Future[dict[str, Any]]) -> None:
            # A Future chained by callback: no task per update.
            if answer.done():
                return
            if f.cancelled():
                answer.cancel()
            elif (e := f.exception()) is not None:
                answer.set_exception(e)
            else:
                answer.set_result(done)

        written.add_done_callback(finish)
        return answer

    async def fetch(self, raw_key: Any, raw_type: Any, raw_opts: Any) -> dict[str, Any]:
        """A quorum read (forwarded like a get) whose siblings are merged into one value."""
        key = m.check_key(raw_key, self.coord.limits)
        want = None if raw_type is None else _datatype_for(key, raw_type)
        if want is None:
            opts = m.parse_options(raw_opts, "r", self.coord.limits)
            if isinstance(opts, m.DataOptions):
                declared = self.coord._data_path().lookup(opts.bucket).datatype
                want = None if declared == "none" else declared
        got = await self.coord.get(key, raw_opts)
        merged = crdt.from_siblings(m.as_bytes(v) for v in got["values"])
        if merged is not None and want is not None and merged.type != want:
            raise InvalidRequest(f"the key holds a {merged.type}, not a {want}")
        type_ = merged.type if merged is not None else want
        return {
            "type": type_,
            "found": merged is not None,
            "value": crdt.value(merged, type_),
            "context": vclock.encode_context(crdt.context(merged)),
        }


class _Answered:
    """An update's reply callback for its write: ``done`` once the write is acknowledged
    (the write's own answer is its version's context; an update answers with the type's).
    A callable, not a closure: compiled, one object per update."""

    __slots__ = ("done", "reply")

    def __init__(self, reply: RpcReply, done: dict[str, Any]) -> None:
        self.reply = reply
        self.done = done

    def __call__(self, result: Any, exc: BaseException | None) -> None:
        if exc is not None:
            self.reply(None, exc)
        else:
            self.reply(self.done, None)
