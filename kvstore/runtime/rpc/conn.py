"""What server and client connections share: the once-per-turn output flusher, the
connection base (frame scanning before decoding, queued output), rate-limited logging, and
the choice of event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final

import msgpack

from kvstore.runtime.framing import FrameLimits, FrameScanner
from kvstore.runtime.rpc.wire import (
    _T,
    _new_unpacker,
    log,
)

# A Final name, not ``from msgpack import unpackb``: compiled, an imported name is a lookup
# in the module's dict at every call, and this one runs once per chunk received.
_unpackb: Final = msgpack.unpackb


def available_loops() -> tuple[str, ...]:
    """Event loop kinds usable here: always "asyncio", plus "uvloop" when installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ("asyncio",)
    return ("asyncio", "uvloop")


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop: "uvloop", "asyncio", or "auto" (uvloop when installed)."""
    if kind == "auto":
        kind = "uvloop" if "uvloop" in available_loops() else "asyncio"
    if kind == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    if kind == "asyncio":
        return asyncio.new_event_loop()
    raise ValueError(f"unknown event loop kind {kind!r} (auto, uvloop, asyncio)")


def run(main: Coroutine[Any, Any, _T], *, loop: str = "auto") -> _T:
    """``asyncio.run`` on the chosen loop kind (uvloop by default when installed)."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(loop)) as runner:
        return runner.run(main)


class _Flusher:
    """Writes what connections queued during one loop turn, once, at the end of the turn.

    Between :meth:`hold` and :meth:`release` nothing is scheduled: release writes what was
    queued meanwhile at once. Around work that runs late in a turn (a storage commit, the
    replies of peers) that saves a pass of the event loop, which at one request in flight
    is an epoll wait and the loop's own work per request."""

    __slots__ = ("_before", "_dirty", "_held", "_loop", "_scheduled")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, before: Callable[[], None] | None = None
    ) -> None:
        self._loop = loop
        self._dirty: list[_Conn] = []
        self._scheduled = False
        self._held = 0
        self._before = before

    def add(self, conn: _Conn) -> None:
        self._dirty.append(conn)
        if not self._scheduled and not self._held:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def hold(self) -> None:
        self._held += 1

    @property
    def held(self) -> bool:
        return self._held > 0

    def release(self) -> None:
        self._held -= 1
        if not self._held and self._dirty:
            self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if self._before is not None:
            self._before()
        dirty = self._dirty
        self._dirty = []
        for conn in dirty:
            conn._flush_out()


class _Conn(asyncio.Protocol):
    """What server and client connections share: framing in, coalesced output out."""

    __slots__ = (
        "_closed", "_fed", "_flusher", "_max_frame", "_msgs", "_out", "_queued", "_scan",
        "_transport", "_unp",
    )

    def __init__(self, flusher: _Flusher, limits: FrameLimits) -> None:
        self._flusher = flusher
        self._max_frame = limits.max_bytes
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._scan = FrameScanner(limits)
        self._unp = _new_unpacker(limits.max_bytes)
        self._fed = 0  # bytes given to the unpacker (its tell() equals this when it is empty)
        # The messages of the chunk being handled: the unpacker, or the one a whole-frame
        # chunk decoded to. Drains take from it (an iterator, so a partial read leaves the
        # rest for the next).
        self._msgs: Any = self._unp
        self._out: list[bytes] = []
        self._queued = False
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        scan = self._scan
        fresh = not scan.in_frame
        before = scan.frames
        # The limits are checked on the raw bytes first: nothing over them is ever buffered.
        err = scan.feed(data)
        if err is not None:
            good = scan.good_bytes
            if good and self._feed(data[:good]):
                # Complete frames before the bad one are still served (replies owed).
                self._drain()
            if not self._closed:
                self._abandon(err)
            return
        if fresh and scan.frames == before + 1 and not scan.in_frame and self._fed == self._unp.tell():
            # The chunk is one whole frame and nothing waits in the unpacker (one request or
            # reply per chunk: most of them below full pipelining). Decoded in one call, it
            # skips the unpacker's buffer copy and the StopIteration that ends its iteration
            # (~450 ns a chunk). Input the scanner passed but msgpack refuses goes the usual
            # way, so the refusal is the same.
            try:
                msg = _unpackb(data, raw=False, unicode_errors="surrogateescape")
            except Exception:
                pass
            else:
                self._msgs = iter((msg,))
                self._drain()
                return
        if self._feed(data):
            self._drain()

    def _feed(self, data: bytes) -> bool:
        """Give ``data`` to the unpacker; False: the connection was given up instead."""
        try:
            self._unp.feed(data)
        except msgpack.BufferFull:  # cannot happen within the scanner's limits: a bug guard
            self._abandon("unpacker buffer full")
            return False
        self._fed += len(data)
        self._msgs = self._unp
        return True

    def _drain(self) -> None:
        raise NotImplementedError

    def _abandon(self, reason: str) -> None:
        """Give up on a peer that broke the protocol: flush what is owed, then close."""
        _log_refusal("closing connection from %s: %s", self._peername(), reason)
        self._flush_out()
        self._closed = True
        self._transport.close()

    def _peername(self) -> str:
        try:
            return str(self._transport.get_extra_info("peername"))
        except Exception:
            return "?"

    def _queue(self, data: bytes) -> None:
        if self._closed:
            return
        self._out.append(data)
        if not self._queued:
            self._queued = True
            self._flusher.add(self)

    def _flush_out(self) -> None:
        out = self._out
        self._queued = False
        if not out:
            return
        self._out = []
        if not self._closed:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))


class _RateLimitedLog:
    """A flood of bad connections must not become a flood of log lines: the first few of
    each window are warnings, the rest are counted and summed up in the next warning."""

    __slots__ = ("_left", "_suppressed", "_window_end")

    PER_WINDOW = 20
    WINDOW_S = 10.0

    def __init__(self) -> None:
        self._window_end = 0.0
        self._left = self.PER_WINDOW
        self._suppressed = 0

    def __call__(self, fmt: str, *args: Any) -> None:
        import time

        now = time.monotonic()
        if now >= self._window_end:
            if self._suppressed:
                log.warning("%d more connections closed for breaking limits", self._suppressed)
            self._window_end = now + self.WINDOW_S
            self._left = self.PER_WINDOW
            self._suppressed = 0
        if self._left > 0:
            self._left -= 1
            log.warning(fmt, *args)
        else:
            self._suppressed += 1
            log.debug(fmt, *args)


_log_refusal = _RateLimitedLog()


# --------------------------------------------------------------------------- server

Handler = Callable[..., Any]

