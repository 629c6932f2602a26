"""One blocking msgpack-RPC call over a plain socket: the fast path of ``kv get/put/delete``.

A ``kv`` call is a fresh process that makes one request. Loading asyncio and the pooled,
pipelined RpcClient for it costs more than the request itself, so this module does the same
exchange with a blocking socket: connect, TLS and the cluster key handshake exactly as
kvstore/runtime/security.py defines them (its Keyring and TLS context are used, not copied),
one request, one response. Errors are the same KVError classes the async client raises,
and which failures go on to the next node is kvstore.retry's policy, as in AsyncClient.

It does not route by the ring: the node asked forwards the request to the key's
preference list (handle-or-forward), which for one request is as fast as fetching the ring.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgpack

from kvstore.errors import AuthError, KVError, ProtocolError, Timeout, Unreachable, from_wire
from kvstore.runtime.security import AUTH_CHALLENGE, AUTH_HELLO, Keyring

if TYPE_CHECKING:
    import ssl

__all__ = ["call"]

_REQUEST, _RESPONSE, _NOTIFICATION = 0, 1, 2
_CHUNK = 65536


class _Conn:
    """One connection, its unpacker and the deadline every read on it must meet."""

    def __init__(self, addr: str, sock: socket.socket, unpacker: Any) -> None:
        self.addr = addr
        self.sock = sock
        self.unp = unpacker
        self.challenge: bytes | None = None
        self.keyed = False  # the handshake was done: an auth error is about our key
        self.next_id = 0

    def send(self, method: str, params: Sequence[Any]) -> int:
        self.next_id += 1
        frame = msgpack.packb([_REQUEST, self.next_id, method, list(params)], use_bin_type=True,
                              unicode_errors="surrogateescape")
        self.sock.sendall(frame)
        return self.next_id

    def read_message(self) -> Any:
        while True:
            for msg in self.unp:
                return msg
            data = self.sock.recv(_CHUNK)
            if not data:
                raise Unreachable(f"cannot reach {self.addr}: connection closed by peer", sent=True)
            self.unp.feed(data)

    def response(self, msgid: int) -> Any:
        """The result of request ``msgid``; notifications on the way are noted or skipped."""
        while True:
            msg = self.read_message()
            if type(msg) is not list:
                raise ProtocolError(f"{self.addr}: malformed response")
            if len(msg) == 3 and msg[0] == _NOTIFICATION:
                if msg[1] == AUTH_CHALLENGE and type(msg[2]) is list and msg[2] and type(msg[2][0]) is bytes:
                    self.challenge = msg[2][0]
                continue
            if len(msg) != 4 or msg[0] != _RESPONSE:
                raise ProtocolError(f"{self.addr}: malformed response")
            if msg[1] != msgid:
                continue
            if msg[2] is not None:
                exc = from_wire(msg[2])
                if isinstance(exc, AuthError):
                    if not self.keyed and self.challenge is not None:
                        raise AuthError(f"{self.addr} requires the cluster key (give --secret-file or KV_SECRET_FILE)")
                    raise AuthError(f"{self.addr} {exc.message}")
                raise exc
            return msg[3]


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    try:
        return host.strip("[]") or "127.0.0.1", int(port)
    except ValueError:
        raise Unreachable(f"cannot reach {addr}: not HOST:PORT", sent=False) from None


def _open(addr: str, connect_timeout: float, keyring: Keyring | None, ssl_context: ssl.SSLContext | None) -> _Conn:
    host, port = _split(addr)
    # An ASCII host as bytes: getaddrinfo would otherwise load the idna codec (and
    # unicodedata) to encode it, a few ms of a `kv get`'s start-up.
    dial: str | bytes = host.encode("ascii") if host.isascii() else host
    try:
        sock = socket.create_connection((dial, port), timeout=connect_timeout)  # type: ignore[arg-type]
    except TimeoutError:
        raise Unreachable(f"cannot reach {addr}: connect timed out", sent=False) from None
    except ConnectionRefusedError:
        raise Unreachable(f"cannot reach {addr}: connection refused", sent=False) from None
    except OSError as e:
        raise Unreachable(f"cannot reach {addr}: {(e.strerror or str(e)).lower()}", sent=False) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if ssl_context is not None:
            import ssl

            try:
                sock = ssl_context.wrap_socket(sock, server_hostname=host)
            except ssl.SSLError as e:
                raise AuthError(f"{addr}: TLS handshake failed: {e.reason or e}") from None
        conn = _Conn(addr, sock, msgpack.Unpacker(raw=False, unicode_errors="surrogateescape"))
        if keyring is not None:
            _authenticate(conn, keyring, connect_timeout)
        return conn
    except TimeoutError:
        sock.close()
        raise Unreachable(f"cannot reach {addr}: authentication did not finish in time", sent=False) from None
    except OSError as e:
        sock.close()
        raise Unreachable(f"cannot reach {addr}: {(e.strerror or str(e)).lower()}", sent=False) from None
    except BaseException:
        sock.close()
        raise


def _authenticate(conn: _Conn, keyring: Keyring, connect_timeout: float) -> None:
    """security.py's challenge-response: the server's challenge comes first (within half
    the connect timeout, as the async client waits), our proof, then its proof."""
    conn.sock.settimeout(max(0.01, connect_timeout / 2))
    try:
        msg = conn.read_message()
    except TimeoutError:
        raise AuthError(f"{conn.addr} did not ask for the cluster key (is it running without a secret?)") from None
    if not (type(msg) is list and len(msg) == 3 and msg[0] == _NOTIFICATION and msg[1] == AUTH_CHALLENGE
            and type(msg[2]) is list and msg[2] and type(msg[2][0]) is bytes):
        raise AuthError(f"{conn.addr} did not ask for the cluster key (is it running without a secret?)")
    nonce_s = msg[2][0]
    conn.challenge = nonce_s
    conn.keyed = True
    nonce_c = Keyring.nonce()
    conn.sock.settimeout(connect_timeout)
    reply = conn.response(conn.send(AUTH_HELLO, [nonce_c, keyring.client_proof(nonce_s, nonce_c)]))
    mac = reply.get("mac") if type(reply) is dict else None
    if type(mac) is not bytes or not keyring.check_server(nonce_s, nonce_c, mac):
        raise AuthError(f"{conn.addr} could not prove it holds the cluster key")


def call_one(
    addr: str, method: str, params: Sequence[Any], timeout: float, *, connect_timeout: float,
    keyring: Keyring | None = None, ssl_context: ssl.SSLContext | None = None,
) -> Any:
    """``method(*params)`` on ``addr``: its result, or the KVError it replied with;
    Unreachable (``sent`` as the async client sets it) or Timeout otherwise."""
    conn = _open(addr, connect_timeout, keyring, ssl_context)
    try:
        conn.sock.settimeout(timeout)
        try:
            msgid = conn.send(method, params)
        except OSError as e:
            raise Unreachable(f"cannot reach {addr}: {(e.strerror or str(e)).lower()}", sent=False) from None
        try:
            return conn.response(msgid)
        except TimeoutError:
            raise Timeout(f"{addr} did not answer {method} within {timeout:g}s") from None
        except OSError as e:
            raise Unreachable(f"cannot reach {addr}: {(e.strerror or str(e)).lower()}", sent=True) from None
    finally:
        conn.sock.close()


def call(
    nodes: Sequence[str], method: str, params: Sequence[Any], *, timeout_s: float, idempotent: bool,
    security: dict[str, Any] | None = None,
) -> Any:
    """Ask the first of ``nodes`` that answers. ``security`` is
    kvstore.runtime.security.client_options()'s (keyring and TLS context from the
    environment when None). The wait and the connect timeout are the async client's:
    ``timeout_s + 1`` for the answer, ``min(1, timeout_s)`` to connect."""
    from kvstore.runtime.security import client_options

    opts = client_options() if security is None else security
    last: KVError | None = None
    for addr in nodes:
        try:
            return call_one(addr, method, params, timeout_s + 1.0, connect_timeout=min(1.0, timeout_s), **opts)
        except KVError as e:
            last = e
            # Loaded on a failure only (it brings dataclasses in): most calls succeed at once.
            from kvstore.retry import RetryPolicy

            if not RetryPolicy().try_next(e, idempotent=idempotent):
                raise
    assert last is not None
    raise last
