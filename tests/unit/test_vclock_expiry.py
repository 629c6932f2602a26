"""Expiry (TTL) in vclock records: additive to the layout, carried through merges, and
filtered at read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.core import vclock as vc
from kvstore.core.vclock import Dot
from kvstore.errors import InvalidRequest


def expiring(value: bytes, at: int, node: str = "a", obj: vc.Obj | None = None, ctx: dict[str, int] | None = None) -> vc.Obj:
    new = vc.update(obj, ctx or {}, value, node, 1)
    return vc.with_expiry(new, Dot(node, new.vv[node]), at)


def test_a_record_without_expiry_is_encoded_as_before() -> None:
    o = vc.update(None, {}, b"v", "a", 7)
    rec = vc.encode(o)
    assert rec[0] == 0x94 and not vc.has_expiry(rec)
    assert vc.decode(rec) == o and vc.decode(rec).siblings[0].expires == 0


def test_expiry_round_trips_and_is_filtered_at_read() -> None:
    o = expiring(b"v", 1000)
    o = vc.update(o, {}, b"forever", "b", 2)
    rec = vc.encode(o)
    assert vc.has_expiry(rec)
    back = vc.decode(rec)
    assert back == o and [s.expires for s in back.siblings] == [1000, 0]
    assert vc.values_at(back, 999) == [b"v", b"forever"]
    assert vc.values_at(back, 1000) == [b"forever"]
    assert vc.values_at(back, 0) == vc.values(back)  # 0: no filtering
    assert vc.next_expiry(back) == 1000


def test_digest_and_summary_agree_with_and_without_expiry() -> None:
    o = expiring(b"v", 5)
    digest, tomb = vc.record_summary(vc.encode(o))
    assert digest == vc.digest(o) and tomb is None


def test_a_context_write_replaces_an_expiring_value_and_the_expiry_goes_with_it() -> None:
    o = expiring(b"v", 5)
    o2 = vc.update(o, vc.context_of(o), b"new", "a", 2)
    assert vc.next_expiry(o2) == 0 and not vc.has_expiry(vc.encode(o2))


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3)), min_size=1, max_size=6))
def test_merges_keep_each_siblings_expiry(writes: list[tuple[str, int]]) -> None:
    objs = []
    for i, (node, at) in enumerate(writes):
        new = vc.update(None, {}, f"v{i}".encode(), f"{node}{i}", i)
        objs.append(vc.with_expiry(new, Dot(f"{node}{i}", 1), at) if at else new)
    merged = vc.sync_all(objs)
    assert merged is not None
    want = {s.dot: s.expires for o in objs for s in o.siblings}
    assert {s.dot: s.expires for s in merged.siblings} == want
    assert vc.decode(vc.encode(merged)) == merged


def test_malformed_expiries_are_refused() -> None:
    import msgpack

    rec = msgpack.unpackb(vc.encode(expiring(b"v", 5)), raw=False)
    for bad in ([], [-1], ["x"], [1, 2]):
        with pytest.raises(InvalidRequest, match="malformed record"):
            vc.decode(msgpack.packb([*rec[:4], bad], use_bin_type=True))


def test_an_expiring_record_is_canonical_and_its_hash_is_its_digest() -> None:
    o = vc.update(expiring(b"x", 9, node="b"), {}, b"y", "a", 3)  # siblings a:1 (no expiry), b:1
    rec = vc.encode(o)
    assert vc.decode(rec, canonical=True) == o
    assert vc.record_digest(rec) == vc.digest(o) == vc.record_summary(rec)[0]
    # Expiries travel with their sibling, whatever order the siblings were encoded in.
    import msgpack

    d = msgpack.unpackb(rec, raw=False)
    flat = d[3]
    swapped = [*flat[4:], *flat[:4]]
    back = vc.decode(msgpack.packb([d[0], d[1], d[2], swapped, list(reversed(d[4]))], use_bin_type=True))
    assert back == o
