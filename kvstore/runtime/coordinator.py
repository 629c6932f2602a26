"""Coordination of get/put/delete: handle-or-forward, quorum fan-out, read repair.

The decisions (who to ask, when a request is done, who needs repair) are the pure machines
of kvstore.core.quorum; this module only does the I/O around them: local reads and writes
through the Replica, calls to peers through the RPC client, timers on the event loop.
"""

from __future__ import annotations

import asyncio
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

log = logging.getLogger("kvstore.coordinator")


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

    async def _forward(self, method: str, pref: tuple[str, ...], params: list[Any], idempotent: bool) -> Any:
        """Send the request to a preference-list node. A call that could not be sent is tried
        on the next node; one whose outcome is unknown is retried only if idempotent."""
        self.counters.forwarded += 1
        last: KVError | None = None
        order = self.view.by_preference(pref)
        for node in order:
            try:
                return await self.rpc.call(self.view.addr_of(node), method, params, self.s.forward_timeout_s)
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
    async def get(self, raw_key: Any, raw_opts: Any, *, forwarded: bool = False) -> dict[str, Any]:
        key = m.check_key(raw_key, self.limits)
        opts = m.parse_options(raw_opts, "r", self.limits)
        ring, p, pref = self._locate(key)
        if self.name not in pref:
            if forwarded:
                raise Unavailable("forwarded get reached a node outside the preference list", required=1)
            return await self._forward(m.FWD_GET, pref, [key, m.options_to_wire(opts, "r")], True)  # type: ignore[no-any-return]
        self.counters.gets += 1
        merged = await self._read(ring, p, pref, key, opts)
        if merged is None:
            return {"values": [], "context": b""}
        shown = vclock.lww(merged) if self.lww else merged
        return {"values": vclock.values(shown), "context": vclock.encode_context(vclock.context_of(merged))}

    async def put(
        self, raw_key: Any, raw_value: Any, raw_ctx: Any, raw_opts: Any, *, forwarded: bool = False
    ) -> dict[str, Any]:
        key = m.check_key(raw_key, self.limits)
        value = m.check_value(raw_value, self.limits)
        return await self._write(key, value, raw_ctx, raw_opts, m.FWD_PUT, forwarded)

    async def delete(self, raw_key: Any, raw_ctx: Any, raw_opts: Any, *, forwarded: bool = False) -> dict[str, Any]:
        key = m.check_key(raw_key, self.limits)
        return await self._write(key, None, raw_ctx, raw_opts, m.FWD_DELETE, forwarded)

    # ------------------------------------------------------------------ internals
    def _deadline(self, opts: m.Options) -> tuple[float, float]:
        timeout = opts.timeout_s or self.s.request_timeout_s
        return timeout, asyncio.get_running_loop().time() + timeout

    def _plan(self, ring: Ring, p: int, pref: tuple[str, ...], sloppy: bool) -> quorum.Plan:
        return quorum.plan(pref, ring.fallbacks(p, self.s.n_replicas), self.view.is_up, sloppy=sloppy)

    async def _write(
        self, key: bytes, value: bytes | None, raw_ctx: Any, raw_opts: Any, fwd: str, forwarded: bool
    ) -> dict[str, Any]:
        ctx = vclock.decode_context(m.check_context(raw_ctx))
        opts = m.parse_options(raw_opts, "w", self.limits)
        ring, p, pref = self._locate(key)
        if self.name not in pref:
            if forwarded:
                raise Unavailable("forwarded write reached a node outside the preference list", required=1)
            params: list[Any] = [key] + ([value] if fwd == m.FWD_PUT else [])
            params += [m.check_context(raw_ctx), m.options_to_wire(opts, "w")]
            return await self._forward(fwd, pref, params, False)  # type: ignore[no-any-return]
        self.counters.puts += 1
        w = opts.quorum or self.s.w
        timeout, deadline = self._deadline(opts)
        plan = self._plan(ring, p, pref, sloppy=not opts.strict and self.on_hinted is not None)
        wq = WriteQuorum(plan.targets, w, deadline, strict=opts.strict)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(status: Status) -> None:
            if status is not Status.PENDING and not done.done():
                done.set_result(None)

        local = self.replica.read(p, key)
        new = vclock.update(local, ctx, value, self.replica.actor, self.wall_ms())
        if self.lww:
            new = vclock.lww(new)
        record = vclock.encode(new)

        # Applied to the local table right here, before any other request can read the key.
        durable = self.replica.write_new(p, key, new) if self.name in plan.nodes else None

        async def local_write() -> None:
            assert durable is not None
            try:
                await durable
            except KVError as e:
                settle(wq.on_error(self.name, str(e)))
            except Exception as e:  # storage errors not yet wrapped
                settle(wq.on_error(self.name, f"{type(e).__name__}: {e}"))
            else:
                settle(wq.on_ack(self.name))

        hinting = self.on_hinted is not None
        sloppy = hinting and not opts.strict
        fallbacks = ring.fallbacks(p, self.s.n_replicas)
        # A primary gets part of the time, so that if it does not answer a stand-in can still
        # be asked before the deadline (Dynamo: "does not answer in time").
        primary_timeout = timeout * 0.5 if sloppy and fallbacks else timeout

        async def remote_write(t: quorum.Target) -> None:
            try:
                await self.rpc.call(
                    self.view.addr_of(t.node), m.REPLICA_PUT, [p, key, record, t.hint_for],
                    primary_timeout if t.hint_for is None else timeout,
                )
            except KVError as e:
                if t.hint_for is None:
                    cover(t.node)
                settle(wq.on_error(t.node, e.code))
            else:
                settle(wq.on_ack(t.node))

        def cover(primary: str) -> None:
            """Find a stand-in for a primary that is down or failed; else keep the hint here."""
            stand_in = next_stand_in(fallbacks, self.view.is_up, [t.node for t in wq.targets]) if sloppy else None
            if stand_in is not None and stand_in != self.name:
                t = quorum.Target(stand_in, hint_for=primary)
                wq.add_stand_in(t)
                self._spawn(remote_write(t))
            elif hinting:
                self._spawn(self._keep_hint(primary, p, key, new))

        for t in plan.targets:
            self._spawn(local_write() if t.node == self.name else remote_write(t))
        for primary in plan.uncovered:
            cover(primary)
        # During a ring change the partition's new replicas get every write too (best effort,
        # not counted towards W): the handoff stream plus these make them complete.
        for extra in self.view.extra_write_targets(p):
            if extra != self.name and self.view.is_up(extra):
                self._spawn(self._best_effort_put(extra, p, key, record, timeout))
        timer = asyncio.get_running_loop().call_at(deadline, lambda: settle(wq.tick(deadline)))
        try:
            await done
        finally:
            timer.cancel()
        if wq.status is not Status.OK:
            self.counters.unavailable += 1
            raise Unavailable(wq.explain(), answered=wq.acks, required=w)
        return {"context": vclock.encode_context(vclock.context_of(new))}

    async def _keep_hint(self, primary: str, p: int, key: bytes, obj: Obj) -> None:
        assert self.on_hinted is not None
        try:
            await self.on_hinted(primary, p, key, obj)
        except KVError as e:
            log.warning("could not keep a hint for %s: %s", primary, e)

    async def _best_effort_put(self, node: str, p: int, key: bytes, record: bytes, timeout: float) -> None:
        try:
            await self.rpc.call(self.view.addr_of(node), m.REPLICA_PUT, [p, key, record, None], timeout)
        except KVError as e:
            log.debug("write of %r to new replica %s failed (handoff will carry it): %s", key, node, e)

    async def _read(
        self, ring: Ring, p: int, pref: tuple[str, ...], key: bytes, opts: m.Options
    ) -> Obj | None:
        r = opts.quorum or self.s.r
        timeout, deadline = self._deadline(opts)
        plan = self._plan(ring, p, pref, sloppy=False)
        rq = ReadQuorum(plan.targets, r, deadline, strict=opts.strict)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        finished: asyncio.Future[None] = loop.create_future()

        def settle(status: Status) -> None:
            if status is not Status.PENDING and not done.done():
                done.set_result(None)
            if (rq.all_answered or status is Status.UNAVAILABLE) and not finished.done():
                finished.set_result(None)

        async def remote_read(node: str) -> None:
            try:
                rec = await self.rpc.call(self.view.addr_of(node), m.REPLICA_GET, [p, key], timeout)
                obj = None if rec is None else vclock.decode(rec)
            except KVError as e:
                settle(rq.on_error(node, e.code))
            else:
                settle(rq.on_reply(node, obj))

        for t in plan.targets:
            if t.node == self.name:
                settle(rq.on_reply(self.name, self.replica.read(p, key)))
            else:
                self._spawn(remote_read(t.node))

        def at_deadline() -> None:
            settle(rq.tick(deadline))
            if not finished.done():
                finished.set_result(None)

        timer = loop.call_at(deadline, at_deadline)
        await done
        if rq.status is not Status.OK:
            timer.cancel()
            self.counters.unavailable += 1
            raise Unavailable(rq.explain(), answered=rq.answered, required=r)
        self._spawn(self._repair_after(rq, finished, timer, p, key))
        return rq.merged

    async def _repair_after(
        self, rq: ReadQuorum, finished: asyncio.Future[None], timer: asyncio.TimerHandle, p: int, key: bytes
    ) -> None:
        await finished
        timer.cancel()
        for node, obj in rq.repairs():
            self.counters.read_repairs += 1
            try:
                if node == self.name:
                    await self.replica.merge_in(p, key, obj)
                else:
                    await self.rpc.call(
                        self.view.addr_of(node), m.REPLICA_PUT, [p, key, vclock.encode(obj), None],
                        self.s.request_timeout_s,
                    )
            except KVError as e:
                log.debug("read repair of %r on %s failed: %s", key, node, e)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
