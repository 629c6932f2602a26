"""SWIM messages and their wire form: msgpack arrays, versioned, validated on the way in.

A UDP packet is one msgpack array ``[VERSION, kind, body, update, update, ...]``:

    kind  body                                        meaning
    1     [seq, target_name, sender_name]             ping: "are you alive, target?"
    2     [seq, sender_name]                          ack of ping seq
    3     [seq]                                       nack: a relay got no ack (Lifeguard)
    4     [seq, target_name, target_addr, nack_after] ping-req: probe target for me, relay
                                                      its ack, nack after nack_after seconds
    5     []                                          gossip only (leave/restart fan-out)

and each piggybacked update is

    [1, name, addr, incarnation, meta, restarting]    alive
    [2, name, incarnation, sender]                    suspect (raised or confirmed by sender)
    [3, name, incarnation, sender]                    dead; sender == name means left

Because the packet is a flat array, its size is exactly the array header plus the sum of
its elements' encodings, so the broadcast queue can fill a packet to the byte.

A push-pull state snapshot (sent over TCP by the runtime) is
``[VERSION, [[name, addr, state, incarnation, meta, restarting], ...]]`` with state one of
"alive", "suspect", "dead", "left".

Decoding anything malformed raises :class:`kvstore.errors.ProtocolError` and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from kvstore.core.membership.member import MemberState, Meta, MetaValue
from kvstore.errors import ProtocolError

__all__ = [
    "MAX_META_BYTES",
    "VERSION",
    "Ack",
    "Alive",
    "Dead",
    "Gossip",
    "Message",
    "Nack",
    "Packet",
    "Ping",
    "PingReq",
    "StateEntry",
    "Suspect",
    "Update",
    "array_header_size",
    "decode_packet",
    "decode_state",
    "encode_packet",
    "encode_state",
    "encode_update",
]

VERSION = 1
MAX_NAME_CHARS = 256
MAX_ADDR_CHARS = 300
MAX_META_BYTES = 512
MAX_META_KEYS = 32
MAX_STATE_ENTRIES = 65536
MAX_INT = 2**63 - 1
MAX_NACK_AFTER_S = 60.0


# --- messages


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str
    sender: str


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    sender: str


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int


@dataclass(frozen=True, slots=True)
class PingReq:
    seq: int
    target: str
    target_addr: str
    nack_after: float


@dataclass(frozen=True, slots=True)
class Gossip:
    pass


Message = Ping | Ack | Nack | PingReq | Gossip


@dataclass(frozen=True, slots=True)
class Alive:
    name: str
    addr: str
    incarnation: int
    meta: Meta = field(default_factory=dict)
    restarting: bool = False


@dataclass(frozen=True, slots=True)
class Suspect:
    name: str
    incarnation: int
    sender: str


@dataclass(frozen=True, slots=True)
class Dead:
    name: str
    incarnation: int
    sender: str

    @property
    def left(self) -> bool:
        return self.sender == self.name


Update = Alive | Suspect | Dead


@dataclass(frozen=True, slots=True)
class Packet:
    message: Message
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class StateEntry:
    name: str
    addr: str
    state: MemberState
    incarnation: int
    meta: Meta
    restarting: bool


# --- encoding

_KIND = {Ping: 1, Ack: 2, Nack: 3, PingReq: 4, Gossip: 5}


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def array_header_size(n: int) -> int:
    return 1 if n < 16 else 3 if n < 65536 else 5


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 65536:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _body(msg: Message) -> list[Any]:
    if isinstance(msg, Ping):
        return [msg.seq, msg.target, msg.sender]
    if isinstance(msg, Ack):
        return [msg.seq, msg.sender]
    if isinstance(msg, Nack):
        return [msg.seq]
    if isinstance(msg, PingReq):
        return [msg.seq, msg.target, msg.target_addr, float(msg.nack_after)]
    return []


def encode_message_parts(msg: Message) -> bytes:
    """The packet's fixed elements (version, kind, body), without the array header."""
    return _pack(VERSION) + _pack(_KIND[type(msg)]) + _pack(_body(msg))


def encode_update(u: Update) -> bytes:
    if isinstance(u, Alive):
        return _pack([1, u.name, u.addr, u.incarnation, u.meta, u.restarting])
    if isinstance(u, Suspect):
        return _pack([2, u.name, u.incarnation, u.sender])
    return _pack([3, u.name, u.incarnation, u.sender])


def assemble(fixed: bytes, updates: Sequence[bytes]) -> bytes:
    """Join the fixed elements from encode_message_parts with already encoded updates."""
    return _array_header(3 + len(updates)) + fixed + b"".join(updates)


def encode_packet(packet: Packet) -> bytes:
    return assemble(
        encode_message_parts(packet.message), [encode_update(u) for u in packet.updates]
    )


def encode_meta(meta: Meta) -> bytes:
    return _pack(meta)


def encode_state(entries: Sequence[StateEntry]) -> bytes:
    return _pack(
        [
            VERSION,
            [[e.name, e.addr, e.state.value, e.incarnation, e.meta, e.restarting] for e in entries],
        ]
    )


# --- decoding (every field checked; any surprise is a ProtocolError)


def _unpack(data: Any, max_len: int) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("expected bytes")
    if len(data) > max_len:
        raise ProtocolError(f"message of {len(data)} bytes is over {max_len}")
    try:
        return msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises a zoo of types on garbage
        raise ProtocolError(f"not msgpack: {type(e).__name__}") from None


def _int(x: Any, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= MAX_INT:
        raise ProtocolError(f"{what} must be a non-negative integer")
    return x


def _str(x: Any, what: str, max_chars: int = MAX_NAME_CHARS) -> str:
    if not isinstance(x, str) or not x or len(x) > max_chars:
        raise ProtocolError(f"{what} must be a non-empty string of at most {max_chars} chars")
    return x


def _bool(x: Any, what: str) -> bool:
    if not isinstance(x, bool):
        raise ProtocolError(f"{what} must be a boolean")
    return x


def _addr(x: Any, what: str) -> str:
    s = _str(x, what, MAX_ADDR_CHARS)
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProtocolError(f"{what} must be HOST:PORT")
    return s


def check_meta(x: Any, what: str = "meta") -> Meta:
    """Validate a metadata map (also used for local set_meta); ProtocolError if unfit."""
    if not isinstance(x, dict) or len(x) > MAX_META_KEYS:
        raise ProtocolError(f"{what} must be a map of at most {MAX_META_KEYS} entries")
    out: Meta = {}
    for k, v in x.items():
        if not isinstance(k, str):
            raise ProtocolError(f"{what} keys must be strings")
        if v is not None and not isinstance(v, (str, int, float, bool, bytes)):
            raise ProtocolError(f"{what}[{k!r}] must be a scalar")
        if isinstance(v, float) and not math.isfinite(v):
            raise ProtocolError(f"{what}[{k!r}] must be finite")
        value: MetaValue = v
        out[k] = value
    try:
        size = len(encode_meta(out))
    except Exception:
        raise ProtocolError(f"{what} is not encodable") from None
    if size > MAX_META_BYTES:
        raise ProtocolError(f"{what} is {size} bytes encoded, over {MAX_META_BYTES}")
    return out


def _list(x: Any, what: str, n: int) -> list[Any]:
    if not isinstance(x, list) or len(x) != n:
        raise ProtocolError(f"{what} must be a list of {n} elements")
    return x


def _decode_update(raw: Any) -> Update:
    if not isinstance(raw, list) or not raw:
        raise ProtocolError("update must be a non-empty list")
    kind = raw[0]
    if type(kind) is not int:
        raise ProtocolError("update kind must be an integer")
    if kind == 1:
        _, name, addr, inc, meta, restarting = _list(raw, "alive", 6)
        return Alive(
            _str(name, "name"),
            _addr(addr, "addr"),
            _int(inc, "incarnation"),
            check_meta(meta),
            _bool(restarting, "restarting"),
        )
    if kind in (2, 3):
        _, name, inc, sender = _list(raw, "suspect/dead", 4)
        cls = Suspect if kind == 2 else Dead
        return cls(_str(name, "name"), _int(inc, "incarnation"), _str(sender, "sender"))
    raise ProtocolError(f"unknown update kind {kind!r}")


def _decode_message(kind: Any, body: Any) -> Message:
    if type(kind) is not int:
        raise ProtocolError("packet kind must be an integer")
    if kind == 1:
        seq, target, sender = _list(body, "ping", 3)
        return Ping(_int(seq, "seq"), _str(target, "target"), _str(sender, "sender"))
    if kind == 2:
        seq, sender = _list(body, "ack", 2)
        return Ack(_int(seq, "seq"), _str(sender, "sender"))
    if kind == 3:
        (seq,) = _list(body, "nack", 1)
        return Nack(_int(seq, "seq"))
    if kind == 4:
        seq, target, target_addr, nack_after = _list(body, "ping-req", 4)
        if isinstance(nack_after, bool) or not isinstance(nack_after, (int, float)):
            raise ProtocolError("nack_after must be a number")
        if not 0 <= nack_after <= MAX_NACK_AFTER_S:
            raise ProtocolError("nack_after out of range")
        return PingReq(
            _int(seq, "seq"),
            _str(target, "target"),
            _addr(target_addr, "target_addr"),
            float(nack_after),
        )
    if kind == 5:
        _list(body, "gossip", 0)
        return Gossip()
    raise ProtocolError(f"unknown packet kind {kind!r}")


def decode_packet(data: Any, max_bytes: int = 65536) -> Packet:
    raw = _unpack(data, max_bytes)
    if not isinstance(raw, list) or len(raw) < 3:
        raise ProtocolError("packet must be a list [version, kind, body, updates...]")
    if type(raw[0]) is not int or raw[0] != VERSION:
        raise ProtocolError(f"unsupported packet version {raw[0]!r}")
    msg = _decode_message(raw[1], raw[2])
    return Packet(msg, tuple(_decode_update(u) for u in raw[3:]))


_STATES = {s.value: s for s in MemberState}


def decode_state(data: Any, max_bytes: int = 64 * 1024 * 1024) -> list[StateEntry]:
    raw = _unpack(data, max_bytes)
    if not isinstance(raw, list) or len(raw) != 2 or type(raw[0]) is not int or raw[0] != VERSION:
        raise ProtocolError("state must be [version, entries]")
    entries = raw[1]
    if not isinstance(entries, list) or len(entries) > MAX_STATE_ENTRIES:
        raise ProtocolError("state entries must be a list")
    out: list[StateEntry] = []
    for e in entries:
        name, addr, state, inc, meta, restarting = _list(e, "state entry", 6)
        if not isinstance(state, str) or state not in _STATES:
            raise ProtocolError(f"unknown member state {state!r}")
        out.append(
            StateEntry(
                _str(name, "name"),
                _addr(addr, "addr"),
                _STATES[state],
                _int(inc, "incarnation"),
                check_meta(meta),
                _bool(restarting, "restarting"),
            )
        )
    return out
