"""The msgpack-RPC server: one protocol per connection, handlers called inline, replies of
one chunk written together; authentication, back-pressure and the abuse limits."""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import time
from asyncio import iscoroutine, isfuture
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from kvstore.errors import (
    AuthError,
    InternalError,
    InvalidRequest,
    KVError,
    ProtocolError,
    UnknownMethod,
    to_wire,
)
from kvstore.runtime.framing import FrameLimits
from kvstore.runtime.rpc.conn import (
    Handler,
    _Conn,
    _Flusher,
    _log_refusal,
)
from kvstore.runtime.rpc.later import LATER, takes_reply
from kvstore.runtime.rpc.observer import CallObserver
from kvstore.runtime.rpc.wire import (
    _DEFAULTS,
    BYE,
    BYE_GRACE_S,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_INFLIGHT,
    GOAWAY,
    NOTIFICATION,
    PREAUTH_LIMITS,
    REQUEST,
    RESPONSE,
    _CoroutineType,
    _log_handler_error,
    _method_name,
    log,
    pack,
)
from kvstore.runtime.security import AUTH_CHALLENGE, AUTH_HELLO, AUTH_VERSION, NONCE_BYTES, Keyring

# Statics, not ``asyncio.Future`` and ``time.perf_counter`` looked up on their modules for
# every chunk read.
_Future: Final = asyncio.Future
_perf_counter: Final = time.perf_counter


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
        "_later",
        "_nonce",
        "_observers",
        "_opened_at",
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
        self._later = server._later
        self._observers = server._observers
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
            self._transport.write(pack([2, AUTH_CHALLENGE, [self._nonce, AUTH_VERSION]]))

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
            msg = next(self._msgs, None)
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
                    pack([1, msgid, None, {"mac": keyring.server_proof(proof, self._nonce, nonce_c)}])
                )
                self._nonce = b""  # one proof per challenge
                return True
            reason = "refused the cluster key"
        else:
            reason = "requires the cluster key (give --secret-file or KV_SECRET_FILE)"
        server.stats["auth_failed"] += 1
        if msgid is not None:
            self._out.append(pack([1, msgid, to_wire(AuthError(reason)), None]))
        self._abandon(f"authentication failed: {reason}")
        return False

    def _drain(self) -> None:
        # A handler that answers through its reply callback at once (a read of one replica,
        # replica.many of gets) queues the reply: held, it is written when the chunk is done,
        # not in another pass of the loop (see _Flusher).
        flusher = self._flusher
        flusher.hold()
        try:
            self._serve()
        finally:
            flusher.release()

    def _serve(self) -> None:
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
        later = self._later
        observers = self._observers
        coroutine = _CoroutineType
        future = _Future
        # Latency runs from when the chunk is read: a request behind others in it waited too.
        t0 = _perf_counter()
        try:
            for msg in self._msgs:
                try:
                    kind, msgid, method, params = msg
                    h = handlers.get(method)  # TypeError when unhashable: _other replies
                except (TypeError, ValueError):
                    if self._other(msg, out, t0):
                        continue
                    break
                if kind == 0 and h is not None and type(params) is list and type(msgid) is int:
                    obs = self._arrived(method, params) if observers else None
                    # Up to three params are passed spelled out: compiled, that is one
                    # vectorcall, where ``*params`` builds a tuple (and ``reply=`` a dict)
                    # that the callee takes apart again (~1.5k instructions a request).
                    n = len(params)
                    try:
                        if method in later:
                            rep = _LaterReply(self, msgid, method, obs, t0)
                            if n == 1:
                                r = h(params[0], reply=rep)
                            elif n == 2:
                                r = h(params[0], params[1], reply=rep)
                            elif n == 3:
                                r = h(params[0], params[1], params[2], reply=rep)
                            else:
                                r = h(*params, reply=rep)
                            if r is LATER:
                                self._server._later_pending += 1
                                self._hold()
                                continue
                        elif n == 1:
                            r = h(params[0])
                        elif n == 2:
                            r = h(params[0], params[1])
                        else:
                            r = h(*params)
                    except Exception as e:
                        err = _call_error(method, e)
                        _tell(obs, t0, None, err)
                        append(self._server._error_reply(msgid, method, err))
                        continue
                    rt = type(r)
                    if rt is coroutine:
                        self._spawn(msgid, method, r, obs, t0)
                        continue
                    if rt is future:
                        if not r.done() or r.cancelled() or r.exception() is not None:
                            self._watch(msgid, method, r, obs, t0)
                            continue
                        r = r.result()  # settled already: reply inline like a sync handler
                    try:
                        data = pack([1, msgid, None, r])
                    except Exception as e:
                        if isfuture(r):  # a Task or another future-like
                            self._watch(msgid, method, r, obs, t0)
                        elif iscoroutine(r):  # a compiled (mypyc) coroutine has a type of its own
                            self._spawn(msgid, method, r, obs, t0)
                        else:
                            _tell(obs, t0, None, e)
                            append(self._server._unpackable(msgid, method, e))
                        continue
                    _tell(obs, t0, r, None)
                    append(data)
                    budget -= len(data)
                    if budget <= 0:
                        self._reply_budget_spent()
                        break
                elif not self._other(msg, out, t0):
                    break
        except Exception as e:
            # Not msgpack, nested too deep, or a string/bin/array over the frame limit.
            self._out.extend(out)
            self._abandon(f"undecodable input: {type(e).__name__}: {e}")
            return
        if out and not self._closed:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        after = self._server._after_chunk
        if after is not None:
            after()

    def _other(self, msg: Any, out: list[bytes], t0: float) -> bool:
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
            self._arrived(method, params)
            try:
                r = h(*params)
            except Exception as e:
                _log_handler_error(method, e)
                return True
            if iscoroutine(r):  # also a compiled (mypyc) coroutine, which has a type of its own
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
            out.append(pack([1, msgid, to_wire(exc), None]))
            return True
        method = _method_name(msg[2])
        if method is None:
            exc = InvalidRequest(f"method name must be a string, got {type(msg[2]).__name__}")
            out.append(pack([1, msgid, to_wire(exc), None]))
            return True
        params = msg[3]
        if type(params) is not list:
            exc = InvalidRequest(f"{method}: params must be an array, got {type(params).__name__}")
            out.append(pack([1, msgid, to_wire(exc), None]))
            return True
        h = self._handlers.get(method)
        if h is None:
            exc = UnknownMethod(f"unknown method {method!r}")
            out.append(pack([1, msgid, to_wire(exc), None]))
            return True
        obs = self._arrived(method, params)
        try:
            r = h(*params)
        except Exception as e:
            err = _call_error(method, e)
            _tell(obs, t0, None, err)
            out.append(server._error_reply(msgid, method, err))
            return True
        if iscoroutine(r):  # also a compiled (mypyc) coroutine, which has a type of its own
            self._spawn(msgid, method, r, obs, t0)
        elif isfuture(r):
            self._watch(msgid, method, r, obs, t0)
        else:
            failed: Exception | None = None
            try:
                data = pack([1, msgid, None, r])
            except Exception as e:
                data = server._unpackable(msgid, method, e)
                r, failed = None, e
            _tell(obs, t0, r, failed)
            out.append(data)
        return True

    def _arrived(self, method: str, params: list[Any]) -> CallObserver | None:
        """Tell ``method``'s observer a request arrived; the observer if it times replies."""
        obs = self._observers.get(method)
        if obs is None:
            return None
        obs.arrived(params)
        return obs if obs.timed else None

    def _refuse(self, out: list[bytes], reason: str) -> bool:
        self._out.extend(out)
        out.clear()
        self._abandon(reason)
        return False

    def _spawn(
        self, msgid: int | None, method: str, coro: Coroutine[Any, Any, Any], obs: CallObserver | None = None,
        t0: float = 0.0,
    ) -> None:
        self._watch(msgid, method, self._server._loop.create_task(coro), obs, t0)

    def _watch(
        self, msgid: int | None, method: str, fut: asyncio.Future[Any], obs: CallObserver | None = None,
        t0: float = 0.0,
    ) -> None:
        """Reply when ``fut`` settles (``obs``: the request's timed observer, told then)."""
        self._server._running.add(fut)
        fut.add_done_callback(functools.partial(self._settle, msgid, method, obs, t0))
        self._hold()

    def _hold(self) -> None:
        """One more request of this connection is being handled (replied later)."""
        self._inflight += 1
        if self._inflight >= self._server.max_inflight and not self._paused_inflight:
            self._paused_inflight = True
            self._set_reading()

    def reply_later(self, msgid: int, method: str, result: Any, exc: BaseException | None) -> None:
        """What the reply callback given to a handler marked ``replies_later`` does."""
        self._server._later_pending -= 1
        self._queue_reply(msgid, method, result, exc)
        self._release()

    def _queue_reply(self, msgid: int, method: str, result: Any, exc: BaseException | None) -> None:
        """Queue the reply to ``msgid`` (flushed once per turn): ``result``, or ``exc``."""
        server = self._server
        if exc is not None:
            data = server._error_reply(msgid, method, exc)
        else:
            try:
                data = pack([1, msgid, None, result])
            except Exception as pe:
                data = server._unpackable(msgid, method, pe)
        self._queue(data)

    def _settle(
        self, msgid: int | None, method: str, obs: CallObserver | None, t0: float, fut: asyncio.Future[Any]
    ) -> None:
        """A handler's task or future finished: queue its reply (flushed once per turn)."""
        server = self._server
        server._running.discard(fut)
        try:
            if obs is not None:
                failed = asyncio.CancelledError() if fut.cancelled() else fut.exception()
                _tell(obs, t0, None if failed is not None else fut.result(), failed)
            if fut.cancelled():
                if msgid is not None and not server._closing:
                    exc = InternalError(f"{method}: handler was cancelled")
                    self._queue(pack([1, msgid, to_wire(exc), None]))
                return
            e = fut.exception()
            if msgid is None:
                if e is not None:
                    _log_handler_error(method, e)
                return
            self._queue_reply(msgid, method, None if e is not None else fut.result(), e)
        finally:
            self._release()

    def _release(self) -> None:
        """A request held by ``_hold`` was answered."""
        self._inflight -= 1
        if self._eof and not self._inflight and not self._closed:
            self._flush_out()
            self._closed = True
            self._transport.close()
        elif self._paused_inflight and self._inflight <= self._server.max_inflight // 2:
            self._paused_inflight = False
            self._set_reading()


def _call_error(method: str, e: Exception) -> BaseException:
    """What a handler's call that raised ``e`` is answered with: a TypeError raised by the
    call itself, not inside the handler, means the params do not fit (the caller's
    invalid_request); anything else as raised."""
    if type(e) is TypeError and e.__traceback__ is not None and e.__traceback__.tb_next is None:
        return InvalidRequest(f"{method}: {e}")
    return e


def _tell(obs: CallObserver | None, t0: float, result: Any, exc: BaseException | None) -> None:
    """A request read at ``t0`` was answered: its timed observer, if any, is told."""
    if obs is not None:
        obs.answered(_perf_counter() - t0, result, exc)


class _LaterReply:
    """The reply callback given to a handler marked ``replies_later``. A callable, not
    functools.partial of a bound method: compiled, that costs a bound method, a partial and
    two calls through Python's call protocol per request."""

    __slots__ = ("conn", "method", "msgid", "obs", "t0")

    def __init__(self, conn: _ServerConn, msgid: int, method: str, obs: CallObserver | None, t0: float) -> None:
        self.conn = conn
        self.msgid = msgid
        self.method = method
        self.obs = obs  # the method's timed observer, if any
        self.t0 = t0

    def __call__(self, result: Any, exc: BaseException | None) -> None:
        _tell(self.obs, self.t0, result, exc)
        self.conn.reply_later(self.msgid, self.method, result, exc)


class RpcServer:
    """A msgpack-RPC server calling ``handlers[method](*params)``.

    A handler may be sync (its result is the reply, produced inline: the fast path), async
    (the coroutine runs as a task, which costs several times a sync call), or sync returning
    an ``asyncio.Future`` (replied when it settles, no task: the cheap way to wait on other
    nodes, see :meth:`RpcClient.request`). Any exception becomes an error reply
    (:func:`kvstore.errors.to_wire`); a ``TypeError`` raised by the call itself (wrong number
    of params) is ``invalid_request``. Notifications run the handler and send nothing.
    A handler marked ``replies_later`` is given a reply callback (kvstore.runtime.rpc.later).

    ``after_chunk`` is called after the requests of each chunk read from a connection were
    handled: a node sends the replica calls they made right then (see Node), so its peers
    start on them while it reads the next connection's chunk.
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
        after_chunk: Callable[[], None] | None = None,
        observers: Mapping[str, CallObserver] | None = None,
    ) -> None:
        if min(max_frame_bytes, max_inflight, max_reply_buffer_bytes, max_connections) < 1:
            raise ValueError("RpcServer limits must be positive")
        if min(idle_timeout_s, frame_timeout_s, auth_timeout_s) <= 0:
            raise ValueError("RpcServer timeouts must be positive")
        self._handlers: dict[str, Handler] = dict(handlers)
        # Methods whose handler takes a reply callback (kvstore.runtime.rpc.later).
        self._later: frozenset[str] = frozenset(k for k, h in self._handlers.items() if takes_reply(h))
        self._later_pending = 0  # their requests not answered yet
        self._observers: dict[str, CallObserver] = dict(observers or {})
        self._after_chunk = after_chunk
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

    def hold_replies(self) -> None:
        """Queue replies without scheduling their write until :meth:`release_replies`."""
        if self._flusher is not None:
            self._flusher.hold()

    def release_replies(self) -> None:
        """Write what was queued since :meth:`hold_replies` now (see _Flusher)."""
        if self._flusher is not None:
            self._flusher.release()

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
                c._queue(pack([2, BYE, []]))
                c._bye_at = now + BYE_GRACE_S
        self._sweeper = loop.call_later(self._sweep_every, self._sweep)

    @property
    def port(self) -> int:
        return int(self._socket().getsockname()[1])

    @property
    def addr(self) -> str:
        """``host:port`` of the first listening socket."""
        host = self._socket().getsockname()[0]
        return f"{host}:{self.port}"

    def _socket(self) -> Any:
        # Through getattr: uvloop's servers hold a list where asyncio's typing says a tuple,
        # and a compiled module (mypyc) checks the declared type.
        sockets = getattr(self._server, "sockets", None)
        if not sockets:
            raise RuntimeError("server not started")
        return sockets[0]

    @property
    def connections(self) -> int:
        """Open client connections (for tests and metrics)."""
        return len(self._conns)

    @property
    def running_handlers(self) -> int:
        """Handler tasks and futures not settled yet, and requests waiting on a reply callback."""
        return len(self._running) + self._later_pending

    async def drain(self, *, grace_s: float = 3.0, quiet_s: float = 0.2) -> None:
        """Stop gracefully: stop listening, tell every client to go elsewhere (a ``goaway``
        notification), keep serving what they still send until they are quiet and every
        running handler has answered, then close. A client that honours ``goaway`` sends
        its next requests to another node, so none is left with an unknown outcome."""
        if self._server is not None:
            self._server.close()
        note = pack([2, GOAWAY, []])
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
            elif not self._running and not self._later_pending and loop.time() - quiet_since >= quiet_s:
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
        # Requests answered through a reply callback cannot be cancelled: give them the
        # same grace to answer (their coordinator's deadline bounds them anyway).
        if self._later_pending and self._loop is not None:
            until = self._loop.time() + grace_s
            while self._later_pending and self._loop.time() < until:
                await asyncio.sleep(0.005)
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

    def _error_reply(self, msgid: int, method: str, e: BaseException) -> bytes:
        _log_handler_error(method, e)
        err = to_wire(e)
        try:
            data: bytes = pack([1, msgid, err, None])
        except Exception:
            err = {"code": InternalError.code, "message": f"{method}: unserialisable error"}
            data = pack([1, msgid, err, None])
        return data

    def _unpackable(self, msgid: int, method: str, e: Exception) -> bytes:
        exc = InternalError(f"{method}: result cannot be sent: {type(e).__name__}: {e}")
        log.error("%s", exc)
        data: bytes = pack([1, msgid, to_wire(exc), None])
        return data


# --------------------------------------------------------------------------- client

