"""Coordination of get/put/delete: handle-or-forward, quorum fan-out, read repair.

The decisions (who to ask, when a request is done, who needs repair) are the pure machines
of kvstore.core.quorum; this module only does the I/O around them: local reads and writes
through the Replica, calls to peers through the RPC client, timers on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kvstore.config import Settings
from kvstore.core import messages as m
from kvstore.core import quorum, vclock
from kvstore.core.quorum import ReadQuorum, Status, WriteQuorum, next_stand_in
from kvstore.core.ring import Ring, partition_of
from kvstore.core.vclock import Obj
from kvstore.errors import KVError, Timeout, Unavailable, Unreachable
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.replica import Replica
from kvstore.runtime.rpc import RpcClient, was_sent
from storage.errors import StorageError as StorageFailure

log = logging.getLogger("kvstore.coordinator")


def _consume(f: asyncio.Future[Any]) -> None:
    """Fire-and-forget RPCs: read the outcome so a failure is not reported as unretrieved."""
    if not f.cancelled():
        f.exception()


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
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        self.s = settings
        self.view = view
        self.replica = replica
        self.rpc = rpc
        self.name = view.name
        self.limits = m.Limits(settings.max_key_bytes, settings.max_value_bytes, settings.n_replicas)
        self.lww = settings.conflict == "lww"
        self.wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self.counters = Counters()
        self._background: set[asyncio.Task[None]] = set()
        # Hook for sloppy quorum's hinted writes (set by the node when hints are enabled).
        self.on_hinted: Callable[[str, int, bytes, Obj], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ routing
    def _ring(self) -> Ring:
        ring = self.view.ring
        if ring is None:
            raise Unavailable("this node has not joined a ring yet", answered=0, required=1)
        return ring

    def _locate(self, key: bytes) -> tuple[Ring, int, tuple[str, ...]]:
        ring = self._ring()
        p = partition_of(key, ring.partitions)
        return ring, p, self.view.read_preference(p)

    async def _forward(self, method: str, pref: tuple[str, ...], params: list[Any], idempotent: bool) -> dict[str, Any]:
        """Send the request to a preference-list node. A call that could not be sent is tried
        on the next node; one whose outcome is unknown is retried only if idempotent."""
        self.counters.forwarded += 1
        last: KVError | None = None
        order = self.view.by_preference(pref)
        for node in order:
            try:
                return await self.rpc.call(self.view.addr_of(node), method, params, self.s.forward_timeout_s)  # type: ignore[no-any-return]
            except Unreachable as e:
                last = e
                if was_sent(e) and not idempotent:
                    raise
            except Timeout as e:
                last = e
                if not idempotent:
                    raise
        raise Unavailable(
            f"no node of the key's preference list could be reached ({last})",
            answered=0,
            required=1,
        )

    # ------------------------------------------------------------------ public API
    # Each returns a Future (the local path: callbacks only, no task per request) or, when
    # the request must be forwarded, a coroutine; the RPC server takes either.
    def get(self, raw_key: Any, raw_opts: Any, *, forwarded: bool = False) -> Awaitable[dict[str, Any]]:
        key = m.check_key(raw_key, self.limits)
        opts = m.parse_options(raw_opts, "r", self.limits)
        ring, p, pref = self._locate(key)
        if self.name not in pref:
            if forwarded:
                raise Unavailable("forwarded get reached a node outside the preference list", required=1)
            return self._forward(m.FWD_GET, pref, [key, m.options_to_wire(opts, "r")], True)
        self.counters.gets += 1
        return self._read(ring, p, pref, key, opts)

    def put(
        self, raw_key: Any, raw_value: Any, raw_ctx: Any, raw_opts: Any, *, forwarded: bool = False
    ) -> Awaitable[dict[str, Any]]:
        key = m.check_key(raw_key, self.limits)
        value = m.check_value(raw_value, self.limits)
        return self._write(key, value, raw_ctx, raw_opts, m.FWD_PUT, forwarded)

    def delete(self, raw_key: Any, raw_ctx: Any, raw_opts: Any, *, forwarded: bool = False) -> Awaitable[dict[str, Any]]:
        key = m.check_key(raw_key, self.limits)
        return self._write(key, None, raw_ctx, raw_opts, m.FWD_DELETE, forwarded)

    # ------------------------------------------------------------------ internals
    def _plan(self, pref: tuple[str, ...], fallbacks: tuple[str, ...], sloppy: bool) -> quorum.Plan:
        return quorum.plan(pref, fallbacks, self.view.is_up, sloppy=sloppy)

    def _write(
        self, key: bytes, value: bytes | None, raw_ctx: Any, raw_opts: Any, fwd: str, forwarded: bool
    ) -> Awaitable[dict[str, Any]]:
        ctx = vclock.decode_context(m.check_context(raw_ctx))
        opts = m.parse_options(raw_opts, "w", self.limits)
        ring, p, pref = self._locate(key)
        if self.name not in pref:
            if forwarded:
                raise Unavailable("forwarded write reached a node outside the preference list", required=1)
            params: list[Any] = [key] + ([value] if fwd == m.FWD_PUT else [])
            params += [m.check_context(raw_ctx), m.options_to_wire(opts, "w")]
            return self._forward(fwd, pref, params, False)
        self.counters.puts += 1
        loop = asyncio.get_running_loop()
        w = opts.quorum or self.s.w
        timeout = opts.timeout_s or self.s.request_timeout_s
        deadline = loop.time() + timeout
        hinting = self.on_hinted is not None
        sloppy = hinting and not opts.strict
        fallbacks = ring.fallbacks(p, self.s.n_replicas)
        plan = self._plan(pref, fallbacks, sloppy=sloppy)
        wq = WriteQuorum(plan.targets, w, deadline, strict=opts.strict)
        result: asyncio.Future[dict[str, Any]] = loop.create_future()

        local = self.replica.read(p, key)
        new = vclock.update(local, ctx, value, self.replica.actor, self.wall_ms())
        if self.lww:
            new = vclock.lww(new)
        record = vclock.encode(new)
        # A primary gets part of the time, so that if it does not answer a stand-in can still
        # be asked before the deadline (Dynamo: "does not answer in time").
        primary_timeout = timeout * 0.5 if sloppy and fallbacks else timeout

        def settle(status: Status) -> None:
            if status is Status.PENDING or result.done():
                return
            timer.cancel()
            if status is Status.OK:
                result.set_result({"context": vclock.encode_context(vclock.context_of(new))})
            else:
                self.counters.unavailable += 1
                result.set_exception(Unavailable(wq.explain(), answered=wq.acks, required=w))

        def answered(t: quorum.Target, f: asyncio.Future[Any]) -> None:
            err = None if f.cancelled() else f.exception()
            if f.cancelled() or err is not None:
                if t.hint_for is None and t.node != self.name:
                    cover(t.node)
                code = err.code if isinstance(err, KVError) else type(err).__name__ if err else "cancelled"
                if isinstance(err, StorageFailure):
                    code = f"{code}: {err}"  # the path and the cause (disk full, read-only …)
                settle(wq.on_error(t.node, code))
            else:
                settle(wq.on_ack(t.node))

        def send(t: quorum.Target) -> None:
            try:
                f = self.rpc.request(
                    self.view.addr_of(t.node), m.REPLICA_PUT, [p, key, record, t.hint_for],
                    primary_timeout if t.hint_for is None else timeout,
                )
            except KVError as e:
                f = loop.create_future()
                f.set_exception(e)
            f.add_done_callback(functools.partial(answered, t))

        def cover(primary: str) -> None:
            """Find a stand-in for a primary that is down or failed; else keep the hint here."""
            stand_in = next_stand_in(fallbacks, self.view.is_up, [t.node for t in wq.targets]) if sloppy else None
            if stand_in is not None and stand_in != self.name:
                t = quorum.Target(stand_in, hint_for=primary)
                wq.add_stand_in(t)
                send(t)
            elif hinting:
                self._spawn(self._keep_hint(primary, p, key, new))

        timer = loop.call_at(deadline, lambda: settle(wq.tick(deadline)))
        for t in plan.targets:
            if t.node == self.name:
                # Applied to the local table right here, before any other request can read
                # the key; acknowledged once durable.
                self.replica.write_new(p, key, new).add_done_callback(functools.partial(answered, t))
            else:
                send(t)
        for primary in plan.uncovered:
            cover(primary)
        # During a ring change the partition's new replicas get every write too (best effort,
        # not counted towards W): the handoff stream plus these make them complete.
        for extra in self.view.extra_write_targets(p):
            if extra != self.name and self.view.is_up(extra):
                self._spawn(self._best_effort_put(extra, p, key, record, timeout))
        return result

    async def _keep_hint(self, primary: str, p: int, key: bytes, obj: Obj) -> None:
        assert self.on_hinted is not None
        try:
            await self.on_hinted(primary, p, key, obj)
        except KVError as e:
            # The hint store logs (rate-limited) and counts refusals; one line per write here
            # would flood the log while it is full.
            log.debug("could not keep a hint for %s: %s", primary, e)

    async def _best_effort_put(self, node: str, p: int, key: bytes, record: bytes, timeout: float) -> None:
        try:
            await self.rpc.call(self.view.addr_of(node), m.REPLICA_PUT, [p, key, record, None], timeout)
        except KVError as e:
            log.debug("write of %r to new replica %s failed (handoff will carry it): %s", key, node, e)

    def _read(
        self, ring: Ring, p: int, pref: tuple[str, ...], key: bytes, opts: m.Options
    ) -> asyncio.Future[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        r = opts.quorum or self.s.r
        timeout = opts.timeout_s or self.s.request_timeout_s
        deadline = loop.time() + timeout
        plan = self._plan(pref, (), sloppy=False)
        rq = ReadQuorum(plan.targets, r, deadline, strict=opts.strict)
        result: asyncio.Future[dict[str, Any]] = loop.create_future()
        repaired = False

        def settle(status: Status) -> None:
            nonlocal repaired
            if status is not Status.PENDING and not result.done():
                if status is Status.OK:
                    merged = rq.merged
                    if merged is None:
                        result.set_result({"values": [], "context": b""})
                    else:
                        shown = vclock.lww(merged) if self.lww else merged
                        result.set_result(
                            {"values": vclock.values(shown), "context": vclock.encode_context(vclock.context_of(merged))}
                        )
                else:
                    self.counters.unavailable += 1
                    result.set_exception(Unavailable(rq.explain(), answered=rq.answered, required=r))
            if not repaired and status is Status.OK and (rq.all_answered or loop.time() >= deadline):
                # Every replica answered (or time is up): repair the ones found stale.
                repaired = True
                timer.cancel()
                for node, obj in rq.repairs():
                    self._repair(node, p, key, obj)
            elif status is Status.UNAVAILABLE or rq.all_answered:
                timer.cancel()

        def answered(node: str, f: asyncio.Future[Any]) -> None:
            err = None if f.cancelled() else f.exception()
            if f.cancelled() or err is not None:
                settle(rq.on_error(node, err.code if isinstance(err, KVError) else "failed"))
                return
            rec = f.result()
            try:
                obj = None if rec is None else vclock.decode(m.as_bytes(rec, "record"))
            except KVError as e:
                settle(rq.on_error(node, e.code))
            else:
                settle(rq.on_reply(node, obj))

        timer = loop.call_at(deadline, lambda: settle(rq.tick(deadline)))
        for t in plan.targets:
            if t.node == self.name:
                settle(rq.on_reply(self.name, self.replica.read(p, key)))
            else:
                try:
                    f = self.rpc.request(self.view.addr_of(t.node), m.REPLICA_GET, [p, key], timeout)
                except KVError as e:
                    settle(rq.on_error(t.node, e.code))
                else:
                    f.add_done_callback(functools.partial(answered, t.node))
        return result

    def _repair(self, node: str, p: int, key: bytes, obj: Obj) -> None:
        self.counters.read_repairs += 1
        if node == self.name:
            self._spawn(self.replica.merge_in(p, key, obj))  # type: ignore[arg-type]
            return
        try:
            f = self.rpc.request(
                self.view.addr_of(node), m.REPLICA_PUT, [p, key, vclock.encode(obj), None], self.s.request_timeout_s
            )
        except KVError as e:
            log.debug("read repair of %r on %s failed: %s", key, node, e)
            return
        f.add_done_callback(_consume)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
