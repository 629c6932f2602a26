"""Frames are packed by msgspec with msgpack's Packer behind it (kvstore.runtime.rpc.wire.pack):
peers of any version read them, so the bytes must be the ones msgpack's Packer writes, and
what msgspec refuses must still be packed, or refused, as msgpack's Packer would."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.runtime.rpc.wire import pack

_packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape", autoreset=True)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.text(min_size=250, max_size=300),
    st.binary(max_size=40),
    st.binary(min_size=250, max_size=300),
)
_keys = st.one_of(st.text(max_size=12), st.integers(-1000, 1000), st.binary(max_size=8))
_frames = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(_keys, inner, max_size=6),
    max_leaves=60,
)


@settings(max_examples=500, deadline=None)
@given(_frames)
def test_frames_are_msgpacks_bytes(x: object) -> None:
    assert pack(x) == _packer.pack(x)


def test_a_replica_batch_and_a_reply_are_msgpacks_bytes() -> None:
    many = [0, 7, "replica.many", [[[1, 17, b"%016d" % i, b"r" * 600, None] for i in range(64)]]]
    reply = [1, 7, None, {"context": b"\x93\x01\xa2n1\x05", "values": [b"v" * 100, b"w" * 100]}]
    for frame in (many, reply, (1, 2, (3, b"x"))):
        assert pack(frame) == _packer.pack(frame)


def test_what_msgspec_refuses_is_packed_as_msgpack_packs_it() -> None:
    # A method name sent as bytes is read with surrogateescape: an error reply echoing it
    # must still go out.
    name = b"\xff\xfebad".decode("utf-8", "surrogateescape")
    frame = [1, 3, ["unknown_method", f"unknown method {name!r}", name], None]
    assert pack(frame) == _packer.pack(frame)


@pytest.mark.parametrize("bad", [[1, 2, None, 2**64], [1, 2, None, object()]])
def test_what_neither_can_pack_raises(bad: object) -> None:
    with pytest.raises((TypeError, ValueError, OverflowError)):
        pack(bad)
