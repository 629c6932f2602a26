"""The pooled, pipelined msgpack-RPC client: a few connections per peer, requests on one
connection in flight together, one deadline sweep per batch, fail-fast and reconnects."""

from __future__ import annotations

import asyncio
import collections
import functools
import random
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from kvstore.config import parse_addr
from kvstore.errors import (
    AuthError,
    InvalidRequest,
    KVError,
    Timeout,
    TooLarge,
    Unreachable,
    from_wire,
)
from kvstore.runtime.framing import FrameLimits
from kvstore.runtime.resolver import Addrs, Resolver
from kvstore.runtime.rpc.conn import (
    _Conn,
    _Flusher,
)
from kvstore.runtime.rpc.wire import (
    _DEFAULTS,
    _MSGID_MASK,
    BYE,
    BYE_B,
    DEFAULT_MAX_FRAME_BYTES,
    GOAWAY,
    GOAWAY_B,
    GOAWAY_HOLD_S,
    RETRY_CONNECT_WAIT_S,
    log,
    pack,
)
from kvstore.runtime.security import AUTH_CHALLENGE, AUTH_HELLO, Keyring


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
        # msgid -> (future or ReplySink, its timeout batch, method name)
        self._pending: dict[int, tuple[Any, _Batch, str]] = {}
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
                fut.set_exception(Unreachable(message, sent=sent))

    def _drain(self) -> None:
        around = self._owner.around_replies
        if around is None:
            self._read_replies()
            return
        # Replies this chunk completes are answered (its callers' replies written) when the
        # chunk is done, not in another pass of the loop.
        around[0]()
        try:
            self._read_replies()
        finally:
            around[1]()

    def _read_replies(self) -> None:
        pending = self._pending
        try:
            for msg in self._msgs:
                if type(msg) is list and len(msg) == 4 and msg[0] == 1:
                    # get and del, not pop(k, None): compiled, that is a method call by name.
                    msgid = msg[1]
                    entry = pending.get(msgid)
                    if entry is None:
                        continue  # timed out or cancelled meanwhile
                    del pending[msgid]
                    fut = entry[0]
                    entry[1].done_one()
                    if type(fut) is ReplySink:
                        # Narrowed, the sink is called directly: a future's done() and
                        # set_result() are two method calls by name per reply.
                        if not fut._done:
                            err = msg[2]
                            if err is None:
                                fut._settle(msg[3], None)
                            else:
                                fut._settle(None, self._reply_error(err))
                    elif not fut.done():
                        err = msg[2]
                        if err is None:
                            fut.set_result(msg[3])
                        else:
                            fut.set_exception(self._reply_error(err))
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

    def _reply_error(self, err: Any) -> BaseException:
        """The exception an error reply carries (an auth refusal names the peer and is
        remembered, so later calls fail at once)."""
        exc = from_wire(err)
        if isinstance(exc, AuthError):
            exc = AuthError(f"{self._addr} {exc.message}")
            self._owner._auth_refused(self, exc.message)
        return exc

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


class ReplySink:
    """What a pending call needs of a future, calling ``fn(result, None)`` or ``fn(None,
    exc)`` at once when the reply (or the failure) comes (:meth:`RpcClient.request_cb`).

    A future runs its callbacks in a later pass of the event loop: the reply to a replica
    call then reaches the coordinator a loop turn after it was read, and the client's reply
    one more turn later (each turn an epoll wait and the loop's own work, a large share of a
    request at one in flight). Called here, the reply is used while its chunk is handled."""

    __slots__ = ("_done", "fn")

    def __init__(self, fn: Callable[[Any, BaseException | None], None]) -> None:
        self.fn = fn
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any) -> None:
        self._settle(result, None)

    def set_exception(self, exc: BaseException) -> None:
        self._settle(None, exc)

    def _settle(self, result: Any, exc: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        try:
            self.fn(result, exc)
        except Exception:
            # The reader of the connection must go on with the other replies.
            log.exception("reply callback failed")


class _Batch:
    """The calls of one loop turn with the same timeout: they share one deadline."""

    __slots__ = ("calls", "deadline", "left", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.left = 0  # calls still unanswered
        self.deadline = 0.0  # loop time, set when committed
        # conn, msgid, conn, msgid, ... (flat: no tuple per call)
        self.calls: list[Any] = []

    def done_one(self) -> None:
        self.left -= 1
        if not self.left:
            self.calls.clear()  # nothing left to time out: let the connections go


class _Deadlines:
    """Timeouts of in-flight calls: the calls of one loop turn with one timeout share a
    batch, and one timer serves every batch. Committed batches wait in a queue per timeout
    value, where their deadlines ascend; the timer is set for the earliest batch still
    waiting, and when it fires it drops the answered batches from the front of each queue
    and times out the late ones. A timer set and cancelled per loop turn cost ~4k
    instructions a turn, a large share of a request at one in flight; this one fires about
    once per timeout under steady load."""

    __slots__ = ("_loop", "_queues", "_timer", "_timer_at", "_turn")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._turn: dict[float, _Batch] = {}
        self._queues: dict[float, collections.deque[_Batch]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def batch(self, timeout: float) -> _Batch:
        b = self._turn.get(timeout)
        if b is None:
            b = self._turn[timeout] = _Batch(timeout)
        return b

    def commit(self) -> None:
        """Called once per loop turn, before its requests are written: start their clocks."""
        if not self._turn:
            return
        now = self._loop.time()
        for b in self._turn.values():
            if not b.left:
                continue
            b.deadline = now + b.timeout
            q = self._queues.get(b.timeout)
            if q is None:
                q = self._queues[b.timeout] = collections.deque()
            q.append(b)
            if self._timer is None or b.deadline < self._timer_at:
                self._arm(b.deadline)
        self._turn = {}

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        for q in list(self._queues.values()):
            while q:
                b = q[0]
                if b.left and b.deadline > now:
                    break
                q.popleft()
                if b.left:
                    self._expire(b)
        # Computed after every expiry: a failed call's callback may have sent (and a flush
        # committed) new calls meanwhile, and armed the timer for them.
        nxt = 0.0
        for t, q in list(self._queues.items()):
            if not q:
                del self._queues[t]
            elif not nxt or q[0].deadline < nxt:
                nxt = q[0].deadline
        if nxt and (self._timer is None or nxt < self._timer_at):
            self._arm(nxt)

    def _expire(self, b: _Batch) -> None:
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
        self._turn.clear()
        self._queues.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _settle_from_future(fn: Callable[[Any, BaseException | None], None], f: asyncio.Future[Any]) -> None:
    if f.cancelled():
        fn(None, asyncio.CancelledError())
    elif (e := f.exception()) is not None:
        fn(None, e)
    else:
        fn(f.result(), None)


def _connect_failure(e: OSError) -> str:
    """Why a connect failed, as the peer's down reason says it."""
    if isinstance(e, TimeoutError):
        return "connect timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    return (e.strerror or str(e)).lower()


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
        resolver: Resolver | None = None,
        max_frame_depth: int = _DEFAULTS.max_frame_depth,
        max_frame_elements: int = _DEFAULTS.max_frame_elements,
        keyring: Keyring | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if conns_per_peer < 1:
            raise ValueError("conns_per_peer must be >= 1")
        self._limits = FrameLimits(max_frame_bytes, max_frame_depth, max_frame_elements)
        # Called before and after each chunk of replies is read (a node holds its server's
        # replies meanwhile: RpcServer.hold_replies, release_replies).
        self.around_replies: tuple[Callable[[], None], Callable[[], None]] | None = None
        self._keyring = keyring
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout_s
        self._backoff_min = reconnect_min_s
        self._backoff_max = max(reconnect_max_s, reconnect_min_s)
        self._max_frame = max_frame_bytes
        self._n = conns_per_peer
        self._rng = rng or random.Random()
        self._local_addr = (source_host, 0) if source_host else None
        # A node shares its resolver with gossip (and closes it); a client owns its own.
        self._owns_resolver = resolver is None
        self._resolver = resolver or Resolver()
        self._peers: dict[str, _Peer] = {}
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
        peer, i, conn = self._next_slot(addr)
        loop = self._loop
        if conn is None or conn._closed:
            t0 = loop.time()
            conn = await self._connect(peer, i, timeout)
            timeout -= loop.time() - t0
            if conn._closed:
                raise Unreachable(
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

    def flush(self) -> None:
        """Write the requests queued so far now instead of at the end of the loop turn."""
        if self._flusher is not None:
            self._flusher.flush()

    def hold(self) -> None:
        """Queue the requests made until :meth:`release` without scheduling their write: a
        caller about to write them itself spares the loop a callback that would find nothing
        left (and, run after the loop's callbacks, one more pass: a poll that waits for nothing)."""
        if self._flusher is not None:
            self._flusher.hold()

    def release(self) -> None:
        """End a :meth:`hold`: the requests queued meanwhile are written now."""
        # A flusher made during the hold (the first peer's) was never held: it scheduled
        # its own write.
        if self._flusher is not None and self._flusher.held:
            self._flusher.release()

    def request(
        self, addr: str, method: str, params: Sequence[Any], timeout: float
    ) -> asyncio.Future[Any]:
        """:meth:`call` as a Future, returned at once: on an open connection no coroutine or
        task is involved, so callback-style code (a coordinator fanning out to replicas and
        replying on the first W answers) pays only for the future. Encoding errors raise
        here; everything else arrives through the future."""
        peer, i, conn = self._next_slot(addr)
        if conn is not None and not conn._closed:
            return self._send(conn, method, params, timeout)
        return self._request_slot(peer, i, addr, method, params, timeout)

    def _request_slot(
        self, peer: _Peer, i: int, addr: str, method: str, params: Sequence[Any], timeout: float
    ) -> asyncio.Future[Any]:
        """:meth:`request` on a slot with no open connection: connect first, in a task."""
        try:
            data = pack([0, 0, method, params])
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
                raise Unreachable(
                    f"connection to {addr} lost before the request was sent", sent=False
                )
            return await self._send(c, method, params, timeout - (loop.time() - t0))

        task = self._loop.create_task(connect_then_call())
        task.add_done_callback(_consume)
        return task

    def request_cb(
        self, addr: str, method: str, params: Sequence[Any], timeout: float,
        fn: Callable[[Any, BaseException | None], None],
    ) -> None:
        """:meth:`request` with a callback instead of a future: ``fn(result, None)`` or
        ``fn(None, exc)``, called while the reply's chunk is read (see :class:`ReplySink`).
        Encoding errors raise here, as from :meth:`request`; ``fn`` is never called then."""
        peer, i, conn = self._next_slot(addr)
        if conn is not None and not conn._closed:
            self._queue_call(conn, method, params, timeout, ReplySink(fn))
            return
        # Not connected: the connect runs as a task, and the reply comes through its future.
        self._request_slot(peer, i, addr, method, params, timeout).add_done_callback(
            functools.partial(_settle_from_future, fn)
        )

    def _send(
        self, conn: _ClientConn, method: str, params: Sequence[Any], timeout: float
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._queue_call(conn, method, params, timeout, fut)
        return fut

    def _queue_call(
        self, conn: _ClientConn, method: str, params: Sequence[Any], timeout: float, waiter: Any
    ) -> None:
        """Queue the call on ``conn``; ``waiter`` (a future or a ReplySink) gets its reply."""
        msgid = conn._next_id
        try:
            data = pack([0, msgid, method, params])
        except Exception as e:
            raise InvalidRequest(
                f"{method}: params cannot be sent: {type(e).__name__}: {e}"
            ) from None
        if len(data) > self._max_frame:
            raise TooLarge(
                f"{method}: request of {len(data)} bytes exceeds max_frame_bytes ({self._max_frame})"
            )
        conn._next_id = (msgid + 1) & _MSGID_MASK
        batch = self._deadlines.batch(timeout)
        batch.left += 1
        calls = batch.calls
        calls.append(conn)
        calls.append(msgid)
        conn._pending[msgid] = (waiter, batch, method)
        conn._queue(data)

    def notify(self, addr: str, method: str, params: Sequence[Any]) -> None:
        """Send a notification (no reply). Dropped silently when the peer is down or the
        request cannot be encoded; a connect is started in the background when needed."""
        if self._closed:
            return
        try:
            data = pack([2, method, params])
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
        peer, i, conn = self._next_slot(addr)
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
        if self._owns_resolver:
            self._resolver.close()
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

    def _next_slot(self, addr: str) -> tuple[_Peer, int, _ClientConn | None]:
        """The peer of ``addr`` and its next connection slot, round-robin: calls to one
        peer are spread over its connections (the one used may still be None or closed)."""
        peer = self._peers.get(addr)
        if peer is None:
            peer = self._add_peer(addr)
        i = peer.rr
        peer.rr = i + 1 if i + 1 < self._n else 0
        return peer, i, peer.slots[i]

    def _add_peer(self, addr: str) -> _Peer:
        if self._closed:
            raise Unreachable(f"cannot reach {addr}: client is closed", sent=False)
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
            raise Unreachable(f"cannot reach {peer.addr}: client is closed", sent=False)
        loop = self._loop
        if peer.down_until and loop.time() < peer.down_until:
            left = peer.down_until - loop.time()
            if peer.auth_error:
                raise AuthError(peer.auth_error)
            raise Unreachable(
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
            raise Unreachable(f"cannot reach {peer.addr}: connect timed out", sent=False)
        # Shielded: one caller giving up must not abort the connect the others wait for.
        try:
            return await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError:
            raise Unreachable(f"cannot reach {peer.addr}: connect timed out", sent=False) from None
        except asyncio.CancelledError:
            if self._closed and task.cancelled():  # close() stopped the connect, not our caller
                raise Unreachable(
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
                addrs = await self._resolver.resolve(peer.host, peer.port, self._connect_timeout)
            except TimeoutError:
                raise self._mark_down(peer, f"no answer to the lookup of {peer.host}") from None
            except OSError as e:
                raise self._mark_down(peer, str(e)) from None
            try:
                left = self._connect_timeout - (loop.time() - t0)
                conn = await asyncio.wait_for(self._dial(peer, slot, addrs, tls), left)
            except ssl.SSLError as e:
                # A bad certificate will not get better by retrying at once: one clear error.
                self._mark_down(peer, f"TLS handshake failed: {e.reason or e}")
                raise AuthError(f"{peer.addr}: TLS handshake failed: {e.reason or e}") from None
            except OSError as e:  # TimeoutError and ConnectionRefusedError among them
                self._resolver.refresh(peer.host, peer.port)  # a peer that moved: ask DNS again
                raise self._mark_down(peer, _connect_failure(e)) from None
            if self._keyring is not None:
                await self._authenticate(peer, conn, t0)
        finally:
            peer.connecting[slot] = None
        if self._closed:
            conn._transport.abort()
            raise Unreachable(f"cannot reach {peer.addr}: client is closed", sent=False)
        if conn._closed:
            # Dropped between the handshake and now: its connection_lost found no slot to clear.
            raise Unreachable(f"cannot reach {peer.addr}: connection closed by peer", sent=False)
        peer.slots[slot] = conn
        peer.down_until = 0.0
        peer.backoff_s = self._backoff_min
        peer.reason = ""
        peer.auth_error = ""
        return conn

    async def _dial(self, peer: _Peer, slot: int, addrs: Addrs, tls: dict[str, Any]) -> _ClientConn:
        """Connect to the first of ``addrs`` that answers."""
        err: OSError | None = None
        for family, sockaddr in addrs:
            try:
                _, conn = await self._loop.create_connection(
                    lambda: _ClientConn(self, peer.addr, slot),
                    sockaddr[0],
                    sockaddr[1],
                    family=family,
                    local_addr=self._local_addr,
                    **tls,
                )
                return conn
            except ssl.SSLError:
                raise
            except OSError as e:  # the next address may answer ("localhost" as ::1, then 127.0.0.1)
                err = e
        assert err is not None
        raise err

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
                raise Unreachable(f"cannot reach {addr}: connection closed by peer", sent=False)
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
        return Unreachable(f"cannot reach {peer.addr}: {reason}", sent=False)

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
