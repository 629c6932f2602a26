"""Open-loop latency: requests sent at a fixed arrival rate, each timed from the moment it
was *meant* to be sent.

    result = measure_open_loop(LoadSpec("put", ("127.0.0.1:7000",), conns=4, secs=3), 1500.0)

A closed-loop generator (kvstore.testing.load) sends the next request only when a reply
frees a slot, so a server that stalls for 100 ms also stops the clock of the requests that
would have arrived meanwhile: the stall shows up as one slow request instead of hundreds
(coordinated omission). Here request ``j`` is due at ``t0 + j / rate`` whatever the replies
do, and its latency is ``reply time - due time``: a stall, or a sender that fell behind, is
counted against every request it delayed. The sender wakes every ``TICK_S`` at most and
sends what came due since in one write, like a real client's batching; that wait too is
counted, since the clock of each request is its due time.

The requests are kvstore.testing.load's pre-packed ones (msgid = slot), round-robin over
``spec.conns`` connections spread over ``spec.addrs``. ``spec.window`` is ignored: in flight
is whatever the rate and the server make it, up to ``NPRE`` (past that the slot would be
reused while its request is still out, and the point ends with an error).

Result (JSON-ready): ``rate_per_s`` asked, ``ops_s`` replies per measured second, ``n``,
``errors``, ``first_error``, ``lost`` (measured requests without a reply within the drain
time), ``p50_us p99_us p999_us max_us``, ``max_send_lag_us`` (how late the sender itself
was: if large, the generator and not the server made the latency), ``client_cpu_pct``,
``server_cpu_pct``; or ``{"error": ..., "unreachable": True}``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack

from kvstore.config import parse_addr
from kvstore.runtime.rpc import run
from kvstore.testing.load import MASK, NPRE, LoadSpec, Measurement, packed_requests, percentile_us

__all__ = ["DRAIN_S", "TICK_S", "measure_open_loop"]

# After the last send, how long replies are waited for before the rest count as lost.
DRAIN_S = 5.0
# The sender wakes at most this often and sends every request that has come due since: one
# wakeup and one write per request would cost the client more CPU than the server spends on
# the request, and on a shared machine that CPU is taken from the server being measured.
# The wait is not hidden: each request's latency still runs from its own due time.
TICK_S = 0.001


async def _run(spec: LoadSpec, rate: float) -> dict[str, Any]:
    reqs = packed_requests(spec)
    pc = time.perf_counter
    meas = Measurement(spec.op == "get", spec.server_pid)
    due = [0.0] * NPRE  # when the request in each slot was due
    counted = bytearray(NPRE)  # 1: the slot's request is out and in the measured interval
    out = bytearray(NPRE)  # 1: the slot's request is out (no reply yet)
    st: dict[str, Any] = {"closing": False, "lost_conn": None, "outstanding": 0}

    class Conn(asyncio.Protocol):
        def __init__(self, addr: str) -> None:
            self.addr = addr
            self.unp = msgpack.Unpacker(raw=False)

        def data_received(self, data: bytes) -> None:
            self.unp.feed(data)
            now = pc()
            for msg in self.unp:
                slot = msg[1]
                if type(slot) is not int or not 0 <= slot < NPRE or not out[slot]:
                    continue
                out[slot] = 0
                st["outstanding"] -= 1
                if counted[slot]:
                    counted[slot] = 0
                    meas.reply(msg, now - due[slot])

        def connection_lost(self, exc: Exception | None) -> None:
            if not st["closing"] and st["lost_conn"] is None:
                why = f": {exc}" if exc else " by the server"
                st["lost_conn"] = f"connection to {self.addr} closed{why}"

    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []
    try:
        for c in range(spec.conns):
            addr = spec.addrs[c % len(spec.addrs)]
            host, port = parse_addr(addr)
            try:
                tr, _ = await asyncio.wait_for(
                    loop.create_connection(lambda a=addr: Conn(a), host, port),  # type: ignore[misc]
                    spec.connect_timeout_s,
                )
            except OSError as e:
                return {"error": f"cannot reach {addr}: {e}", "unreachable": True}
            transports.append(tr)
        nconn = len(transports)
        total = int(rate * (spec.warm + spec.secs))
        first_measured = int(rate * spec.warm)
        t0 = pc() + 0.01
        sent = 0
        max_lag = 0.0
        while sent < total and st["lost_conn"] is None:
            now = pc()
            upto = min(total, int((now - t0) * rate) + 1)
            if upto > sent:
                if sent <= first_measured < upto:
                    meas.start()
                # The oldest request of this burst is the latest relative to its due time.
                max_lag = max(max_lag, now - (t0 + sent / rate)) if sent >= first_measured else max_lag
                chunks: list[list[bytes]] = [[] for _ in range(nconn)]
                for j in range(sent, upto):
                    slot = j & MASK
                    if out[slot]:
                        return {"error": f"more than {NPRE} requests in flight: the server fell behind the rate"}
                    out[slot] = 1
                    counted[slot] = j >= first_measured
                    due[slot] = t0 + j / rate
                    chunks[j % nconn].append(reqs[slot])
                st["outstanding"] += upto - sent
                for tr, chunk in zip(transports, chunks, strict=True):
                    if chunk:
                        tr.write(b"".join(chunk))
                sent = upto
            await asyncio.sleep(max(TICK_S, t0 + sent / rate - pc()))
        if not meas.measuring:  # a rate too low for even one request after the warm-up
            meas.start()
        drain_until = pc() + DRAIN_S
        while st["outstanding"] and pc() < drain_until and st["lost_conn"] is None:
            await asyncio.sleep(0.005)
        meas.stop()
    finally:
        st["closing"] = True
        for t in transports:
            t.abort()
    if st["lost_conn"]:
        return {"error": st["lost_conn"], "unreachable": True}
    res = meas.result()
    # ops/s over the sending interval (the drain is not time the rate was offered in).
    res["ops_s"] = round(res["n"] / spec.secs) if spec.secs > 0 else 0
    lat = sorted(meas.lat)
    res.update(
        rate_per_s=round(rate, 1),
        lost=sum(counted),
        max_us=percentile_us(lat, 1.0),
        max_send_lag_us=round(max_lag * 1e6, 1),
    )
    return res


def measure_open_loop(spec: LoadSpec, rate_per_s: float) -> dict[str, Any]:
    """Offer ``rate_per_s`` requests a second for ``spec.warm + spec.secs`` seconds and return
    the latency of those due after the warm-up, from their due times (see the module doc)."""
    if rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    return run(_run(spec, rate_per_s), loop="auto")
