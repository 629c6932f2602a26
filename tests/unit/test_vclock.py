from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core import vclock as vc
from kvstore.core.vclock import Dot, Obj, Sibling
from kvstore.errors import InvalidRequest


def test_first_write() -> None:
    o = vc.update(None, {}, b"v1", "a", 10)
    assert o.siblings == (Sibling(Dot("a", 1), b"v1", 10),)
    assert o.vv == {"a": 1}
    assert vc.values(o) == [b"v1"]
    assert vc.context_of(o) == {"a": 1}


def test_write_with_read_context_replaces() -> None:
    o = vc.update(None, {}, b"v1", "a", 1)
    o = vc.update(o, vc.context_of(o), b"v2", "a", 2)
    assert vc.values(o) == [b"v2"]
    assert o.vv == {"a": 2}


def test_write_without_context_is_a_sibling() -> None:
    o = vc.update(None, {}, b"v1", "a", 1)
    o = vc.update(o, {}, b"v2", "a", 2)
    assert vc.values(o) == [b"v1", b"v2"]


def test_same_context_two_writers_two_siblings_then_resolved() -> None:
    base = vc.update(None, {}, b"v0", "a", 1)
    ctx = vc.context_of(base)
    x = vc.update(base, ctx, b"x", "a", 2)  # coordinated by a
    y = vc.update(base, ctx, b"y", "b", 3)  # coordinated by b, from the same read
    m = vc.sync(x, y)
    assert m is not None
    assert sorted(vc.values(m)) == [b"x", b"y"]
    # A third writer with the same old context still only adds one.
    z = vc.update(m, ctx, b"z", "a", 4)
    assert sorted(vc.values(z)) == [b"x", b"y", b"z"]
    # A write with the merged context resolves them all.
    r = vc.update(z, vc.context_of(z), b"resolved", "b", 5)
    assert vc.values(r) == [b"resolved"]


def test_context_from_other_replica_covers_dots_not_yet_seen_locally() -> None:
    a = vc.update(None, {}, b"old", "a", 1)
    b_view = vc.update(a, vc.context_of(a), b"new", "a", 2)
    # Node c coordinates with b_view's context but holds nothing yet.
    c = vc.update(None, vc.context_of(b_view), b"newest", "c", 3)
    assert vc.values(vc.sync(c, b_view)) == [b"newest"]  # type: ignore[arg-type]
    assert vc.values(vc.sync(a, c)) == [b"newest"]  # type: ignore[arg-type]


def test_sync_none_and_identity() -> None:
    o = vc.update(None, {}, b"v", "a", 1)
    assert vc.sync(None, None) is None
    assert vc.sync(o, None) is o
    assert vc.sync(None, o) is o
    assert vc.sync(o, o) is o
    assert vc.sync_all([None, o, None]) == o


def test_delete_is_a_versioned_tombstone() -> None:
    o = vc.update(None, {}, b"v", "a", 1)
    d = vc.update(o, vc.context_of(o), None, "b", 2)
    assert vc.values(d) == []
    assert vc.is_deleted(d)
    assert not vc.is_deleted(o)
    assert not vc.is_deleted(None)
    # The tombstone beats the old value wherever they meet.
    assert vc.sync(o, d) == d
    # A concurrent write survives a delete: the delete only covered what it saw.
    w = vc.update(o, {}, b"concurrent", "c", 3)
    m = vc.sync(w, d)
    assert vc.values(m) == [b"concurrent"]
    assert not vc.is_deleted(m)


def test_lww_keeps_greatest_ts_then_dot() -> None:
    base = vc.update(None, {}, b"v0", "a", 1)
    x = vc.update(base, {}, b"late", "a", 100)
    y = vc.update(base, {}, b"early", "b", 50)
    m = vc.sync(x, y)
    assert m is not None
    assert vc.values(vc.lww(m)) == [b"late"]
    assert vc.lww(m).vv == m.vv
    # Equal timestamps: the greater dot wins, on every replica alike.
    p = vc.update(None, {}, b"p", "a", 7)
    q = vc.update(None, {}, b"q", "b", 7)
    pq = vc.sync(p, q)
    assert pq is not None
    assert vc.values(vc.lww(pq)) == [b"q"]
    assert vc.lww(None) is None
    assert vc.lww(p) is p


def test_descends_dominates_concurrent_and_stale() -> None:
    a1 = vc.update(None, {}, b"1", "a", 1)
    a2 = vc.update(a1, vc.context_of(a1), b"2", "a", 2)
    b1 = vc.update(a1, {}, b"b", "b", 3)
    assert vc.descends(a2, a1) and not vc.descends(a1, a2)
    assert vc.dominates(a2, a1) and not vc.dominates(a1, a1)
    assert vc.concurrent(a2, b1)
    assert vc.descends(a1, None) and not vc.descends(None, a1)
    merged = vc.sync(a2, b1)
    assert vc.is_stale(a2, merged) and vc.is_stale(b1, merged) and vc.is_stale(None, merged)
    assert not vc.is_stale(merged, merged)
    assert not vc.is_stale(a1, None)


def test_digest_is_stable_and_state_sensitive() -> None:
    o = vc.update(None, {}, b"v", "a", 1)
    assert vc.digest(o) == vc.digest(vc.decode(vc.encode(o)))
    # Pinned: the digest must not depend on the Python process (no hash() randomisation).
    assert vc.digest(o) == vc.digest(Obj((Sibling(Dot("a", 1), b"v", 1),), {"a": 1}))
    assert 0 <= vc.digest(o) < 2**64
    p = vc.update(None, {}, b"w", "a", 1)
    assert vc.digest(o) != vc.digest(p)
    # Same siblings, different vector: different state, different digest.
    assert vc.digest(o) != vc.digest(Obj(o.siblings, {"a": 1, "b": 4}))
    t = vc.update(None, {}, None, "a", 1)
    e = vc.update(None, {}, b"", "a", 1)
    assert vc.digest(t) != vc.digest(e)
    # Sibling order does not matter.
    m = vc.sync(vc.update(None, {}, b"x", "a", 1), vc.update(None, {}, b"y", "b", 1))
    assert m is not None
    assert vc.digest(m) == vc.digest(Obj(tuple(reversed(m.siblings)), m.vv))


def test_obj_is_hashable_and_comparable() -> None:
    o = vc.update(None, {}, b"v", "a", 1)
    assert hash(o) == hash(vc.decode(vc.encode(o)))
    assert {o, vc.decode(vc.encode(o))} == {o}


def test_encode_round_trip_and_compactness() -> None:
    o = None
    for i in range(5):
        o = vc.update(o, {}, b"v%d" % i, "node-with-a-long-name:7000", i)
    assert o is not None
    o = vc.update(o, {}, None, "other:7000", 9)
    assert vc.decode(vc.encode(o)) == o
    # The node name is written once, however many siblings carry it.
    assert vc.encode(o).count(b"node-with-a-long-name:7000") == 1


def test_context_round_trip() -> None:
    assert vc.encode_context({}) == b""
    assert vc.decode_context(b"") == {}
    ctx = {"b": 3, "a": 1}
    assert vc.decode_context(vc.encode_context(ctx)) == ctx
    assert vc.encode_context(ctx) == vc.encode_context({"a": 1, "b": 3})


@pytest.mark.parametrize(
    "bad",
    [
        b"\xc1",
        b"garbage",
        msgpack.packb([1, "a"]),
        msgpack.packb([1, "a", 0]),
        msgpack.packb([1, "a", -1]),
        msgpack.packb([1, "a", 1.5]),
        msgpack.packb([1, "a", True]),
        msgpack.packb([1, "a", 2**62]),
        msgpack.packb([1, "", 1]),
        msgpack.packb([1, "a", 1, "a", 2]),
        msgpack.packb([2, "a", 1]),
        msgpack.packb([True, "a", 1]),
        msgpack.packb({"a": 1}),
        msgpack.packb([]),
        msgpack.packb([1, "x" * 300, 1]),
        msgpack.packb([1, *([f"n{i}", 1][j] for i in range(2000) for j in (0, 1))]),
        msgpack.packb([1, "a", 1]) + b"\x00",
    ],
)
def test_malformed_context(bad: bytes) -> None:
    with pytest.raises(InvalidRequest, match="malformed context"):
        vc.decode_context(bad)


@pytest.mark.parametrize("c", [2**62 - 1, 2**62, 2**63 - 1])
def test_record_counters_up_to_the_bound_decode_on_both_paths(c: int) -> None:
    # Either side of the largest int a compiled module holds unboxed (2**62 - 1), where the
    # bound checks change from a native compare to Python's: one writer, then two.
    one = msgpack.packb([1, ["a"], [c], [0, c, 5, b"v"]])
    assert vc.decode(one).vv == {"a": c}
    two = msgpack.packb([1, ["a", "b"], [c, c], [0, c, 5, b"v", 1, c, 6, b"w"]])
    assert vc.values(vc.decode(two)) == [b"v", b"w"]


@pytest.mark.parametrize("c", [2**63, 2**64 - 1])
def test_record_counters_past_the_bound_are_refused_on_both_paths(c: int) -> None:
    with pytest.raises(InvalidRequest, match="malformed record"):
        vc.decode(msgpack.packb([1, ["a"], [c], [0, 1, 5, b"v"]]))
    with pytest.raises(InvalidRequest, match="malformed record"):
        vc.decode(msgpack.packb([1, ["a", "b"], [c, 1], [0, 1, 5, b"v", 1, 1, 6, b"w"]]))


def test_context_counter_just_under_its_bound_decodes() -> None:
    assert vc.decode_context(msgpack.packb([1, "a", 2**62 - 1])) == {"a": 2**62 - 1}


def test_context_must_be_bytes() -> None:
    with pytest.raises(InvalidRequest):
        vc.decode_context("abc")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        vc.decode_context(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, ["a"], [1], [0, 1, 5]]),
        msgpack.packb([1, ["a"], [1], [1, 1, 5, b"v"]]),
        msgpack.packb([1, ["a"], [1], [0, 2, 5, b"v"]]),
        msgpack.packb([1, ["a"], [1], [0, 1, 5, "str"]]),
        msgpack.packb([1, ["a"], [1], [0, 1, 5.0, b"v"]]),
        msgpack.packb([1, ["a"], [1], [0, 1, 5, b"v", 0, 1, 5, b"v"]]),
        msgpack.packb([1, ["a", "a"], [1, 1], []]),
        msgpack.packb([1, ["a"], [1, 2], []]),
        msgpack.packb([1, [1], [1], []]),
        msgpack.packb([9, ["a"], [1], []]),
        msgpack.packb([1, ["a"], [0], []]),
        msgpack.packb({"x": 1}),
        # Bools are ints to Python but never a counter, index or timestamp (multi-sibling path).
        msgpack.packb([1, ["a", "b"], [2, 2], [0, True, 5, b"x", 1, 1, 5, b"y"]]),
        msgpack.packb([1, ["a", "b"], [2, 2], [True, 1, 5, b"x", 1, 1, 5, b"y"]]),
        msgpack.packb([1, ["a", "b"], [2, 2], [0, 1, False, b"x", 1, 1, 5, b"y"]]),
        msgpack.packb([1, ["a", "b"], [True, 2], [0, 1, 5, b"x", 1, 1, 5, b"y"]]),
        msgpack.packb([1, ["a", "b"], [1, 1], [0, 1, 5, b"x", 2, 1, 5, b"y"]]),
        msgpack.packb([1, ["a", "b"], [1, 1], [0, 1, 5, b"x", 1, 2, 5, b"y"]]),
    ],
)
def test_corrupt_record_raises_clean_error(bad: bytes) -> None:
    with pytest.raises(InvalidRequest, match="malformed record"):
        vc.decode(bad)


def test_decode_sorts_siblings() -> None:
    raw = msgpack.packb([1, ["a", "b"], [1, 1], [1, 1, 5, b"y", 0, 1, 5, b"x"]])
    o = vc.decode(raw)
    assert [s.dot for s in o.siblings] == [Dot("a", 1), Dot("b", 1)]


def test_an_unsorted_node_table_is_read_but_not_canonical() -> None:
    # Dots are ordered by node index only when the node table is sorted (as encode writes it).
    raw = msgpack.packb([1, ["b", "a"], [1, 1], [0, 1, 5, b"x", 1, 1, 5, b"y"]])
    o = vc.decode(raw)
    assert [s.dot for s in o.siblings] == [Dot("a", 1), Dot("b", 1)]
    assert o.vv == {"a": 1, "b": 1}
    with pytest.raises(InvalidRequest, match="canonical"):
        vc.decode(raw, canonical=True)
    assert vc.decode(vc.encode(o), canonical=True) == o


def test_a_record_without_writes_reads_with_the_empty_context() -> None:
    # A read version's context comes from its node table: none at all must still be b"".
    o = vc.decode(msgpack.packb([1, [], [], []]))
    assert vc.context_bytes(o) == vc.encode_context(o.vv) == b""
    assert vc.values(o) == [] and not vc.is_deleted(o)


def test_new_dot_is_beyond_the_context_even_without_local_state() -> None:
    # A coordinator that lost its copy must not mint a dot the context already covers,
    # or the new value would look overwritten the moment it met the old one.
    o = vc.update(None, {"a": 3, "b": 1}, b"v", "a", 1)
    assert o.siblings[0].dot == Dot("a", 4)
    assert o.vv == {"a": 4, "b": 1}
    older = vc.update(None, {}, b"x", "a", 0)
    o2 = vc.update(older, {"a": 7}, b"y", "a", 2)
    assert o2.siblings[0].dot == Dot("a", 8)
    assert vc.values(o2) == [b"y"]


def test_a_dot_minted_twice_with_different_values_is_refused_not_picked() -> None:
    from kvstore.errors import DotConflict

    a = vc.update(None, {}, b"acked", "n1~e", 1)
    b = vc.update(None, {}, b"other", "n1~e", 2)  # the same dot (n1~e, 1), another value
    assert a.siblings[0].dot == b.siblings[0].dot
    with pytest.raises(DotConflict):
        vc.sync(a, b)
    with pytest.raises(DotConflict):
        vc.sync(b, a)
    assert vc.sync(a, a) == a


def test_the_counter_floor_keeps_a_blind_write_after_collection_out_of_an_old_tombstone() -> None:
    """KV679: the coordinator forgot the key (its tombstone was collected) but an old copy of
    the tombstone survived elsewhere; the new blind write must not be covered by it."""
    v1 = vc.update(None, {}, b"v1", "n1~e", 1)
    tomb = vc.update(v1, vc.context_of(v1), None, "n1~e", 2)
    floor = tomb.vv["n1~e"]  # the highest counter n1~e ever minted
    without = vc.update(None, {}, b"v2", "n1~e", 3)
    assert vc.values(vc.sync(tomb, without)) == []  # the old bug: the write vanishes
    v2 = vc.update(None, {}, b"v2", "n1~e", 3, floor)
    assert vc.values(vc.sync(tomb, v2)) == [b"v2"]
    assert vc.values(vc.sync(v2, tomb)) == [b"v2"]


def test_encode_one_writer_one_sibling_is_the_documented_layout() -> None:
    # encode's short path for the usual record must write the same bytes as the layout.
    obj = Obj((Sibling(Dot("~a", 3), b"v", 7),), {"~a": 3})
    assert vc.encode(obj) == msgpack.packb([1, ["~a"], [3], [0, 3, 7, b"v"]], use_bin_type=True)
    assert vc.decode(vc.encode(obj), canonical=True) == obj


def test_encode_is_canonical_for_siblings_out_of_order() -> None:
    a, b = Sibling(Dot("~a", 1), b"x", 1), Sibling(Dot("~a", 2), b"y", 2)
    vv = {"~a": 2}
    assert vc.encode(Obj((b, a), vv)) == vc.encode(Obj((a, b), vv))
    assert vc.decode(vc.encode(Obj((b, a), vv)), canonical=True) == Obj((a, b), vv)
    # With expiries too: each expiry follows its own sibling.
    ea, eb = a._replace(expires=10), b._replace(expires=20)
    assert vc.decode(vc.encode(Obj((eb, ea), vv))) == Obj((ea, eb), vv)


@st.composite
def _replica_states(draw: st.DrawFn) -> tuple[Obj | None, Obj | None]:
    """Two replicas' states of one key after random writes (each with the context of some
    replica's earlier state, or none) and random merges between three replicas."""
    reps: list[Obj | None] = [None, None, None]
    seen: list[Obj | None] = [None]
    counters = {"~a": 0, "~b": 0}
    for _ in range(draw(st.integers(1, 12))):
        i = draw(st.integers(0, 2))
        if draw(st.booleans()):
            node = draw(st.sampled_from(sorted(counters)))
            ctx = vc.context_of(draw(st.sampled_from(seen)))
            value = draw(st.sampled_from([b"x", b"y", None]))
            new = vc.update(reps[i], ctx, value, node, 1, counters[node])
            counters[node] = new.vv[node]
            reps[i] = new
        else:
            reps[i] = vc.sync(reps[i], reps[draw(st.integers(0, 2))])
        seen.append(reps[i])
    return reps[draw(st.integers(0, 2))], reps[draw(st.integers(0, 2))]


@settings(max_examples=300, deadline=None)
@given(_replica_states())
def test_sync_shortcut_is_the_general_merge(pair: tuple[Obj | None, Obj | None]) -> None:
    a, b = pair
    if a is None or b is None:
        return
    assert vc.sync(a, b) == vc._sync_general(a, b)
    assert vc.sync(b, a) == vc._sync_general(b, a)
    assert vc.sync(a, b) == vc.sync(b, a)
    assert vc.decode(vc.encode(vc.sync(a, b)), canonical=True) == vc.sync(a, b)
