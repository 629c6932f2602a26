"""msgpack-RPC over asyncio: :class:`RpcServer` and a pooled, pipelined :class:`RpcClient`.

Wire format (the msgpack-RPC spec, so any standard client can call a node)::

    request       [0, msgid, method, params]
    response      [1, msgid, error, result]     error is None or {"code", "message", ...}
    notification  [2, method, params]           no response

Many requests are in flight on one connection and responses come back in any order.

Why it is shaped like this (throughput is decided here, not in the handlers):

- Protocols, not streams: ``data_received`` feeds a ``msgpack.Unpacker`` and handles every
  complete message of that chunk in one pass. A sync handler's reply is produced inline (no
  task, no future) and all replies of one chunk go out in one ``transport.write``.
- Output produced outside ``data_received`` (replies of async handlers, requests of the
  client) is queued per connection and flushed once per loop turn by one ``call_soon``, so a
  burst of completions or calls costs one syscall per connection, not one per message.
- Robustness: every chunk goes through a :class:`~kvstore.runtime.framing.FrameScanner`
  before the unpacker sees it, so a frame over ``max_frame_bytes`` (however it is cut into
  pieces), nested past ``max_frame_depth`` or holding more than ``max_frame_elements``
  closes that connection, with the reason logged, before its bytes are buffered or decoded.
  Undecodable bytes close the connection too; a well-framed message of the wrong shape gets
  an error reply when it carries a usable msgid. Strings are decoded with ``surrogateescape``
  so invalid UTF-8 never raises, and packed back the same way, so such names round-trip.
- Back-pressure: a connection whose peer does not read (its replies pass
  ``max_reply_buffer_bytes``), or that has too many async handlers running, stops being read
  until it drains. Nothing is buffered without bound: requests wait in the kernel.
- Abuse: at most ``max_connections`` open; a connection with nothing to do for
  ``idle_timeout_s`` is told ``bye`` and closed, one holding a partial frame for
  ``frame_timeout_s`` (a slow sender) is closed, and one that has not proved the cluster key
  within ``auth_timeout_s`` is closed. A sweep once a fraction of a second checks them all.
- Authentication (when a :class:`~kvstore.runtime.security.Keyring` is given) and TLS (an
  ``ssl.SSLContext``): see kvstore/runtime/security.py for the handshake.

Handlers receive values exactly as decoded: old msgpack clients send str where new ones send
bin, so handlers normalise with :func:`as_bytes` / :func:`as_str`.

The client raises :class:`~kvstore.errors.Unreachable` with an attribute ``sent``:
``False`` means the request never left this process (safe to retry elsewhere), ``True``
means it was written and the outcome is unknown. :func:`was_sent` reads it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
import ssl
import types
from asyncio import isfuture
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import msgpack

from kvstore.config import Settings, parse_addr
from kvstore.core.messages import as_bytes
from kvstore.errors import (
    AuthError,
    InternalError,
    InvalidRequest,
    KVError,
    ProtocolError,
    Timeout,
    TooLarge,
    UnknownMethod,
    Unreachable,
    from_wire,
    to_wire,
)
from kvstore.runtime.framing import FrameLimits, FrameScanner
from kvstore.runtime.security import AUTH_CHALLENGE, AUTH_HELLO, AUTH_VERSION, NONCE_BYTES, Keyring

__all__ = [
    "RpcClient",
    "RpcServer",
    "as_bytes",
    "as_str",
    "available_loops",
    "new_event_loop",
    "run",
    "was_sent",
]

log = logging.getLogger("kvstore.rpc")

REQUEST = 0
RESPONSE = 1
NOTIFICATION = 2

_DEFAULTS = Settings()
DEFAULT_MAX_FRAME_BYTES: int = _DEFAULTS.max_frame_bytes
# Past this many running async handlers on one connection it stops being read, so a client
# that pipelines without bound cannot pile up tasks without bound.
DEFAULT_MAX_INFLIGHT = _DEFAULTS.max_inflight_per_conn
# Before a connection has proved the key it may send only the small auth.hello frame.
PREAUTH_LIMITS = FrameLimits(max_bytes=1024, max_depth=2, max_elements=8)
# The unpacker holds at most the partial frame plus one chunk read from the socket.
_CHUNK_SLACK = 4 * 1024 * 1024
_MSGID_MASK = 0xFFFFFFFF  # msgpack-RPC msgids are uint32
_CoroutineType = types.CoroutineType
_T = TypeVar("_T")


# --------------------------------------------------------------------------- helpers


# A server that is stopping sends this notification on every connection (see RpcServer.drain).
GOAWAY = "goaway"
GOAWAY_B = b"goaway"
# How long a client then treats that server as down before trying it again.
GOAWAY_HOLD_S = 1.0
# How long a call waits for a reconnect to a peer that failed before (see _connect).
RETRY_CONNECT_WAIT_S = 0.25
# A server closing an idle connection sends this first: the client stops using it (without
# counting the server as down), so no new request races the close.
BYE = "bye"
BYE_B = b"bye"
BYE_GRACE_S = 2.0


def as_str(x: object, what: str = "value") -> str:
    """``x`` as str: str as is, bin decoded as UTF-8 (invalid bytes kept as surrogates)."""
    if type(x) is str:
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x).decode("utf-8", "surrogateescape")
    if isinstance(x, str):
        return str(x)
    raise InvalidRequest(f"{what} must be a string, got {type(x).__name__}")


def was_sent(exc: BaseException) -> bool:
    """Whether a failed call may have reached the peer (True unless known otherwise)."""
    return bool(getattr(exc, "sent", True))


def _unreachable(message: str, *, sent: bool) -> Unreachable:
    exc = Unreachable(message)
    # Kept off ``extra`` so it is not sent on the wire: it describes this hop only.
    exc.sent = sent  # type: ignore[attr-defined]
    return exc


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


def _new_unpacker(max_frame_bytes: int) -> Any:
    return msgpack.Unpacker(
        raw=False,
        unicode_errors="surrogateescape",
        max_buffer_size=max_frame_bytes + _CHUNK_SLACK,
    )


def _new_packer() -> Any:
    return msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")


class _Flusher:
    """Writes what connections queued during one loop turn, once, at the end of the turn."""

    __slots__ = ("_before", "_dirty", "_loop", "_scheduled")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, before: Callable[[], None] | None = None
    ) -> None:
        self._loop = loop
        self._dirty: list[_Conn] = []
        self._scheduled = False
        self._before = before

    def add(self, conn: _Conn) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

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
        "_closed", "_flusher", "_max_frame", "_out", "_queued", "_scan", "_transport", "_unp",
    )

    def __init__(self, flusher: _Flusher, limits: FrameLimits) -> None:
        self._flusher = flusher
        self._max_frame = limits.max_bytes
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._scan = FrameScanner(limits)
        self._unp = _new_unpacker(limits.max_bytes)
        self._out: list[bytes] = []
        self._queued = False
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        # The limits are checked on the raw bytes first: nothing over them is ever buffered.
        err = self._scan.feed(data)
        if err is not None:
            good = self._scan.good_bytes
            if good:
                # Complete frames before the bad one are still served (replies owed).
                self._unp.feed(data[:good])
                self._drain()
            if not self._closed:
                self._abandon(err)
            return
        try:
            self._unp.feed(data)
        except msgpack.BufferFull:  # cannot happen within the scanner's limits: a bug guard
            self._abandon("unpacker buffer full")
            return
        self._drain()

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


class _ServerConn(_Conn):
    __slots__ = (
        "_authed",
        "_bye_at",
        "_eof",
        "_frame_since",
        "_handlers",
        "_inflight",
        "_key_index",
        "_last_in",
        "_nonce",
        "_opened_at",
        "_pack",
        "_paused_inflight",
        "_paused_reply",
        "_paused_write",
        "_server",
    )

    def __init__(self, server: RpcServer) -> None:
        assert server._flusher is not None
        secured = server._keyring is not None
        super().__init__(server._flusher, PREAUTH_LIMITS if secured else server._limits)
        self._server = server
        self._handlers = server._handlers
        self._pack = server._pack
        self._inflight = 0
        self._eof = False
        self._paused_write = False
        self._paused_inflight = False
        self._paused_reply = False
        self._authed = not secured
        self._nonce = b""
        self._key_index = 0
        now = server._loop.time()
        self._opened_at = now
        self._last_in = now
        self._frame_since = 0.0
        self._bye_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        server = self._server
        if len(server._conns) >= server.max_connections:
            server.stats["conns_refused"] += 1
            self._closed = True
            _log_refusal(
                "refusing connection from %s: max_connections (%d) open",
                self._peername(), server.max_connections,
            )
            self._transport.abort()
            return
        server._conns.add(self)
        self._transport.set_write_buffer_limits(high=server.max_reply_buffer_bytes)
        if server._keyring is not None:
            self._nonce = Keyring.nonce()
            self._transport.write(server._pack([2, AUTH_CHALLENGE, [self._nonce, AUTH_VERSION]]))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._out = []
        self._server._conns.discard(self)

    def eof_received(self) -> bool:
        # A peer that half-closes after its last request still gets the replies of the
        # handlers running for it; the last one to finish closes the connection.
        self._eof = True
        if self._inflight or self._paused_reply:
            return True
        self._flush_out()  # replies queued for this turn's flush would be lost on close
        return False

    def data_received(self, data: bytes) -> None:
        self._last_in = now = self._server._loop.time()
        _Conn.data_received(self, data)
        if self._scan.in_frame:
            if not self._frame_since:
                self._frame_since = now
        else:
            self._frame_since = 0.0

    def pause_writing(self) -> None:
        # The peer is not reading its replies: stop reading its requests until it does.
        self._paused_write = True
        self._set_reading()

    def resume_writing(self) -> None:
        self._paused_write = False
        if self._paused_reply:
            self._continue()
        self._set_reading()

    def _set_reading(self) -> None:
        if self._closed:
            return
        try:
            if self._paused_write or self._paused_inflight or self._paused_reply:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()
        except (RuntimeError, AttributeError):
            pass  # closing transports may refuse; nothing left to throttle then

    def _continue(self) -> None:
        """Serve the requests left in the unpacker when the reply budget ran out."""
        if self._closed or not self._paused_reply:
            return
        self._paused_reply = False
        self._drain()
        if self._paused_reply:
            return
        if self._eof and not self._inflight:
            self._flush_out()
            self._closed = True
            self._transport.close()
            return
        self._set_reading()

    def _reply_budget_spent(self) -> None:
        """This chunk's replies reached max_reply_buffer_bytes: the rest of its requests wait
        in the unpacker and nothing more is read, until the peer has taken its replies."""
        self._paused_reply = True
        self._set_reading()
        if not self._paused_write:
            # What was written went straight to the socket: go on after other connections.
            self._server._loop.call_soon(self._continue)

    def _drain_preauth(self) -> bool:
        """Before anything else the peer must prove it holds a key. True: it has, go on."""
        server = self._server
        keyring = server._keyring
        assert keyring is not None
        try:
            msg = next(self._unp, None)
        except Exception as e:
            self._abandon(f"undecodable input before authentication: {type(e).__name__}: {e}")
            return False
        if msg is None:
            return False
        msgid = msg[1] if type(msg) is list and len(msg) == 4 and type(msg[1]) is int else None
        proof = None
        if (
            msgid is not None
            and msg[0] == REQUEST
            and _method_name(msg[2]) == AUTH_HELLO
            and type(msg[3]) is list
            and len(msg[3]) == 2
            and type(msg[3][0]) is bytes
            and type(msg[3][1]) is bytes
            and len(msg[3][0]) == NONCE_BYTES
        ):
            nonce_c, mac = msg[3]
            proof = keyring.check_client(self._nonce, nonce_c, mac)
            if proof is not None:
                self._authed = True
                self._key_index = proof
                self._scan._limits = server._limits
                server.stats["auth_ok"] += 1
                self._transport.write(
                    self._pack([1, msgid, None, {"mac": keyring.server_proof(proof, self._nonce, nonce_c)}])
                )
                self._nonce = b""  # one proof per challenge
                return True
            reason = "refused the cluster key"
        else:
            reason = "requires the cluster key (give --secret-file or KV_SECRET_FILE)"
        server.stats["auth_failed"] += 1
        if msgid is not None:
            self._out.append(self._pack([1, msgid, to_wire(AuthError(reason)), None]))
        self._abandon(f"authentication failed: {reason}")
        return False

    def _drain(self) -> None:
        if not self._authed and not self._drain_preauth():
            return
        self._server._chunks_in += 1
        budget = self._server.max_reply_buffer_bytes - self._transport.get_write_buffer_size()
        # The hot path: a request of the usual shape to a sync handler costs one unpacking
        # assignment, a dict lookup, a few type checks, the call and one pack. Everything
        # unusual (other shapes, bytes method names, unknown methods) goes to _other.
        out: list[bytes] = []
        append = out.append
        handlers = self._handlers
        pack = self._pack
        coroutine = _CoroutineType
        future = asyncio.Future
        try:
            for msg in self._unp:
                try:
                    kind, msgid, method, params = msg
                    h = handlers.get(method)  # TypeError when unhashable: _other replies
                except (TypeError, ValueError):
                    if self._other(msg, out):
                        continue
                    break
                if kind == 0 and h is not None and type(params) is list and type(msgid) is int:
                    try:
                        r = h(*params)
                    except Exception as e:
                        append(self._server._error_reply(msgid, method, e, True))
                        continue
                    rt = type(r)
                    if rt is coroutine:
                        self._spawn(msgid, method, r)
                        continue
                    if rt is future:
                        if not r.done() or r.cancelled() or r.exception() is not None:
                            self._watch(msgid, method, r)
                            continue
                        r = r.result()  # settled already: reply inline like a sync handler
                    try:
                        data = pack([1, msgid, None, r])
                    except Exception as e:
                        if isfuture(r):  # a Task or another future-like
                            self._watch(msgid, method, r)
                        else:
                            append(self._server._unpackable(msgid, method, e))
                        continue
                    append(data)
                    budget -= len(data)
                    if budget <= 0:
                        self._reply_budget_spent()
                        break
                elif not self._other(msg, out):
                    break
        except Exception as e:
            # Not msgpack, nested too deep, or a string/bin/array over the frame limit.
            self._out.extend(out)
            self._abandon(f"undecodable input: {type(e).__name__}: {e}")
            return
        if out and not self._closed:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _other(self, msg: Any, out: list[bytes]) -> bool:
        """Every message the fast path did not take. False: the connection was closed."""
        server = self._server
        if type(msg) is not list or not msg or type(msg[0]) is not int:
            return self._refuse(out, f"not a msgpack-RPC message: {type(msg).__name__}")
        kind = msg[0]
        if kind == NOTIFICATION and len(msg) == 3:
            method, params = _method_name(msg[1]), msg[2]
            if method is None or type(params) is not list:
                return self._refuse(out, "malformed notification")
            h = self._handlers.get(method)
            if h is None:
                log.debug("notification for unknown method %r dropped", method)
                return True
            try:
                r = h(*params)
            except Exception as e:
                _log_handler_error(method, e)
                return True
            if type(r) is _CoroutineType:
                self._spawn(None, method, r)
            elif isfuture(r):
                self._watch(None, method, r)
            return True
        if kind == RESPONSE and len(msg) == 4:
            return True  # this end sends no requests, so a response answers nothing
        if len(msg) != 4 or type(msg[1]) is not int:
            return self._refuse(out, "message without a usable msgid")
        msgid = msg[1]
        if kind != REQUEST:
            exc: KVError = ProtocolError(f"unknown message type {kind}")
            out.append(server._pack([1, msgid, to_wire(exc), None]))
            return True
        method = _method_name(msg[2])
        if method is None:
            exc = InvalidRequest(f"method name must be a string, got {type(msg[2]).__name__}")
            out.append(server._pack([1, msgid, to_wire(exc), None]))
            return True
        params = msg[3]
        if type(params) is not list:
            exc = InvalidRequest(f"{method}: params must be an array, got {type(params).__name__}")
            out.append(server._pack([1, msgid, to_wire(exc), None]))
            return True
        h = self._handlers.get(method)
        if h is None:
            exc = UnknownMethod(f"unknown method {method!r}")
            out.append(server._pack([1, msgid, to_wire(exc), None]))
            return True
        try:
            r = h(*params)
        except Exception as e:
            out.append(server._error_reply(msgid, method, e, True))
            return True
        if type(r) is _CoroutineType:
            self._spawn(msgid, method, r)
        elif isfuture(r):
            self._watch(msgid, method, r)
        else:
            try:
                out.append(server._pack([1, msgid, None, r]))
            except Exception as e:
                out.append(server._unpackable(msgid, method, e))
        return True

    def _refuse(self, out: list[bytes], reason: str) -> bool:
        self._out.extend(out)
        out.clear()
        self._abandon(reason)
        return False

    def _spawn(self, msgid: int | None, method: str, coro: Coroutine[Any, Any, Any]) -> None:
        self._watch(msgid, method, self._server._loop.create_task(coro))

    def _watch(self, msgid: int | None, method: str, fut: asyncio.Future[Any]) -> None:
        server = self._server
        server._running.add(fut)
        fut.add_done_callback(functools.partial(self._settle, msgid, method))
        self._inflight += 1
        if self._inflight >= server.max_inflight and not self._paused_inflight:
            self._paused_inflight = True
            self._set_reading()

    def _settle(self, msgid: int | None, method: str, fut: asyncio.Future[Any]) -> None:
        """A handler's task or future finished: queue its reply (flushed once per turn)."""
        server = self._server
        server._running.discard(fut)
        try:
            if fut.cancelled():
                if msgid is not None and not server._closing:
                    exc = InternalError(f"{method}: handler was cancelled")
                    self._queue(server._pack([1, msgid, to_wire(exc), None]))
                return
            e = fut.exception()
            if msgid is None:
                if e is not None:
                    _log_handler_error(method, e)
                return
            if e is not None:
                data = server._error_reply(msgid, method, e, False)
            else:
                try:
                    data = server._pack([1, msgid, None, fut.result()])
                except Exception as pe:
                    data = server._unpackable(msgid, method, pe)
            self._queue(data)
        finally:
            self._inflight -= 1
            if self._eof and not self._inflight and not self._closed:
                self._flush_out()
                self._closed = True
                self._transport.close()
            elif self._paused_inflight and self._inflight <= server.max_inflight // 2:
                self._paused_inflight = False
                self._set_reading()


def _method_name(m: Any) -> str | None:
    if type(m) is str:
        return m
    if type(m) is bytes:
        return m.decode("utf-8", "surrogateescape")
    return None


def _log_handler_error(method: str, e: BaseException) -> None:
    if isinstance(e, KVError):
        log.debug("handler %s: %s: %s", method, type(e).__name__, e)
    else:
        log.error("handler %s raised", method, exc_info=e)


class RpcServer:
    """A msgpack-RPC server calling ``handlers[method](*params)``.

    A handler may be sync (its result is the reply, produced inline: the fast path), async
    (the coroutine runs as a task, which costs several times a sync call), or sync returning
    an ``asyncio.Future`` (replied when it settles, no task: the cheap way to wait on other
    nodes, see :meth:`RpcClient.request`). Any exception becomes an error reply
    (:func:`kvstore.errors.to_wire`); a ``TypeError`` raised by the call itself (wrong number
    of params) is ``invalid_request``. Notifications run the handler and send nothing.
    """

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_frame_depth: int = _DEFAULTS.max_frame_depth,
        max_frame_elements: int = _DEFAULTS.max_frame_elements,
        max_reply_buffer_bytes: int = _DEFAULTS.max_reply_buffer_bytes,
        max_connections: int = _DEFAULTS.max_connections,
        idle_timeout_s: float = _DEFAULTS.idle_timeout_s,
        frame_timeout_s: float = _DEFAULTS.frame_timeout_s,
        auth_timeout_s: float = _DEFAULTS.auth_timeout_s,
        keyring: Keyring | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if min(max_frame_bytes, max_inflight, max_reply_buffer_bytes, max_connections) < 1:
            raise ValueError("RpcServer limits must be positive")
        if min(idle_timeout_s, frame_timeout_s, auth_timeout_s) <= 0:
            raise ValueError("RpcServer timeouts must be positive")
        self._handlers: dict[str, Handler] = dict(handlers)
        self.max_frame_bytes = max_frame_bytes
        self.max_inflight = max_inflight
        self.max_reply_buffer_bytes = max_reply_buffer_bytes
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.auth_timeout_s = auth_timeout_s
        self._limits = FrameLimits(max_frame_bytes, max_frame_depth, max_frame_elements)
        self._keyring = keyring
        self._ssl = ssl_context
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_every = 1.0
        # Why connections were closed or refused, for tests and metrics.
        self.stats: dict[str, int] = {
            "conns_refused": 0,
            "auth_ok": 0,
            "auth_failed": 0,
            "idle_closed": 0,
            "slow_closed": 0,
            "auth_timed_out": 0,
        }
        self._pack = _new_packer().pack
        self._conns: set[_ServerConn] = set()
        self._running: set[asyncio.Future[Any]] = set()  # tasks and futures of handlers
        self._closing = False
        self._chunks_in = 0  # reads that carried requests: drain() waits for them to stop
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._flusher: _Flusher | None = None

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
    ) -> None:
        """Listen on ``host:port`` (port 0 picks a free one, see :attr:`port`) or on ``sock``."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._loop = asyncio.get_running_loop()
        self._flusher = _Flusher(self._loop)
        tls: dict[str, Any] = {}
        if self._ssl is not None:
            # A TLS handshake that does not finish is a slow sender too.
            tls = {"ssl": self._ssl, "ssl_handshake_timeout": self.auth_timeout_s}
        if sock is not None:
            self._server = await self._loop.create_server(
                lambda: _ServerConn(self), sock=sock, backlog=1024, **tls
            )
        else:
            self._server = await self._loop.create_server(
                lambda: _ServerConn(self), host, port, backlog=1024, reuse_address=True, **tls
            )
        self._sweep_every = max(0.02, min(1.0, self.idle_timeout_s / 4, self.frame_timeout_s / 4, self.auth_timeout_s / 4))
        self._sweeper = self._loop.call_later(self._sweep_every, self._sweep)

    def _sweep(self) -> None:
        """Close what has overstayed: unauthenticated, slow or idle connections."""
        loop = self._loop
        now = loop.time()
        for c in list(self._conns):
            if c._closed:
                continue
            if not c._authed and now - c._opened_at > self.auth_timeout_s:
                self.stats["auth_timed_out"] += 1
                c._abandon(f"no proof of the cluster key within auth_timeout_s ({self.auth_timeout_s:g})")
            elif c._frame_since and now - c._frame_since > self.frame_timeout_s:
                self.stats["slow_closed"] += 1
                c._abandon(f"frame not complete within frame_timeout_s ({self.frame_timeout_s:g})")
            elif c._bye_at:
                if now >= c._bye_at and not c._inflight:
                    c._flush_out()
                    c._closed = True
                    c._transport.close()
                elif now - c._last_in < BYE_GRACE_S / 2:
                    c._bye_at = max(c._bye_at, now + BYE_GRACE_S)  # the client raced the bye
            elif not c._inflight and not c._paused_reply and now - c._last_in > self.idle_timeout_s:
                # Told first, so the client opens a new connection for its next request
                # instead of sending it on one about to close.
                self.stats["idle_closed"] += 1
                c._queue(self._pack([2, BYE, []]))
                c._bye_at = now + BYE_GRACE_S
        self._sweeper = loop.call_later(self._sweep_every, self._sweep)

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def addr(self) -> str:
        """``host:port`` of the first listening socket."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        host = self._server.sockets[0].getsockname()[0]
        return f"{host}:{self.port}"

    @property
    def connections(self) -> int:
        """Open client connections (for tests and metrics)."""
        return len(self._conns)

    @property
    def running_handlers(self) -> int:
        """Handler tasks and futures not settled yet."""
        return len(self._running)

    async def drain(self, *, grace_s: float = 3.0, quiet_s: float = 0.2) -> None:
        """Stop gracefully: stop listening, tell every client to go elsewhere (a ``goaway``
        notification), keep serving what they still send until they are quiet and every
        running handler has answered, then close. A client that honours ``goaway`` sends
        its next requests to another node, so none is left with an unknown outcome."""
        if self._server is not None:
            self._server.close()
        note = self._pack([2, GOAWAY, []])
        for c in list(self._conns):
            c._queue(note)
        loop = self._loop
        if loop is None:
            return
        deadline = loop.time() + grace_s
        seen, quiet_since = self._chunks_in, loop.time()
        while loop.time() < deadline:
            await asyncio.sleep(0.01)
            if self._chunks_in != seen:
                seen, quiet_since = self._chunks_in, loop.time()
            elif not self._running and loop.time() - quiet_since >= quiet_s:
                break
        await self.close(grace_s=max(0.1, deadline - loop.time()))

    async def close(self, *, grace_s: float = 1.0) -> None:
        """Stop listening, cancel running handlers, close every connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        self._closing = True
        running = list(self._running)
        for t in running:
            t.cancel()
        if running:
            await asyncio.wait(running, timeout=grace_s)
        for c in list(self._conns):
            c._flush_out()
            c._closed = True
            c._transport.close()
        if self._loop is None:
            return
        # Closing waits for buffered replies to drain; a peer that never reads gets aborted.
        deadline = self._loop.time() + grace_s
        while self._conns and self._loop.time() < deadline:
            await asyncio.sleep(0.005)
        for c in list(self._conns):
            c._transport.abort()
        for _ in range(100):  # abort reports connection_lost within a turn or two
            if not self._conns:
                break
            await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()

    def _error_reply(self, msgid: int, method: str, e: BaseException, at_call: bool) -> bytes:
        if (
            at_call
            and type(e) is TypeError
            and e.__traceback__ is not None
            and e.__traceback__.tb_next is None
        ):
            # Raised by the call itself, not inside the handler: the params do not fit.
            err = to_wire(InvalidRequest(f"{method}: {e}"))
        else:
            _log_handler_error(method, e)
            err = to_wire(e)
        try:
            data: bytes = self._pack([1, msgid, err, None])
        except Exception:
            err = {"code": InternalError.code, "message": f"{method}: unserialisable error"}
            data = self._pack([1, msgid, err, None])
        return data

    def _unpackable(self, msgid: int, method: str, e: Exception) -> bytes:
        exc = InternalError(f"{method}: result cannot be sent: {type(e).__name__}: {e}")
        log.error("%s", exc)
        data: bytes = self._pack([1, msgid, to_wire(exc), None])
        return data


# --------------------------------------------------------------------------- client


class _ClientConn(_Conn):
    __slots__ = (
        "_addr", "_challenge", "_lost", "_next_id", "_owner", "_pending", "_sent_mark", "_slot",
    )

    def __init__(self, owner: RpcClient, addr: str, slot: int) -> None:
        assert owner._flusher is not None
        super().__init__(owner._flusher, owner._limits)
        self._challenge: asyncio.Future[bytes] = owner._loop.create_future()
        self._owner = owner
        self._addr = addr
        self._slot = slot
        # msgid -> (future, its timeout batch, method name)
        self._pending: dict[int, tuple[asyncio.Future[Any], _Batch, str]] = {}
        self._next_id = 0
        # The msgids issued before this one (mod 2**32) have been handed to the transport.
        self._sent_mark = 0
        self._lost: asyncio.Future[None] = owner._loop.create_future()

    def _flush_out(self) -> None:
        self._sent_mark = self._next_id
        _Conn._flush_out(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._out = []
        why = "closed by peer" if exc is None else f"{type(exc).__name__}: {exc}"
        self._fail_all(f"connection to {self._addr} lost ({why})")
        self._owner._forget(self)
        if not self._lost.done():
            self._lost.set_result(None)

    def _fail_all(self, message: str) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = {}
        mark = self._sent_mark
        for msgid, (fut, batch, _) in pending.items():
            batch.done_one()
            if not fut.done():
                # Requests still queued in _out never reached the socket.
                sent = 0 < ((mark - msgid) & _MSGID_MASK) < 0x80000000
                fut.set_exception(_unreachable(message, sent=sent))

    def _drain(self) -> None:
        pending = self._pending
        try:
            for msg in self._unp:
                if type(msg) is list and len(msg) == 4 and msg[0] == 1:
                    entry = pending.pop(msg[1], None)
                    if entry is None:
                        continue  # timed out or cancelled meanwhile
                    fut = entry[0]
                    entry[1].done_one()
                    if not fut.done():
                        err = msg[2]
                        if err is None:
                            fut.set_result(msg[3])
                        else:
                            exc = from_wire(err)
                            if isinstance(exc, AuthError):
                                exc = AuthError(f"{self._addr} {exc.message}")
                                self._owner._auth_refused(self, exc.message)
                            fut.set_exception(exc)
                elif type(msg) is list and len(msg) == 3 and msg[0] == 2:
                    if msg[1] in (GOAWAY, GOAWAY_B):
                        self._owner._goaway(self)
                    elif msg[1] in (BYE, BYE_B):
                        self._owner._forget(self)
                    elif msg[1] == AUTH_CHALLENGE and not self._challenge.done():
                        params = msg[2]
                        if type(params) is list and params and type(params[0]) is bytes:
                            self._challenge.set_result(params[0])
                        if self._owner._keyring is None:
                            # Whatever we sent will be refused: say why from now on, at once.
                            self._owner._auth_refused(
                                self,
                                f"{self._addr} requires the cluster key (give --secret-file or KV_SECRET_FILE)",
                            )
                else:
                    # Other notifications are ignored; anything else means we are out of step.
                    self._abandon("malformed response")
                    return
        except Exception as e:
            self._abandon(f"undecodable response: {type(e).__name__}")

    def _abandon(self, reason: str) -> None:
        log.warning("closing connection to %s: %s", self._addr, reason)
        self._closed = True
        self._out = []
        self._transport.close()
        self._fail_all(f"connection to {self._addr} lost ({reason})")


class _Peer:
    __slots__ = (
        "addr",
        "auth_error",
        "backoff_s",
        "connecting",
        "down_until",
        "host",
        "port",
        "reason",
        "rr",
        "slots",
    )

    def __init__(self, addr: str, host: str, port: int, n: int, backoff_s: float) -> None:
        self.addr = addr
        self.host = host
        self.port = port
        self.slots: list[_ClientConn | None] = [None] * n
        self.connecting: list[asyncio.Task[_ClientConn] | None] = [None] * n
        self.rr = 0
        self.down_until = 0.0
        self.backoff_s = backoff_s
        self.reason = ""
        self.auth_error = ""


class _Batch:
    """The calls of one loop turn with the same timeout: they share one timer."""

    __slots__ = ("calls", "left", "timeout", "timer")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.left = 0  # calls still unanswered; the timer is cancelled when it reaches 0
        self.timer: asyncio.TimerHandle | None = None
        # conn, msgid, conn, msgid, ... (flat: no tuple per call)
        self.calls: list[Any] = []

    def done_one(self) -> None:
        self.left -= 1
        if not self.left and self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Deadlines:
    """Timeouts of in-flight calls, one timer per timeout value per loop turn rather than one
    per call: setting and cancelling a timer per call cost more than the rest of the call."""

    __slots__ = ("_loop", "_turn")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._turn: dict[float, _Batch] = {}

    def batch(self, timeout: float) -> _Batch:
        b = self._turn.get(timeout)
        if b is None:
            b = self._turn[timeout] = _Batch(timeout)
        return b

    def commit(self) -> None:
        """Called once per loop turn, before its requests are written: start their clocks."""
        if not self._turn:
            return
        for b in self._turn.values():
            if b.left:
                b.timer = self._loop.call_later(b.timeout, self._expire, b)
        self._turn = {}

    def _expire(self, b: _Batch) -> None:
        b.timer = None
        if not b.left:
            return
        calls = b.calls
        for i in range(0, len(calls), 2):
            conn: _ClientConn = calls[i]
            pending = conn._pending
            entry = pending.get(calls[i + 1])
            if entry is not None and entry[1] is b:
                del pending[calls[i + 1]]
                fut, _, method = entry
                if not fut.done():
                    fut.set_exception(
                        Timeout(f"{method} to {conn._addr}: no reply within {b.timeout:.3g}s")
                    )

    def close(self) -> None:
        # Timers of committed batches are cancelled as their calls fail (done_one).
        self._turn.clear()


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved here so an unawaited failure is not logged as lost


class RpcClient:
    """Calls msgpack-RPC servers through a lazily created pool of pipelined connections.

    One pool per peer (``conns_per_peer`` connections, used round-robin), shared by every
    caller. A failed connect marks the peer down for a backoff that starts at
    ``reconnect_min_s`` and doubles up to ``reconnect_max_s`` (with jitter); until it expires
    calls fail at once with :class:`Unreachable` and no connect is tried.
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float = 1.0,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 2.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        conns_per_peer: int = 1,
        rng: random.Random | None = None,
        source_host: str | None = None,
        max_frame_depth: int = _DEFAULTS.max_frame_depth,
        max_frame_elements: int = _DEFAULTS.max_frame_elements,
        keyring: Keyring | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if conns_per_peer < 1:
            raise ValueError("conns_per_peer must be >= 1")
        self._limits = FrameLimits(max_frame_bytes, max_frame_depth, max_frame_elements)
        self._keyring = keyring
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout_s
        self._backoff_min = reconnect_min_s
        self._backoff_max = max(reconnect_max_s, reconnect_min_s)
        self._max_frame = max_frame_bytes
        self._n = conns_per_peer
        self._rng = rng or random.Random()
        self._local_addr = (source_host, 0) if source_host else None
        self._peers: dict[str, _Peer] = {}
        self._pack = _new_packer().pack
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._flusher: _Flusher | None = None
        self._deadlines: _Deadlines = None  # type: ignore[assignment]
        self._closed = False
        self._background: set[asyncio.Task[Any]] = set()

    # -- public

    async def call(self, addr: str, method: str, params: Sequence[Any], timeout: float) -> Any:
        """Call ``method(*params)`` on ``addr`` ("host:port") and return its result.

        Raises the error the server replied with (as its KVError class), :class:`Timeout`
        when no reply came within ``timeout`` seconds, :class:`Unreachable` (see
        :func:`was_sent`) when the peer cannot be reached or the connection drops.
        """
        peer = self._peers.get(addr)
        if peer is None:
            peer = self._add_peer(addr)
        i = peer.rr
        peer.rr = i + 1 if i + 1 < self._n else 0
        conn = peer.slots[i]
        loop = self._loop
        if conn is None or conn._closed:
            t0 = loop.time()
            conn = await self._connect(peer, i, timeout)
            timeout -= loop.time() - t0
            if conn._closed:
                raise _unreachable(
                    f"connection to {addr} lost before the request was sent", sent=False
                )
        msgid = conn._next_id
        fut = self._send(conn, method, params, timeout)
        try:
            return await fut
        except asyncio.CancelledError:
            entry = conn._pending.pop(msgid, None)
            if entry is not None:
                entry[1].done_one()
            elif fut.done() and not fut.cancelled():
                fut.exception()  # settled as we were cancelled: nobody else will look
            raise

    def request(
        self, addr: str, method: str, params: Sequence[Any], timeout: float
    ) -> asyncio.Future[Any]:
        """:meth:`call` as a Future, returned at once: on an open connection no coroutine or
        task is involved, so callback-style code (a coordinator fanning out to replicas and
        replying on the first W answers) pays only for the future. Encoding errors raise
        here; everything else arrives through the future."""
        peer = self._peers.get(addr)
        if peer is None:
            peer = self._add_peer(addr)
        i = peer.rr
        peer.rr = i + 1 if i + 1 < self._n else 0
        conn = peer.slots[i]
        if conn is not None and not conn._closed:
            return self._send(conn, method, params, timeout)
        try:
            data = self._pack([0, 0, method, params])
        except Exception as e:
            raise InvalidRequest(
                f"{method}: params cannot be sent: {type(e).__name__}: {e}"
            ) from None
        del data

        async def connect_then_call() -> Any:
            loop = self._loop
            t0 = loop.time()
            c = await self._connect(peer, i, timeout)
            if c._closed:
                raise _unreachable(
                    f"connection to {addr} lost before the request was sent", sent=False
                )
            return await self._send(c, method, params, timeout - (loop.time() - t0))

        task = self._loop.create_task(connect_then_call())
        task.add_done_callback(_consume)
        return task

    def _send(
        self, conn: _ClientConn, method: str, params: Sequence[Any], timeout: float
    ) -> asyncio.Future[Any]:
        msgid = conn._next_id
        try:
            data = self._pack([0, msgid, method, params])
        except Exception as e:
            raise InvalidRequest(
                f"{method}: params cannot be sent: {type(e).__name__}: {e}"
            ) from None
        if len(data) > self._max_frame:
            raise TooLarge(
                f"{method}: request of {len(data)} bytes exceeds max_frame_bytes ({self._max_frame})"
            )
        conn._next_id = (msgid + 1) & _MSGID_MASK
        fut = self._loop.create_future()
        batch = self._deadlines.batch(timeout)
        batch.left += 1
        calls = batch.calls
        calls.append(conn)
        calls.append(msgid)
        conn._pending[msgid] = (fut, batch, method)
        conn._queue(data)
        return fut

    def notify(self, addr: str, method: str, params: Sequence[Any]) -> None:
        """Send a notification (no reply). Dropped silently when the peer is down or the
        request cannot be encoded; a connect is started in the background when needed."""
        if self._closed:
            return
        try:
            data = self._pack([2, method, params])
        except Exception as e:
            log.warning("notification %s to %s not sent: %s", method, addr, e)
            return
        if len(data) > self._max_frame:
            log.warning(
                "notification %s to %s not sent: %d bytes over the frame limit",
                method,
                addr,
                len(data),
            )
            return
        peer = self._peers.get(addr)
        if peer is None:
            peer = self._add_peer(addr)
        i = peer.rr
        peer.rr = i + 1 if i + 1 < self._n else 0
        conn = peer.slots[i]
        if conn is not None and not conn._closed:
            conn._queue(data)
            return
        if self.is_down(addr):
            return

        async def connect_and_send() -> None:
            try:
                c = await self._connect(peer, i, self._connect_timeout)
            except KVError:
                return
            c._queue(data)

        task = self._loop.create_task(connect_and_send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def is_down(self, addr: str) -> bool:
        """True while ``addr`` failed its last connect and its backoff has not expired, or
        a reconnect to it is still under way."""
        peer = self._peers.get(addr)
        if peer is None or not peer.down_until:
            return False
        if self._loop.time() < peer.down_until:
            return True
        return bool(peer.reason) and any(t is not None for t in peer.connecting)

    def connected(self, addr: str) -> int:
        """Open connections to ``addr``."""
        peer = self._peers.get(addr)
        return 0 if peer is None else sum(c is not None for c in peer.slots)

    async def close(self) -> None:
        """Close every connection; pending calls fail with Unreachable."""
        if self._closed:
            return
        self._closed = True
        if self._deadlines is not None:
            self._deadlines.close()
        for t in list(self._background):
            t.cancel()
        conns: list[_ClientConn] = []
        for peer in self._peers.values():
            for ct in peer.connecting:
                if ct is not None:
                    ct.cancel()
            conns.extend(c for c in peer.slots if c is not None)
        for c in conns:
            c._fail_all(f"connection to {c._addr} closed by this client")
            c._closed = True
            c._transport.close()
        if conns:
            await asyncio.wait([c._lost for c in conns], timeout=1.0)
            for c in conns:
                if not c._lost.done():
                    c._transport.abort()

    # -- internals

    def _add_peer(self, addr: str) -> _Peer:
        if self._closed:
            raise _unreachable(f"cannot reach {addr}: client is closed", sent=False)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._deadlines = _Deadlines(self._loop)
            self._flusher = _Flusher(self._loop, self._deadlines.commit)
        host, port = parse_addr(addr)
        peer = _Peer(addr, host, port, self._n, self._backoff_min)
        self._peers[addr] = peer
        return peer

    async def _connect(self, peer: _Peer, slot: int, timeout: float) -> _ClientConn:
        if self._closed:
            raise _unreachable(f"cannot reach {peer.addr}: client is closed", sent=False)
        loop = self._loop
        if peer.down_until and loop.time() < peer.down_until:
            left = peer.down_until - loop.time()
            if peer.auth_error:
                raise AuthError(peer.auth_error)
            raise _unreachable(
                f"cannot reach {peer.addr}: {peer.reason} (down, next try in {left:.2f}s)",
                sent=False,
            )
        task = peer.connecting[slot]
        if task is None:
            task = loop.create_task(self._open(peer, slot))
            task.add_done_callback(_consume)
            peer.connecting[slot] = task
        if task.done():
            return task.result()
        wait = min(timeout, self._connect_timeout)
        if peer.reason:
            # The peer failed before: the connect goes on in the background, but this call
            # waits only briefly for it. A partition drops SYNs silently, and holding every
            # request behind a full connect timeout each time the backoff expires would
            # stall callers that could go elsewhere at once.
            wait = min(wait, RETRY_CONNECT_WAIT_S)
        if wait <= 0:
            raise _unreachable(f"cannot reach {peer.addr}: connect timed out", sent=False)
        # Shielded: one caller giving up must not abort the connect the others wait for.
        try:
            return await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError:
            raise _unreachable(f"cannot reach {peer.addr}: connect timed out", sent=False) from None
        except asyncio.CancelledError:
            if self._closed and task.cancelled():  # close() stopped the connect, not our caller
                raise _unreachable(
                    f"cannot reach {peer.addr}: client is closed", sent=False
                ) from None
            raise

    async def _open(self, peer: _Peer, slot: int) -> _ClientConn:
        loop = self._loop
        t0 = loop.time()
        tls: dict[str, Any] = {}
        if self._ssl is not None:
            tls = {
                "ssl": self._ssl,
                "server_hostname": peer.host,
                "ssl_handshake_timeout": self._connect_timeout,
            }
        try:
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _ClientConn(self, peer.addr, slot),
                        peer.host,
                        peer.port,
                        local_addr=self._local_addr,
                        **tls,
                    ),
                    self._connect_timeout,
                )
            except TimeoutError:
                raise self._mark_down(peer, "connect timed out") from None
            except ConnectionRefusedError:
                raise self._mark_down(peer, "connection refused") from None
            except ssl.SSLError as e:
                # A bad certificate will not get better by retrying at once: one clear error.
                self._mark_down(peer, f"TLS handshake failed: {e.reason or e}")
                raise AuthError(f"{peer.addr}: TLS handshake failed: {e.reason or e}") from None
            except OSError as e:
                raise self._mark_down(peer, (e.strerror or str(e)).lower()) from None
            if self._keyring is not None:
                await self._authenticate(peer, conn, t0)
        finally:
            peer.connecting[slot] = None
        if self._closed:
            conn._transport.abort()
            raise _unreachable(f"cannot reach {peer.addr}: client is closed", sent=False)
        if conn._closed:
            # Dropped between the handshake and now: its connection_lost found no slot to clear.
            raise _unreachable(f"cannot reach {peer.addr}: connection closed by peer", sent=False)
        peer.slots[slot] = conn
        peer.down_until = 0.0
        peer.backoff_s = self._backoff_min
        peer.reason = ""
        peer.auth_error = ""
        return conn

    async def _authenticate(self, peer: _Peer, conn: _ClientConn, t0: float) -> None:
        """Prove we hold the key and check that the server does (security.py has the scheme).
        Any failure closes the connection and raises AuthError (Unreachable if it dropped)."""
        keyring = self._keyring
        assert keyring is not None
        addr = peer.addr
        try:
            # The challenge is the server's first bytes, an RTT after connecting: one that has
            # not come by half the connect timeout is not coming (a server without a secret),
            # and saying so must beat the caller's connect deadline.
            waits: list[asyncio.Future[Any]] = [conn._challenge, conn._lost]
            loop = self._loop
            await asyncio.wait(
                waits, timeout=max(0.01, t0 + self._connect_timeout / 2 - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if conn._challenge.done():
                nonce_s = conn._challenge.result()
                nonce_c = Keyring.nonce()
                reply = await self._send(
                    conn, AUTH_HELLO, [nonce_c, keyring.client_proof(nonce_s, nonce_c)],
                    max(0.01, t0 + self._connect_timeout - loop.time()),
                )
                mac = reply.get("mac") if type(reply) is dict else None
                if type(mac) is not bytes or not keyring.check_server(nonce_s, nonce_c, mac):
                    raise AuthError(f"{addr} could not prove it holds the cluster key")
                return
            if conn._lost.done():
                raise _unreachable(f"cannot reach {addr}: connection closed by peer", sent=False)
            raise AuthError(
                f"{addr} did not ask for the cluster key (is it running without a secret?)"
            )
        except AuthError as e:
            conn._transport.abort()
            self._mark_down(peer, str(e))
            peer.auth_error = str(e)
            raise
        except (Unreachable, Timeout) as e:
            conn._transport.abort()
            raise self._mark_down(peer, f"authentication did not finish: {e}") from None

    def _auth_refused(self, conn: _ClientConn, message: str) -> None:
        """The server refused us (or will): later calls fail with this AuthError at once,
        for a backoff, instead of reconnecting to be refused again."""
        self._forget(conn)
        peer = self._peers.get(conn._addr)
        if peer is not None:
            self._mark_down(peer, message)
            peer.auth_error = message

    def _mark_down(self, peer: _Peer, reason: str) -> Unreachable:
        b = peer.backoff_s
        # Equal jitter: at least half the backoff, so a dead peer is not hammered, and a
        # random rest, so many clients do not retry in lockstep.
        peer.down_until = self._loop.time() + b / 2 + self._rng.random() * b / 2
        peer.backoff_s = min(b * 2, self._backoff_max)
        peer.reason = reason
        return _unreachable(f"cannot reach {peer.addr}: {reason}", sent=False)

    def _goaway(self, conn: _ClientConn) -> None:
        """The server is stopping: calls already sent on ``conn`` still get their answers,
        but new ones must go elsewhere, so the peer counts as down for a moment and the
        connection leaves the pool."""
        self._forget(conn)
        peer = self._peers.get(conn._addr)
        if peer is not None:
            peer.down_until = self._loop.time() + GOAWAY_HOLD_S
            peer.reason = "it is shutting down or restarting"

    def _forget(self, conn: _ClientConn) -> None:
        peer = self._peers.get(conn._addr)
        if peer is not None and peer.slots[conn._slot] is conn:
            peer.slots[conn._slot] = None
