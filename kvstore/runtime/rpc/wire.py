"""msgpack-RPC framing and codec, no I/O: message kinds, control notifications, the limits'
defaults, and the packer/unpacker every connection uses."""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgpack
import msgspec

from kvstore.config import Settings
from kvstore.errors import (
    KVError,
)
from kvstore.runtime.framing import FrameLimits

log = logging.getLogger("kvstore.rpc")

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2

_DEFAULTS: Final = Settings()
DEFAULT_MAX_FRAME_BYTES: Final[int] = _DEFAULTS.max_frame_bytes
# Past this many running async handlers on one connection it stops being read, so a client
# that pipelines without bound cannot pile up tasks without bound.
DEFAULT_MAX_INFLIGHT: Final = _DEFAULTS.max_inflight_per_conn
# Before a connection has proved the key it may send only the small auth.hello frame.
PREAUTH_LIMITS: Final = FrameLimits(max_bytes=1024, max_depth=2, max_elements=8)
# The unpacker holds at most the partial frame plus one chunk read from the socket.
_CHUNK_SLACK: Final = 4 * 1024 * 1024
_MSGID_MASK: Final = 0xFFFFFFFF  # msgpack-RPC msgids are uint32
_CoroutineType: Final = types.CoroutineType
_T = TypeVar("_T")


# --------------------------------------------------------------------------- helpers


# A server that is stopping sends this notification on every connection (see RpcServer.drain).
GOAWAY: Final = "goaway"
GOAWAY_B: Final = b"goaway"
# How long a client then treats that server as down before trying it again.
GOAWAY_HOLD_S: Final = 1.0
# How long a call waits for a reconnect to a peer that failed before (see _connect).
RETRY_CONNECT_WAIT_S: Final = 0.25
# A server closing an idle connection sends this first: the client stops using it (without
# counting the server as down), so no new request races the close.
BYE: Final = "bye"
BYE_B: Final = b"bye"
BYE_GRACE_S: Final = 2.0


def _new_unpacker(max_frame_bytes: int) -> Any:
    return msgpack.Unpacker(
        raw=False,
        unicode_errors="surrogateescape",
        max_buffer_size=max_frame_bytes + _CHUNK_SLACK,
    )


# msgspec's encoder writes the bytes msgpack's Packer writes for everything a frame holds
# (lists, maps, str, bytes, ints, floats, bools, None; tests/unit/test_rpc_pack.py) in about
# a third of the time: a replica.many frame of 64 puts 9.0 -> 3.0 us, a client's reply
# 211 -> 78 ns. What it refuses (a str carrying surrogates, from a method name sent as
# bytes; an int past 64 bits) goes to msgpack's Packer, which packs it or raises as before.
# Frames are packed on the event loop's thread only, so one of each serves every connection.
_encode: Final[Callable[[Any], bytes]] = msgspec.msgpack.Encoder().encode
_slow_pack: Final[Callable[[Any], bytes]] = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape").pack


def pack(msg: Any) -> bytes:
    """One msgpack-RPC frame's bytes; TypeError/ValueError/OverflowError when it cannot be packed."""
    try:
        return _encode(msg)
    except Exception:
        return _slow_pack(msg)


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

