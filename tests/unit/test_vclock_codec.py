"""vclock packs records and contexts with msgspec and reads them with msgpack: the two must
agree byte for byte, since a stored record's hash is its version's digest (Merkle trees
compare them across nodes, and nodes of an older version packed with msgpack)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core import vclock

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)

# What records and contexts are made of, at every size boundary of msgpack's formats.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, -32, -33, -128, -129, -32768, -32769]),
    st.text(max_size=40),
    st.text(min_size=250, max_size=300),
    st.binary(max_size=40),
    st.binary(min_size=250, max_size=300),
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=20), max_leaves=60)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_the_record_packer_writes_msgpack_bytes(x: object) -> None:
    assert vclock._pack(x) == _packer.pack(x)


@pytest.mark.parametrize("size", [31, 32, 255, 256, 65535, 65536, 70000])
def test_bytes_and_str_at_each_length_format_pack_to_the_same_bytes(size: int) -> None:
    for x in (b"v" * size, "s" * size, ["s" * size, b"v" * size, [None] * min(size, 70000)]):
        assert vclock._pack(x) == _packer.pack(x)


names = st.text(alphabet="abcxyz~0123456789", min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, st.binary(max_size=300) | st.none(), st.integers(0, 2**45)), min_size=1, max_size=6))
def test_encoded_versions_and_contexts_are_msgpacks_bytes_and_read_back(writes: list[tuple[str, bytes | None, int]]) -> None:
    obj = None
    for node, value, ts in writes:
        obj = vclock.update(obj, {}, value, node, ts)
    assert obj is not None
    rec = vclock.encode(obj)
    nodes = sorted(obj.vv)
    index = {n: i for i, n in enumerate(nodes)}
    flat: list[object] = []
    for s in obj.siblings:
        flat += [index[s.dot.node], s.dot.counter, s.ts, s.value]
    assert rec == _packer.pack([1, nodes, [obj.vv[n] for n in nodes], flat])
    assert vclock.decode(rec, canonical=True) == obj
    ctx = vclock.encode_context(obj.vv)
    assert vclock.decode_context(ctx) == obj.vv
    assert ctx == _packer.pack([1, *[x for n in nodes for x in (n, obj.vv[n])]])


def test_a_stored_record_holds_no_more_memory_than_msgpacks_bytes() -> None:
    # The table keeps every record: spare room in each one is memory per key (issue 13 holds
    # it to 1.5x redis's). msgspec's bytes keep their buffer's spare room unless copied.
    obj = vclock.update(None, {}, b"x" * 100, "~Saymu0riKqE", 1796316739314)
    n = 5000

    def traced_per_item(make: Callable[[], bytes]) -> float:
        tracemalloc.start()
        try:
            held = [make() for _ in range(n)]
            size = tracemalloc.get_traced_memory()[0] / n
        finally:
            tracemalloc.stop()
        assert len(held) == n
        return size

    ours = traced_per_item(lambda: vclock.encode(obj))
    theirs = traced_per_item(lambda: _packer.pack([1, [*obj.vv], [*obj.vv.values()], [0, 1, obj.siblings[0].ts, b"x" * 100]]))
    assert ours <= theirs + 8
