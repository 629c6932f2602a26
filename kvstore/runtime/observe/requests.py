"""Counts and times the requests a node serves, as the RPC server's call observers.

The server tells each observer (kvstore.runtime.rpc.observer) when a request for its method
arrives and, for a timed one, when the reply is known: the request machinery carries no
metrics code, and a request costs a dict lookup, one clock read per reply and a few integer
adds. (It used to be a wrapper around each handler: two calls through Python's protocol with
keywords, a reply wrapper and two clock reads, ~5k instructions of a ~60k put.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kvstore.core import messages as m
from kvstore.errors import to_wire
from kvstore.runtime.observe.histogram import LATENCY_BOUNDS_S, SIBLING_BOUNDS, Histogram
from kvstore.runtime.rpc.observer import CallObserver

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

    def observers(self) -> dict[str, CallObserver]:
        """The RPC server's observers of the client and replica methods."""
        out: dict[str, CallObserver] = {}
        for method, op in CLIENT_OPS.items():
            out[method] = _Timed(self.ops[op], self.siblings if op == "get" else None)
        for method, op in REPLICA_OPS.items():
            out[method] = _Counted(self.replica, op)
        out[m.REPLICA_MANY] = _CountedMany(self.replica)
        return out

    def total_requests(self) -> int:
        return sum(s.requests for s in self.ops.values())


class _Timed(CallObserver):
    """A client operation: counted, timed, its errors classified; a get's sibling count."""

    def __init__(self, stats: OpStats, siblings: Histogram | None) -> None:
        super().__init__(timed=True)
        self.stats = stats
        self.siblings = siblings

    def arrived(self, params: list[Any]) -> None:
        self.stats.requests += 1

    def answered(self, seconds: float, result: Any, exc: BaseException | None) -> None:
        stats = self.stats
        stats.latency.observe(seconds)  # compiled together: a direct call
        if exc is None:
            siblings = self.siblings
            if siblings is not None and type(result) is dict:
                values = result.get("values")
                if type(values) is list:
                    siblings.observe(len(values))
        elif isinstance(exc, asyncio.CancelledError):
            stats.error("cancelled")
        else:
            # The code the reply carries (the server tells the error it answers with: a
            # call whose params do not fit as invalid_request).
            stats.error(to_wire(exc)["code"])


class _Counted(CallObserver):
    """A replica operation: counted only."""

    def __init__(self, counts: dict[str, int], op: str) -> None:
        super().__init__()
        self.counts = counts
        self.op = op

    def arrived(self, params: list[Any]) -> None:
        self.counts[self.op] += 1


class _CountedMany(CallObserver):
    """replica.many carries a turn's gets and puts for one peer: each op is counted as the
    replica.get or replica.put it stands for."""

    def __init__(self, counts: dict[str, int]) -> None:
        super().__init__()
        self.counts = counts

    def arrived(self, params: list[Any]) -> None:
        ops = params[0] if len(params) == 1 else None
        if type(ops) is not list:
            return
        puts = 0
        for op in ops:
            if type(op) is list and op and op[0] == m.MANY_PUT:
                puts += 1
        counts = self.counts
        counts["put"] += puts
        counts["get"] += len(ops) - puts
