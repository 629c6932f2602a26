"""Wire form of SWIM packets and state snapshots: round trips, exact sizes, garbage."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core.membership import MemberState
from kvstore.core.membership.wire import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Nack,
    Packet,
    Ping,
    PingReq,
    StateEntry,
    Suspect,
    assemble,
    check_meta,
    decode_packet,
    decode_state,
    encode_message_parts,
    encode_packet,
    encode_state,
    encode_update,
)
from kvstore.errors import ProtocolError

MESSAGES = [
    Ping(1, "b", "a"),
    Ack(2**40, "b"),
    Nack(0),
    PingReq(7, "c", "10.0.0.3:7000", 0.4),
    Gossip(),
]
UPDATES = [
    Alive(
        "a",
        "127.0.0.1:7000",
        3,
        {"ring_version": 12, "zone": "z1", "b": b"\x00", "f": 1.5, "n": None},
        False,
    ),
    Alive("r", "[::1]:7001", 0, {}, True),
    Suspect("b", 9, "a"),
    Dead("c", 2, "a"),
    Dead("c", 2, "c"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_with_updates(msg: object) -> None:
    p = Packet(msg, tuple(UPDATES))  # type: ignore[arg-type]
    data = encode_packet(p)
    assert decode_packet(data) == p
    assert decode_packet(encode_packet(Packet(msg))) == Packet(msg)  # type: ignore[arg-type]
    assert Dead("c", 2, "c").left and not Dead("c", 2, "a").left


def test_packet_size_is_header_plus_parts_exactly() -> None:
    fixed = encode_message_parts(Ping(5, "b", "a"))
    for n in (0, 1, 12, 13, 40):
        updates = [encode_update(Alive(f"m{i}", "h:1", i)) for i in range(n)]
        data = assemble(fixed, updates)
        header = 1 if n + 3 < 16 else 3
        assert len(data) == header + len(fixed) + sum(map(len, updates))
        assert len(decode_packet(data).updates) == n
        # the same bytes as a plain msgpack encoding of the flat array
        assert msgpack.unpackb(data, raw=False) == msgpack.unpackb(
            encode_packet(decode_packet(data)), raw=False
        )


def test_state_snapshot_round_trips() -> None:
    entries = [
        StateEntry("a", "h:1", MemberState.ALIVE, 1, {"ring_version": 3}, False),
        StateEntry("b", "h:2", MemberState.SUSPECT, 2, {}, False),
        StateEntry("c", "h:3", MemberState.DEAD, 0, {}, True),
        StateEntry("d", "h:4", MemberState.LEFT, 5, {}, False),
    ]
    assert decode_state(encode_state(entries)) == entries
    assert decode_state(encode_state([])) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        msgpack.packb(None),
        msgpack.packb([1, 1]),
        msgpack.packb([2, 1, [1, "b", "a"]]),  # unknown version
        msgpack.packb([True, 1, [1, "b", "a"]]),  # bool is not a version
        msgpack.packb([1.0, 1, [1, "b", "a"]]),  # nor is a float
        msgpack.packb([1, 9, []]),  # unknown kind
        msgpack.packb([1, 1, [1, "b"]]),  # short body
        msgpack.packb([1, 1, [-1, "b", "a"]]),  # negative seq
        msgpack.packb([1, 1, [1, "", "a"]]),  # empty name
        msgpack.packb([1, 1, [1, "x" * 300, "a"]]),  # name too long
        msgpack.packb([1, 1, [True, "b", "a"]]),  # bool seq
        msgpack.packb([1, 2, [2**64 - 1, "b"]]),  # seq over int64
        msgpack.packb([1, 4, [1, "c", "nohostport", 0.4]]),
        msgpack.packb([1, 4, [1, "c", "h:99999", 0.4]]),
        msgpack.packb([1, 4, [1, "c", "h:1", 1e9]]),  # nack_after out of range
        msgpack.packb([1, 4, [1, "c", "h:1", "soon"]]),
        msgpack.packb([1, 5, [1]]),
        msgpack.packb([1, 5, [], [9, "x"]]),  # unknown update
        msgpack.packb([1, 5, [], [1.0, "x", "h:1", 0, {}, False]]),
        msgpack.packb([1, 5, [], [1, "x", "h:1", 0, {}, "no"]]),  # restarting not bool
        msgpack.packb([1, 5, [], [1, "x", "h:1", 0, {"k": [1]}, False]]),  # meta value not scalar
        msgpack.packb([1, 5, [], [1, "x", "h:1", 0, {"k": float("nan")}, False]]),
        msgpack.packb([1, 5, [], [1, "x", "h:1", 0, {"k": "v" * 600}, False]]),  # meta too big
        msgpack.packb([1, 5, [], [2, "x", 0]]),
        msgpack.packb([1, 5, [], []]),
        msgpack.packb([1, 5, []]) + b"\x00",  # trailing bytes
        b"\xdd\xff\xff\xff\xff",  # array header claiming 4G elements
        b"\x91" * 100_000,  # deep nesting
    ],
)
def test_malformed_packets_raise_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_packet(raw)


def test_oversized_packet_and_non_bytes_rejected() -> None:
    with pytest.raises(ProtocolError):
        decode_packet(encode_packet(Packet(Gossip(), tuple(UPDATES))), max_bytes=20)
    with pytest.raises(ProtocolError):
        decode_packet("not bytes")


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00",
        msgpack.packb([1]),
        msgpack.packb([2, []]),
        msgpack.packb([1, {}]),
        msgpack.packb([1, [["a", "h:1", "zombie", 0, {}, False]]]),
        msgpack.packb([1, [["a", "h:1", "alive", -1, {}, False]]]),
        msgpack.packb([1, [["a", "h:1", "alive", 0, {}]]]),
        msgpack.packb([1, [None]]),
    ],
)
def test_malformed_state_raises_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_state(raw)


def test_check_meta() -> None:
    assert check_meta({"a": 1, "b": None}) == {"a": 1, "b": None}
    for bad in ([], {1: 1}, {"a": {}}, {f"k{i}": i for i in range(40)}):
        with pytest.raises(ProtocolError):
            check_meta(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_protocol_error(data: bytes) -> None:
    for decode in (decode_packet, decode_state):
        try:
            decode(data)
        except ProtocolError:
            pass


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=7) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_values, min_size=0, max_size=8))
def test_random_msgpack_structures_never_raise_anything_but_protocol_error(
    obj: list[object],
) -> None:
    for prefix in ([], [1], [1, 1], [1, 5, []], [1, [obj]]):
        data = msgpack.packb(prefix + obj, use_bin_type=True)
        for decode in (decode_packet, decode_state):
            try:
                decode(data)
            except ProtocolError:
                pass
