"""Counts and times the requests a node serves, by wrapping its RPC handlers.

Wrapping (rather than counting inside the coordinator) keeps the request machinery free of
metrics code. A wrapped handler costs two ``perf_counter`` calls, one done-callback on the
reply's future (or a wrapped reply callback, kvstore.runtime.rpc.later) and a few integer
adds; replica handlers only count.
"""

from __future__ import annotations

import asyncio
import functools
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kvstore.core import messages as m
from kvstore.errors import KVError
from kvstore.runtime.observe.histogram import LATENCY_BOUNDS_S, SIBLING_BOUNDS, Histogram
from kvstore.runtime.rpc.later import LATER, Reply

# The client-facing operations and the RPC methods that carry them (a forwarded request is
# counted again where it is coordinated, under the same op).
CLIENT_OPS: Mapping[str, str] = {
    m.GET: "get", m.PUT: "put", m.DELETE: "delete",
    m.FWD_GET: "get", m.FWD_PUT: "put", m.FWD_DELETE: "delete",
}
REPLICA_OPS: Mapping[str, str] = {m.REPLICA_GET: "get", m.REPLICA_PUT: "put", m.REPLICA_PUT_BATCH: "put_batch"}


class OpStats:
    """One operation: requests, errors by wire code, latency from arrival to reply."""

    __slots__ = ("errors", "latency", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors: dict[str, int] = {}
        self.latency = Histogram(LATENCY_BOUNDS_S)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class RequestStats:
    def __init__(self) -> None:
        self.ops: dict[str, OpStats] = {op: OpStats() for op in ("get", "put", "delete")}
        self.replica: dict[str, int] = dict.fromkeys(REPLICA_OPS.values(), 0)
        self.siblings = Histogram(SIBLING_BOUNDS)

    def wrap(self, handlers: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
        """``handlers`` with the client and replica methods wrapped; the others as they are."""
        out = dict(handlers)
        for method, op in CLIENT_OPS.items():
            if method in out:
                out[method] = self._timed(op, out[method])
        for method, op in REPLICA_OPS.items():
            if method in out:
                out[method] = self._counted(op, out[method])
        if m.REPLICA_MANY in out:
            out[m.REPLICA_MANY] = self._counted_many(out[m.REPLICA_MANY])
        return out

    def _timed(self, op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        stats = self.ops[op]
        hist = stats.latency
        counts, bounds = hist.counts, hist.bounds
        find = bisect_left  # held by the closures: no globals lookup per request
        siblings = self.siblings if op == "get" else None
        clock = time.perf_counter

        def failed(t0: float, e: BaseException) -> None:
            hist.observe(clock() - t0)
            if isinstance(e, KVError):
                stats.error(e.code)
            elif isinstance(e, asyncio.CancelledError):
                stats.error("cancelled")
            else:
                # The RPC server answers a call with the wrong arguments as invalid_request.
                stats.error("invalid_request" if isinstance(e, TypeError) else "internal")

        def done(t0: float, r: Any) -> None:
            # Histogram.observe inlined: this runs once per request.
            dt = clock() - t0
            counts[find(bounds, dt)] += 1
            hist.sum += dt
            if siblings is not None:
                _count_siblings(siblings, r)

        def settle(t0: float, f: asyncio.Future[Any]) -> None:
            try:
                r = f.result()
            except BaseException as e:
                failed(t0, e)
                return
            done(t0, r)

        async def awaited(t0: float, aw: Awaitable[Any]) -> Any:
            try:
                r = await aw
            except BaseException as e:
                failed(t0, e)
                raise
            done(t0, r)
            return r

        @functools.wraps(fn)  # keeps fn's replies_later mark
        def call(*args: Any, reply: Reply | None = None) -> Any:
            stats.requests += 1
            t0 = clock()
            try:
                if reply is None:
                    r = fn(*args)
                else:
                    r = fn(*args, reply=_TimedReply(done, failed, reply, t0))
                    if r is LATER:
                        return r
            except Exception as e:
                failed(t0, e)
                raise
            if type(r) is dict:  # answered at once (a local read): the usual case first
                done(t0, r)
                return r
            if type(r) is asyncio.Future or isinstance(r, asyncio.Future):
                if r.done():
                    settle(t0, r)  # settled already: no callback to schedule
                else:
                    r.add_done_callback(functools.partial(settle, t0))
                return r
            if asyncio.iscoroutine(r) or asyncio.isfuture(r):
                return awaited(t0, r)
            done(t0, r)
            return r

        return call

    def _counted(self, op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        counts = self.replica

        @functools.wraps(fn)
        def call(*args: Any) -> Any:
            counts[op] += 1
            return fn(*args)

        return call

    def _counted_many(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """replica.many carries a turn's gets and puts for one peer: each op is counted as
        the replica.get or replica.put it stands for."""
        counts = self.replica

        @functools.wraps(fn)  # keeps fn's replies_later mark
        def call(ops: Any, *, reply: Reply | None = None) -> Any:
            if type(ops) is list:
                puts = sum(1 for op in ops if type(op) is list and op and op[0] == m.MANY_PUT)
                counts["put"] += puts
                counts["get"] += len(ops) - puts
            return fn(ops) if reply is None else fn(ops, reply=reply)

        return call

    def total_requests(self) -> int:
        return sum(s.requests for s in self.ops.values())


def _count_siblings(h: Histogram, reply: Any) -> None:
    values = reply.get("values") if isinstance(reply, dict) else None
    if isinstance(values, list):
        h.observe(len(values))


class _TimedReply:
    """A timed request's reply callback: records the latency, then replies. A callable, not
    functools.partial of a closure: one object and one call less per request."""

    __slots__ = ("done", "failed", "reply", "t0")

    def __init__(
        self, done: Callable[[float, Any], None], failed: Callable[[float, BaseException], None], reply: Reply,
        t0: float,
    ) -> None:
        self.done = done
        self.failed = failed
        self.reply = reply
        self.t0 = t0

    def __call__(self, result: Any, exc: BaseException | None) -> None:
        if exc is not None:
            self.failed(self.t0, exc)
        else:
            self.done(self.t0, result)
        self.reply(result, exc)
