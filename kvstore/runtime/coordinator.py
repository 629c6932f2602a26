"""Coordination of get/put/delete: handle-or-forward, quorum fan-out, read repair.

The decisions (who to ask, stand-ins, hints, when a request is done, who needs repair) are
the pure request machines of kvstore.core.request; this module only carries out their
effects: local reads and writes through the Replica, calls to peers through the RPC client,
and one deadline sweep for all requests (no timer per request).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from kvstore.config import Settings
from kvstore.core import messages as m
from kvstore.core import vclock
from kvstore.core.bucket import BucketProps
from kvstore.core.request import (
    GET,
    ReadRequest,
    Ready,
    Repair,
    Reply,
    WriteRequest,
    answered_alone,
    lone_write_failed,
    record_answer,
    write_answer,
)
from kvstore.core.ring import Ring
from kvstore.core.vclock import Obj
from kvstore.errors import InvalidRequest, KVError, Unavailable
from kvstore.retry import RetryPolicy
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.deadlines import Deadlines
from kvstore.runtime.outbox import Answer, Outbox, reason_of
from kvstore.runtime.replica import KeepHint, Replica
from kvstore.runtime.rpc import RpcClient
from kvstore.runtime.rpc.later import LATER, replies_later
from kvstore.runtime.rpc.later import Reply as RpcReply

log = logging.getLogger("kvstore.coordinator")

# A forwarded request's Unavailable is the other coordinator's verdict on the quorum: passed
# back as it is, since asking a third would spend a second forward timeout of the client's.
FORWARD_RETRY = RetryPolicy(retry_unavailable=False)


def _ignore(reason: str | None, result: Any) -> None:
    """The outcome of a call nobody waits for (best-effort writes, read repairs)."""


class DataPath(Protocol):
    """Requests whose options name a bucket, a condition or a TTL (kvstore.runtime.datamodel,
    given by the node): the plain path never looks."""

    def lookup(self, bucket: str | None) -> BucketProps: ...

    def get(self, key: bytes, opts: m.DataOptions, forwarded: bool) -> Awaitable[dict[str, Any]]: ...

    def write(
        self, key: bytes, value: bytes | None, raw_ctx: Any, opts: m.DataOptions, fwd: str, forwarded: bool
    ) -> Awaitable[dict[str, Any]]: ...


@dataclass(slots=True)
class Counters:
    gets: int = 0
    puts: int = 0
    forwarded: int = 0
    unavailable: int = 0
    read_repairs: int = 0


class Coordinator:
    def __init__(
        self,
        settings: Settings,
        view: ClusterView,
        replica: Replica,
        rpc: RpcClient,
        *,
        keep_hint: KeepHint | None = None,
        wall_ms: Callable[[], int] | None = None,
        data_path: Callable[[Coordinator], DataPath] | None = None,
    ) -> None:
        self.s = settings
        self.view = view
        self.replica = replica
        self.rpc = rpc
        self.name = view.name
        self.limits = settings.limits
        self.lww = settings.conflict == "lww"
        self.wall_ms = wall_ms or _wall_ms
        self.counters = Counters()
        self._background: set[asyncio.Task[None]] = set()
        # Sloppy quorum's hints (None: hinted handoff off, and no stand-ins either).
        self.keep_hint = keep_hint
        # Buckets, conditional writes and TTL (kvstore.runtime.datamodel): requests whose
        # options name any of them go there; the plain path below never looks.
        self.datamodel = None if data_path is None else data_path(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Every replica call of a loop turn goes out as one frame per peer.
        self.outbox = Outbox(rpc, view.addr_of)
        self.deadlines: Deadlines[_Answering] = Deadlines(self._running_loop)
        # Read on every request: plain attributes here, not a lookup on the (interpreted)
        # Settings and a new bound method each time.
        self._r, self._w, self._timeout_s = settings.r, settings.w, settings.request_timeout_s
        self._is_up = view.is_up

    def handlers(self) -> dict[str, Callable[..., Any]]:
        """The public data API and its forwarded forms (handle-or-forward)."""
        return {
            # Bound methods, not lambdas: one call less on every request.
            m.GET: self.get,
            m.PUT: self.put,
            m.DELETE: self.delete,
            m.FWD_GET: lambda key, opts=None: self.get(key, opts, forwarded=True),
            m.FWD_PUT: lambda key, value, ctx=None, opts=None: self.put(key, value, ctx, opts, forwarded=True),
            m.FWD_DELETE: lambda key, ctx=None, opts=None: self.delete(key, ctx, opts, forwarded=True),
        }

    def _data_path(self) -> DataPath:
        if self.datamodel is None:
            raise InvalidRequest("this node serves no buckets, conditions or TTLs")
        return self.datamodel

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # asyncio.get_running_loop() makes a getpid() system call each time: a node's
        # coordinator lives on one loop, so it is asked once.
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    # ------------------------------------------------------------------ routing
    def _ring(self) -> Ring:
        ring = self.view.ring
        if ring is None:
            raise Unavailable("this node has not joined a ring yet", answered=0, required=1)
        return ring

    def _locate(self, key: bytes) -> tuple[Ring, int, tuple[str, ...]]:
        ring = self._ring()
        p, pref = self.view.locate(ring, key)
        return ring, p, pref

    async def _forward(self, method: str, pref: tuple[str, ...], params: list[Any], idempotent: bool) -> dict[str, Any]:
        """Send the request to a preference-list node. A call that could not be sent is tried
        on the next node; one whose outcome is unknown is retried only if idempotent."""
        self.counters.forwarded += 1
        last: KVError | None = None
        order = self.view.by_preference(pref)
        for node in order:
            try:
                return await self.rpc.call(self.view.addr_of(node), method, params, self.s.forward_timeout_s)  # type: ignore[no-any-return]
            except KVError as e:
                if not FORWARD_RETRY.try_next(e, idempotent=idempotent):
                    raise
                last = e
        raise Unavailable(
            f"no node of the key's preference list could be reached ({last})",
            answered=0,
            required=1,
        )

    # ------------------------------------------------------------------ public API
    # Each returns a Future (the local path: callbacks only, no task per request) or, when
    # the request must be forwarded, a coroutine; the RPC server takes either. Given a
    # ``reply`` callback (the RPC server's, kvstore.runtime.rpc.later), the local path
    # answers through it instead of a future and returns LATER, or the answer itself when
    # it is known at once.
    @replies_later
    def get(self, raw_key: Any, raw_opts: Any = None, *, forwarded: bool = False, reply: RpcReply | None = None) -> Any:
        key = m.check_key(raw_key, self.limits)
        opts = m.parse_options(raw_opts, "r", self.limits)
        if isinstance(opts, m.DataOptions):
            return self._data_path().get(key, opts, forwarded)
        _, p, pref = self._locate(key)
        if self.name not in pref:
            if forwarded:
                raise Unavailable("forwarded get reached a node outside the preference list", required=1)
            return self._forward(m.FWD_GET, pref, [key, m.options_to_wire(opts, "r")], True)
        self.counters.gets += 1
        if answered_alone(self.name, pref, opts.quorum or self._r):
            answer = record_answer(self.replica.read_raw(p, key), lww=self.lww, wall_ms=self.wall_ms)
            if reply is not None:
                return answer
            fut: asyncio.Future[dict[str, Any]] = self._running_loop().create_future()
            fut.set_result(answer)
            return fut
        drive = self._begin_read(p, pref, key, opts)
        return drive.answer(reply) if reply is not None else drive.future()

    @replies_later
    def put(
        self, raw_key: Any, raw_value: Any, raw_ctx: Any = None, raw_opts: Any = None, *, forwarded: bool = False,
        reply: RpcReply | None = None,
    ) -> Any:
        key = m.check_key(raw_key, self.limits)
        value = m.check_value(raw_value, self.limits)
        return self._write(key, value, raw_ctx, raw_opts, m.FWD_PUT, forwarded, reply)

    @replies_later
    def delete(
        self, raw_key: Any, raw_ctx: Any = None, raw_opts: Any = None, *, forwarded: bool = False,
        reply: RpcReply | None = None,
    ) -> Any:
        key = m.check_key(raw_key, self.limits)
        return self._write(key, None, raw_ctx, raw_opts, m.FWD_DELETE, forwarded, reply)

    # ------------------------------------------------------------------ internals
    def _write(
        self, key: bytes, value: bytes | None, raw_ctx: Any, raw_opts: Any, fwd: str, forwarded: bool,
        reply: RpcReply | None = None,
    ) -> Any:
        opts = m.parse_options(raw_opts, "w", self.limits)
        if isinstance(opts, m.DataOptions):
            return self._data_path().write(key, value, raw_ctx, opts, fwd, forwarded)
        ctx = vclock.decode_context(m.check_context(raw_ctx))
        ring, p, pref = self._locate(key)
        if self.name not in pref:
            if forwarded:
                raise Unavailable("forwarded write reached a node outside the preference list", required=1)
            params: list[Any] = [key] + ([value] if fwd == m.FWD_PUT else [])
            params += [m.check_context(raw_ctx), m.options_to_wire(opts, "w")]
            return self._forward(fwd, pref, params, False)
        self.counters.puts += 1
        if value is None and not ctx:
            # A delete without a context deletes what a read finds (as Riak does): a tombstone
            # that covers nothing would only sit beside the value as one more sibling.
            return self._delete_what_is_read(ring, p, pref, key, opts)
        drive = self._begin_write(ring, p, pref, key, value, ctx, opts)
        return drive.answer(reply) if reply is not None else drive.future()

    async def _delete_what_is_read(
        self, ring: Ring, p: int, pref: tuple[str, ...], key: bytes, opts: m.Options
    ) -> dict[str, Any]:
        found = await self._read(p, pref, key, m.Options(None, opts.strict, opts.timeout_s))
        ctx = vclock.decode_context(found["context"])
        if not found["values"]:
            return {"context": found["context"]}  # absent or already deleted
        return await self._coordinate_write(ring, p, pref, key, None, ctx, opts)

    def _coordinate_write(
        self, ring: Ring, p: int, pref: tuple[str, ...], key: bytes, value: bytes | None, ctx: vclock.VV, opts: m.Options,
        *, w: int | None = None, lww: bool | None = None, limits: m.Limits | None = None, ttl_ms: int = 0,
    ) -> asyncio.Future[dict[str, Any]]:
        """The keyword arguments are a bucket's (kvstore.runtime.datamodel); by default the
        cluster's settings. ``ttl_ms`` > 0 makes the new value expire that long from now."""
        return self._begin_write(ring, p, pref, key, value, ctx, opts, w=w, lww=lww, limits=limits, ttl_ms=ttl_ms).future()

    def _begin_write(
        self, ring: Ring, p: int, pref: tuple[str, ...], key: bytes, value: bytes | None, ctx: vclock.VV, opts: m.Options,
        *, w: int | None = None, lww: bool | None = None, limits: m.Limits | None = None, ttl_ms: int = 0,
    ) -> _Answering:
        local_rec = self.replica.read_raw(p, key)
        local = None if local_rec is None else vclock.decode(local_rec)
        now_ms = self.wall_ms()
        new = self.replica.mint(local, ctx, value, now_ms)
        if ttl_ms:
            new = vclock.with_expiry(new, _dot_of(new, self.replica.actor), now_ms + ttl_ms)
        if self.lww if lww is None else lww:
            new = vclock.lww(new)
        record = vclock.encode(new)
        # Refused here, before the local store or any peer sees it: a record past the bounds
        # could be stored but never replicated.
        if (warning := m.check_record(key, new, len(record), limits or self.limits)) is not None:
            log.warning("%s", warning)
        loop = self._running_loop()
        need = opts.quorum or w or self._w
        extra = self.view.extra_write_targets(p)
        if answered_alone(self.name, pref, need, extra):
            lone = _LoneWrite(self, new, loop)
            self.replica.write_new(p, key, local_rec, new, record, _LoneStored(lone))
            if not lone.replied:  # durable (or failed) already: no deadline to keep
                lone.deadline = loop.time() + (opts.timeout_s or self._timeout_s)
                self.deadlines.add(lone.deadline, lone)
            return lone
        hinting = self.keep_hint is not None
        machine = WriteRequest(
            self.name, new, record,
            preference=pref,
            fallbacks=self.view.fallbacks(ring, p),
            is_up=self._is_up,
            w=need,
            timeout_s=opts.timeout_s or self._timeout_s,
            now=loop.time(),
            sloppy=hinting and not opts.strict,
            hinting=hinting,
            strict=opts.strict,
            extra_targets=extra,
        )
        drive = _Drive(self, machine, p, key, loop)
        drive.known = (local_rec, local)
        drive.run(machine.start())
        return drive

    def _read(
        self, p: int, pref: tuple[str, ...], key: bytes, opts: m.Options, *, r: int | None = None, lww: bool | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """``r`` and ``lww`` are a bucket's (kvstore.runtime.datamodel); by default the cluster's."""
        return self._begin_read(p, pref, key, opts, r=r, lww=lww).future()

    def _begin_read(
        self, p: int, pref: tuple[str, ...], key: bytes, opts: m.Options, *, r: int | None = None, lww: bool | None = None
    ) -> _Drive:
        loop = self._running_loop()
        local_rec = self.replica.read_raw(p, key)
        local = None if local_rec is None else vclock.decode(local_rec)
        machine = ReadRequest(
            self.name, local,
            preference=pref,
            is_up=self._is_up,
            r=opts.quorum or r or self._r,
            timeout_s=opts.timeout_s or self._timeout_s,
            now=loop.time(),
            strict=opts.strict,
            lww=self.lww if lww is None else lww,
            now_ms=self.wall_ms(),
        )
        drive = _Drive(self, machine, p, key, loop)
        if local_rec is not None:
            drive.known = (local_rec, local)
        drive.run(machine.start())
        return drive

    async def _keep_hint(self, primary: str, p: int, key: bytes, obj: Obj) -> None:
        assert self.keep_hint is not None
        try:
            await self.keep_hint(primary, p, key, obj)
        except KVError as e:
            # The hint store logs (rate-limited) and counts refusals; one line per write here
            # would flood the log while it is full.
            log.debug("could not keep a hint for %s: %s", primary, e)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        self.deadlines.close()
        for t in list(self._background):
            t.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


_time_ns: Final = time.time_ns  # a static, not a globals lookup per request


def _wall_ms() -> int:
    return _time_ns() // 1_000_000


def _dot_of(new: Obj, actor: str) -> vclock.Dot:
    """The dot a write just minted under ``actor``: its counter is the vector's entry."""
    return vclock.Dot(actor, new.vv[actor])


def _settle_future(fut: asyncio.Future[dict[str, Any]], result: Any, exc: BaseException | None) -> None:
    if not fut.done():
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class _Answering:
    """Where a request's answer goes, for a request driver and a lone write alike: a reply
    callback or a future (``answer`` or ``future``, asked right after the first step), and
    the answer given before either was asked (a request answered within its first step)."""

    __slots__ = ("early", "loop", "replied", "sink")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sink: RpcReply | None = None
        self.early: Reply | None = None
        self.replied = False

    def tick(self, now: float) -> None:
        """Called by the deadline sweep once ``now`` is past the deadline it was registered for."""
        raise NotImplementedError

    def _give(self, reply: Reply) -> None:
        self.replied = True
        if self.sink is None:
            self.early = reply
        else:
            self.sink(reply.result, reply.error)

    def answer(self, reply: RpcReply) -> Any:
        """After the first step, the answer goes to ``reply``: returns the answer itself if
        it is known already (raised if an error), else LATER."""
        early = self.early
        if early is None:
            self.sink = reply
            return LATER
        if early.error is not None:
            raise early.error
        return early.result

    def future(self) -> asyncio.Future[dict[str, Any]]:
        """After the first step: a Future of the answer."""
        early = self.early
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        if early is None:
            self.sink = functools.partial(_settle_future, fut)
        elif early.error is not None:
            fut.set_exception(early.error)
        else:
            fut.set_result(early.result)  # type: ignore[arg-type]
        return fut


class _LoneWrite(_Answering):
    """A write answered alone (kvstore.core.request.answered_alone): its local write's
    outcome (through :class:`_LoneStored`) and its deadline, nothing else."""

    __slots__ = ("c", "deadline", "new")

    def __init__(self, c: Coordinator, new: Obj, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.c = c
        self.new = new
        self.deadline: float | None = None

    def stored(self, exc: BaseException | None) -> None:
        """The local write is durable, or failed."""
        if self.replied:
            return  # the deadline passed first
        if self.deadline is not None:
            self.c.deadlines.discard(self.deadline, self)
        if exc is None:
            self._give(Reply(write_answer(self.new)))
        else:
            self._fail(reason_of(exc))

    def tick(self, now: float) -> None:
        if not self.replied and self.deadline is not None and now >= self.deadline:
            self._fail(None)

    def _fail(self, reason: str | None) -> None:
        self.c.counters.unavailable += 1
        self._give(Reply(error=lone_write_failed(self.c.name, reason)))


class _Drive(_Answering):
    """Carries out one request machine's effects on the event loop: replica calls through the
    RPC client, the local write, hints, read repairs, the deadline, the reply."""

    __slots__ = ("c", "deadline", "key", "known", "machine", "p")

    def __init__(
        self, c: Coordinator, machine: WriteRequest | ReadRequest, p: int, key: bytes, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(loop)
        self.c = c
        self.machine = machine
        self.p = p
        self.key = key
        self.deadline: float | None = None  # when the machine wants its next tick
        # The local record and its version when the request started. A read: replicas in
        # sync answer with the same bytes, which then need no decoding. A write: what its
        # local write replaces (stored in the same call, so nothing came in between).
        self.known: tuple[bytes | None, Obj | None] | None = None

    def run(self, ready: Ready) -> None:
        c = self.c
        outbox = c.outbox
        for s in ready.sends:
            answer: Answer = _Answer(self, s.tag) if s.counted else _ignore
            if s.op == GET:
                outbox.get(s.node, self.p, self.key, s.timeout_s, answer)
            else:
                assert s.record is not None
                outbox.put(s.node, self.p, self.key, s.record, s.hint_for, s.timeout_s, answer)
        if ready.local_write is not None:
            tag, obj = ready.local_write
            # Applied to the local table right here, before any other request can read the
            # key; acknowledged once durable.
            machine = self.machine
            assert type(machine) is WriteRequest  # only a write has a local_write
            record = machine.record  # narrowed: read from the native class, not by name
            assert self.known is not None  # set by _begin_write, with the record it replaces
            c.replica.write_new(self.p, self.key, self.known[0], obj, record, _Stored(self, tag))
        for h in ready.hints:
            c._spawn(c._keep_hint(h.primary, self.p, self.key, h.obj))
        for rep in ready.repairs:
            c.counters.read_repairs += 1
            self._repair(rep)
        if ready.reply is not None and not self.replied:
            if ready.reply.error is not None:
                c.counters.unavailable += 1
            self._give(ready.reply)
        deadline = ready.deadline
        if deadline != self.deadline:
            if self.deadline is not None:
                c.deadlines.discard(self.deadline, self)
            if deadline is not None:
                c.deadlines.add(deadline, self)
            self.deadline = deadline

    def tick(self, now: float) -> None:
        """Called by the sweep once ``now`` is past the deadline it was registered for."""
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
            self.run(self.machine.tick(now))

    def _answered(self, tag: int, reason: str | None, rec: Any) -> None:
        machine = self.machine
        if type(machine) is WriteRequest:
            if reason is None:
                if not machine.settled:  # a late acknowledgement changes nothing
                    self.run(machine.acked(tag))
            else:
                self.run(machine.failed(tag, reason))
            return
        assert isinstance(machine, ReadRequest)
        now = self.loop.time()
        if reason is not None:
            self.run(machine.failed(tag, reason, now))
            return
        known = self.known
        try:
            if rec is None:
                obj = None
            elif known is not None and rec == known[0]:
                obj = known[1]
            else:
                obj = vclock.decode(m.as_bytes(rec, "record"))
        except KVError as e:
            self.run(machine.failed(tag, e.code, now))
        else:
            self.run(machine.replied(tag, obj, now))

    def _repair(self, rep: Repair) -> None:
        c = self.c
        if rep.node == c.name:
            c._spawn(c.replica.merge_in(self.p, self.key, rep.obj))  # type: ignore[arg-type]
            return
        c.outbox.put(rep.node, self.p, self.key, vclock.encode(rep.obj), None, c.s.request_timeout_s, _ignore)


# Callables, not functools.partial of a bound method: compiled, a partial costs a bound
# method, a partial object and two calls through Python's call protocol per replica call.
class _Answer:
    """One replica call's answer (an outbox Answer), for the request that sent it."""

    __slots__ = ("drive", "tag")

    def __init__(self, drive: _Drive, tag: int) -> None:
        self.drive = drive
        self.tag = tag

    def __call__(self, reason: str | None, rec: Any) -> None:
        self.drive._answered(self.tag, reason, rec)


class _LoneStored:
    """A lone write's local write is durable, or failed (the engine's OnDurable). A class of
    its own, not ``__call__`` on _LoneWrite: compiled, a ``__call__`` added by a subclass of a
    native class is called through the base's layout, which has no room for it (a crash)."""

    __slots__ = ("lone",)

    def __init__(self, lone: _LoneWrite) -> None:
        self.lone = lone

    def __call__(self, exc: BaseException | None) -> None:
        self.lone.stored(exc)


class _Stored:
    """The local write of a write request is durable, or failed (the engine's OnDurable)."""

    __slots__ = ("drive", "tag")

    def __init__(self, drive: _Drive, tag: int) -> None:
        self.drive = drive
        self.tag = tag

    def __call__(self, exc: BaseException | None) -> None:
        self.drive._answered(self.tag, reason_of(exc), None)
