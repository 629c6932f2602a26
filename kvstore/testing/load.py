"""The load generator of ``kv bench`` and benchmarks/bench_transport.py: one point of load
against one or more msgpack-RPC servers, measured.

    result = measure(LoadSpec("put", ("127.0.0.1:7000",), conns=4, window=64, secs=3))

C connections x W requests in flight: a sliding window over pre-packed requests (msgid =
slot, so packing costs nothing while measuring) on an asyncio ``Protocol``, uvloop when
installed, connections spread round-robin over the addresses. With 1 x 1 a blocking socket
instead, strictly one request at a time: no event loop in the client, so the latency is the
server's and the kernel's, comparable with other one-in-flight clients (redis-benchmark -P 1).

Run it in a process of its own, as both callers do, so that neither the caller's CPU nor
its event loop distorts the figures. The result is one JSON-ready dict:

    ops_s, n           successful replies per second, and how many were measured
    errors, first_error error replies, and the first one's text
    hit_pct            gets only: % that found a value; values_per_hit: siblings per hit
    p50_us p99_us p999_us   latency percentiles of the successful replies
    secs, client_cpu_pct, server_cpu_pct (this process; the server's with ``server_pid``)

or ``{"error": "...", "unreachable": True}`` when a server cannot be reached or drops a
connection while measuring.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from kvstore.config import parse_addr
from kvstore.runtime.rpc import run

__all__ = [
    "NPRE", "LoadSpec", "Measurement", "cpu_seconds", "measure", "packed_requests", "percentile_us",
    "request_keys",
]  # fmt: skip

NPRE = 1 << 16  # pre-packed requests per point
MASK = NPRE - 1
KEY_FMT = "kvbench:%08d"  # keys of a namespace of their own, never a user's
SEED = 1


@dataclass(frozen=True, slots=True)
class LoadSpec:
    op: str  # "put", "get" or "incr" (a counter data type's increment by 1; node API only)
    addrs: tuple[str, ...]
    conns: int = 4
    window: int = 64  # requests in flight per connection
    secs: float = 3.0  # measured
    warm: float = 0.5  # before measuring, not measured
    keys: int = 100_000  # key space: KEY_FMT % 0 .. keys - 1
    value_bytes: int = 100
    key_fmt: str = KEY_FMT
    seed: int = SEED  # the same seed gives the same key order: a get point reads what a put wrote
    # A node's public API (put [key, value, context, opts], get [key, opts]) or the bare one
    # of a plain key-value server (put [key, value], get [key]).
    node_api: bool = True
    connect_timeout_s: float = 5.0
    server_pid: int = 0  # whose CPU to measure, when the server runs on this machine

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> LoadSpec:
        """From the JSON object a parent process passes its load-generator child."""
        return cls(**{**doc, "addrs": tuple(doc["addrs"])})


def request_keys(keys: int, key_fmt: str = KEY_FMT, seed: int = SEED) -> list[bytes]:
    """The keys of the pre-packed requests, in order (a server can preload exactly these)."""
    fmt = key_fmt.encode()
    rnd = random.Random(seed)
    return [fmt % rnd.randrange(keys) for _ in range(NPRE)]


def packed_requests(spec: LoadSpec) -> list[bytes]:
    """The ``NPRE`` pre-packed requests of a point, msgid = index (the open-loop generator
    sends the same ones)."""
    ks = request_keys(spec.keys, spec.key_fmt, spec.seed)
    pack = msgpack.Packer(use_bin_type=True).pack
    if spec.op == "put":
        value = b"x" * spec.value_bytes
        tail: list[Any] = [None, {}] if spec.node_api else []
        return [pack([0, i, "put", [ks[i], value, *tail]]) for i in range(NPRE)]
    if spec.op == "incr":
        return [pack([0, i, "dt.update", [ks[i], "counter", {"incr": 1}, None, {}]]) for i in range(NPRE)]
    tail = [{}] if spec.node_api else []
    return [pack([0, i, "get", [ks[i], *tail]]) for i in range(NPRE)]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far, None when it cannot be read."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def percentile_us(lat: list[float], p: float) -> float:
    """The ``p`` quantile of sorted latencies in seconds, in µs."""
    if not lat:
        return 0.0
    return round(lat[min(len(lat) - 1, int(len(lat) * p))] * 1e6, 1)


def _error_text(err: Any) -> str:
    if isinstance(err, dict):
        return f"{err.get('code', '?')}: {err.get('message', '')}".rstrip(": ")
    return str(err)


class Measurement:
    """The measured interval of one point: the replies in it and the CPU it took."""

    def __init__(self, is_get: bool, server_pid: int = 0) -> None:
        self.is_get = is_get
        self.server_pid = server_pid
        self.measuring = False
        self.lat: list[float] = []
        self.errors = 0
        self.first_error: str | None = None
        self.hits = 0
        self.values = 0

    def start(self) -> None:
        self.s0 = cpu_seconds(self.server_pid)
        self.c0 = time.process_time()
        self.t0 = time.perf_counter()
        self.measuring = True

    def stop(self) -> None:
        self.measuring = False
        self.t1 = time.perf_counter()
        self.c1 = time.process_time()
        self.s1 = cpu_seconds(self.server_pid)

    def ok(self, latency_s: float, result: Any) -> None:
        self.lat.append(latency_s)
        if self.is_get:
            # A node answers {"values": [siblings], ...}; a plain server the value or None.
            if type(result) is dict:
                v = len(result.get("values") or ())
                self.hits += v > 0
                self.values += v
            elif result is not None:
                self.hits += 1
                self.values += 1

    def failed(self, err: Any) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = _error_text(err)

    def reply(self, msg: Any, latency_s: float) -> None:
        """A msgpack-RPC response ``[1, msgid, error, result]``."""
        if msg[2] is None:
            self.ok(latency_s, msg[3])
        else:
            self.failed(msg[2])

    def result(self) -> dict[str, Any]:
        secs = self.t1 - self.t0
        cpu = self.c1 - self.c0
        server = self.s1 - self.s0 if self.s0 is not None and self.s1 is not None else None
        lat = sorted(self.lat)
        n = len(lat)
        return {
            "ops_s": round(n / secs) if secs > 0 else 0,
            "n": n,
            "errors": self.errors,
            "first_error": self.first_error,
            "hit_pct": round(100 * self.hits / n, 1) if self.is_get and n else None,
            # More than 1: blind puts (no context) left siblings on the keys read.
            "values_per_hit": round(self.values / self.hits, 2) if self.is_get and self.hits else None,
            "p50_us": percentile_us(lat, 0.5),
            "p99_us": percentile_us(lat, 0.99),
            "p999_us": percentile_us(lat, 0.999),
            "secs": round(secs, 3),
            "client_cpu_pct": round(100 * cpu / secs, 1) if secs > 0 else None,
            "server_cpu_pct": round(100 * server / secs, 1) if server is not None and secs > 0 else None,
        }


def _unreachable(addr: str, e: BaseException) -> dict[str, Any]:
    if isinstance(e, TimeoutError):
        why = "connect timed out"
    elif isinstance(e, OSError) and e.errno:
        why = os.strerror(e.errno).lower()
    else:
        why = str(e)
    return {"error": f"cannot reach {addr}: {why}", "unreachable": True}


async def _run_window(spec: LoadSpec) -> dict[str, Any]:
    reqs = packed_requests(spec)
    # What is alive now (modules, the requests) stays alive: out of the collector's scans, so
    # a full collection while measuring costs what a bare client's would.
    gc.collect()
    gc.freeze()
    window = spec.window
    pc = time.perf_counter
    meas = Measurement(spec.op == "get", spec.server_pid)
    st: dict[str, Any] = {"closing": False, "lost": None}

    class Conn(asyncio.Protocol):
        def __init__(self, base: int, addr: str) -> None:
            self.next = base
            self.addr = addr
            self.sent = [0.0] * NPRE
            self.unp = msgpack.Unpacker(raw=False)
            self.tr: Any = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.tr = transport
            self.send(window)

        def send(self, k: int) -> None:
            now = pc()
            sent = self.sent
            nxt = self.next
            chunk = []
            for _ in range(k):
                j = nxt & MASK
                nxt += 1
                sent[j] = now
                chunk.append(reqs[j])
            self.next = nxt
            self.tr.write(b"".join(chunk))

        def data_received(self, data: bytes) -> None:
            self.unp.feed(data)
            now = pc()
            k = 0
            if meas.measuring:
                sent = self.sent
                for m in self.unp:
                    k += 1
                    meas.reply(m, now - sent[m[1]])
            else:
                for _ in self.unp:
                    k += 1
            if k:
                self.send(k)

        def connection_lost(self, exc: Exception | None) -> None:
            if not st["closing"] and st["lost"] is None:
                why = f": {exc}" if exc else " by the server"
                st["lost"] = f"connection to {self.addr} closed{why}"

    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []
    # Each connection walks its own stretch of the requests: overlapping walks would send
    # the same keys from several connections at once, which on a cluster are concurrent
    # blind writes of one key (siblings), not what a spread workload does.
    stride = NPRE // spec.conns
    try:
        for c in range(spec.conns):
            addr = spec.addrs[c % len(spec.addrs)]
            host, port = parse_addr(addr)
            try:
                tr, _ = await asyncio.wait_for(
                    loop.create_connection(lambda c=c, a=addr: Conn(c * stride, a), host, port),  # type: ignore[misc]
                    spec.connect_timeout_s,
                )
            except OSError as e:  # TimeoutError included
                return _unreachable(addr, e)
            transports.append(tr)
        await asyncio.sleep(spec.warm)
        meas.start()
        await asyncio.sleep(spec.secs)
        meas.stop()
    finally:
        st["closing"] = True
        for t in transports:
            t.abort()
    if st["lost"]:
        return {"error": st["lost"], "unreachable": True}
    return meas.result()


def _run_one_at_a_time(spec: LoadSpec) -> dict[str, Any]:
    reqs = packed_requests(spec)
    addr = spec.addrs[0]
    host, port = parse_addr(addr)
    try:
        s = socket.create_connection((host, port), timeout=spec.connect_timeout_s)
    except OSError as e:
        return _unreachable(addr, e)
    # A server that stops answering ends the point instead of hanging it.
    s.settimeout(spec.connect_timeout_s + spec.warm + spec.secs)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    unp = msgpack.Unpacker(raw=False)
    pc = time.perf_counter
    meas = Measurement(spec.op == "get", spec.server_pid)
    warm_until = pc() + spec.warm
    end = 0.0
    i = 0
    try:
        with s:
            while True:
                t0 = pc()
                s.sendall(reqs[i & MASK])
                i += 1
                msg = None
                while msg is None:
                    chunk = s.recv(65536)
                    if not chunk:
                        return {"error": f"connection to {addr} closed by the server", "unreachable": True}
                    unp.feed(chunk)
                    msg = next(unp, None)
                t1 = pc()
                if meas.measuring:
                    meas.reply(msg, t1 - t0)
                    if t1 >= end:
                        break
                elif t1 >= warm_until:
                    meas.start()
                    end = meas.t0 + spec.secs
    except OSError as e:
        return {"error": f"connection to {addr} failed: {e}", "unreachable": True}
    meas.stop()
    return meas.result()


def measure(spec: LoadSpec) -> dict[str, Any]:
    """Run one point of load and return its result (see the module doc)."""
    if spec.conns == 1 and spec.window == 1:
        return _run_one_at_a_time(spec)
    return run(_run_window(spec), loop="auto")
