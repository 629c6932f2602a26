"""A version read from a record keeps the record's checked fields and builds its siblings only
when asked (vclock.Obj); update, sync, equality, values and tombstones then work on those
fields. Whatever path runs, the answers must be the ones the built siblings give."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core import vclock as vc
from kvstore.core.vclock import Dot, Obj, Sibling
from kvstore.errors import DotConflict

NODES = ("a", "b~2", "c")
props = settings(deadline=None, max_examples=300)

# One write: which node coordinates it, a tombstone or a value, and which of the versions
# built so far its client had read (None: a blind write).
write_st = st.tuples(st.integers(0, len(NODES) - 1), st.booleans(), st.none() | st.integers(0, 20))
history_st = st.lists(write_st, min_size=1, max_size=12)


def built(o: Obj) -> Obj:
    """The same state with its siblings built (nothing read from a record)."""
    return Obj(tuple(o.siblings), dict(o.vv))


def read(o: Obj) -> Obj:
    """The same state as a replica reads it from its record."""
    return vc.decode(vc.encode(o))


def versions(history: list[tuple[int, bool, int | None]]) -> list[Obj]:
    """Versions of one key as its coordinators mint them, each from its own last version."""
    out: list[Obj] = []
    last: dict[int, Obj] = {}
    for ts, (n, tomb, seen) in enumerate(history, start=1):
        ctx = vc.context_of(out[seen % len(out)]) if seen is not None and out else {}
        new = vc.update(last.get(n), ctx, None if tomb else b"v%d" % ts, NODES[n], ts)
        last[n] = new
        out.append(new)
    return out


@props
@given(history_st)
def test_a_read_version_answers_as_its_built_siblings(history: list[tuple[int, bool, int | None]]) -> None:
    for o in versions(history):
        r, b = read(o), built(o)
        assert r._sibs is None  # read, not built
        assert r == b and b == r and hash(r) == hash(b)
        assert vc.values(r) == vc.values(b)
        assert vc.values_at(r, 10**15) == vc.values_at(b, 10**15)
        assert vc.is_deleted(r) == vc.is_deleted(b)
        assert vc.sibling_count(r) == len(b.siblings)
        assert vc.context_bytes(r) == vc.context_bytes(b) == vc.encode_context(b.vv)
        assert vc.decode_context(vc.context_bytes(r)) == b.vv
        assert vc.encode(r) == vc.encode(b)
        assert r.siblings == b.siblings


@props
@given(history_st, st.integers(0, len(NODES) - 1), st.booleans(), st.integers(0, 20), st.integers(0, 40))
def test_update_of_a_read_version_is_update_of_its_built_siblings(
    history: list[tuple[int, bool, int | None]], n: int, tomb: bool, seen: int, floor: int
) -> None:
    vs = versions(history)
    base = vs[-1]
    ctx = vc.context_of(vs[seen % len(vs)])
    value = None if tomb else b"new"
    from_read = vc.update(read(base), ctx, value, NODES[n], 99, floor)
    from_built = vc.update(built(base), ctx, value, NODES[n], 99, floor)
    assert from_read == from_built
    assert vc.encode(from_read) == vc.encode(built(from_read))
    assert vc.decode(vc.encode(from_read), canonical=True) == from_built


def reference_update(obj: Obj | None, ctx: dict[str, int], value: bytes | None, node: str, ts: int, floor: int) -> Obj:
    """update as it is defined: keep the siblings the context does not cover, add one whose
    counter is above the vector's, the context's and the floor, sort by dot."""
    ovv = {} if obj is None else obj.vv
    counter = max(ovv.get(node, 0), ctx.get(node, 0), floor) + 1
    keep = [] if obj is None else [s for s in obj.siblings if s.dot.counter > ctx.get(s.dot.node, 0)]
    vv = dict(ovv)
    for n, c in ctx.items():
        if c > vv.get(n, 0):
            vv[n] = c
    vv[node] = counter
    return Obj(tuple(sorted([*keep, Sibling(Dot(node, counter), value, ts)])), vv)


@props
@given(
    st.none() | history_st,
    st.dictionaries(st.sampled_from(NODES), st.integers(0, 9), max_size=3),
    st.integers(0, len(NODES) - 1),
    st.booleans(),
    st.integers(0, 40),
)
def test_update_is_its_definition_for_every_kind_of_version(
    history: list[tuple[int, bool, int | None]] | None, ctx: dict[str, int], n: int, tomb: bool, floor: int
) -> None:
    bases: list[Obj | None] = [None] if history is None else [read(versions(history)[-1]), built(versions(history)[-1])]
    value = None if tomb else b"new"
    for base in bases:
        got = vc.update(base, ctx, value, NODES[n], 99, floor)
        want = reference_update(base, ctx, value, NODES[n], 99, floor)
        assert got == want
        assert vc.encode(got) == vc.encode(built(want))
        assert vc.context_bytes(got) == vc.encode_context(want.vv)


@props
@given(history_st, st.integers(0, 20), st.integers(0, 20))
def test_sync_of_read_versions_is_sync_of_built_ones(history: list[tuple[int, bool, int | None]], i: int, j: int) -> None:
    vs = versions(history)
    x, y = vs[i % len(vs)], vs[j % len(vs)]
    merged = vc.sync(built(x), built(y))
    assert vc.sync(read(x), read(y)) == merged
    assert vc.sync(read(x), built(y)) == merged
    assert vc.is_stale(read(x), merged) == vc.is_stale(built(x), merged)
    assert (read(x) == read(y)) == (built(x) == built(y))


def test_one_dot_with_two_values_is_refused_by_the_read_path_too() -> None:
    acked = vc.update(vc.update(None, {}, b"base", "b", 1), {}, b"acked", "a", 2)
    other = Obj(
        (Sibling(Dot("a", 1), b"other", 2), Sibling(Dot("b", 1), b"base", 1), Sibling(Dot("c", 1), b"x", 3)),
        {"a": 1, "b": 1, "c": 1},
    )
    for x, y in ((acked, other), (other, acked)):
        with pytest.raises(DotConflict):
            vc.sync(read(x), read(y))
        with pytest.raises(DotConflict):
            vc.sync(built(x), built(y))
