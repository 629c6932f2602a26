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

The package is split by job, h11-style: :mod:`.wire` (framing and codec, no I/O),
:mod:`.conn` (what both sides' connections share), :mod:`.server` and :mod:`.client`.
"""

from __future__ import annotations

from kvstore.core.messages import as_bytes, as_str
from kvstore.errors import was_sent
from kvstore.runtime.rpc.client import RpcClient
from kvstore.runtime.rpc.conn import available_loops, new_event_loop, run
from kvstore.runtime.rpc.server import RpcServer
from kvstore.runtime.rpc.wire import BYE, GOAWAY, NOTIFICATION, REQUEST, RESPONSE

__all__ = [
    "BYE",
    "GOAWAY",
    "NOTIFICATION",
    "REQUEST",
    "RESPONSE",
    "RpcClient",
    "RpcServer",
    "as_bytes",
    "as_str",
    "available_loops",
    "new_event_loop",
    "run",
    "was_sent",
]
