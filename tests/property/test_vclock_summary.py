"""The fast record summary agrees with digest(decode(...)) on every record."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core import vclock

NODES = st.sampled_from(["a", "b~1f", "node-3"])


@st.composite
def objects(draw: st.DrawFn) -> vclock.Obj:
    obj: vclock.Obj | None = None
    for _ in range(draw(st.integers(1, 6))):
        value = draw(st.one_of(st.none(), st.binary(max_size=20)))
        ctx = vclock.context_of(obj) if obj is not None and draw(st.booleans()) else {}
        new = vclock.update(obj, ctx, value, draw(NODES), draw(st.integers(0, 2**40)))
        obj = vclock.sync(obj, new) if draw(st.booleans()) else new
    assert obj is not None
    return obj


@settings(max_examples=300, deadline=None)
@given(objects())
def test_record_summary_matches_full_decode(obj: vclock.Obj) -> None:
    rec = vclock.encode(obj)
    digest, tomb = vclock.record_summary(rec)
    assert digest == vclock.digest(obj)
    if vclock.is_deleted(obj):
        assert tomb == max(s.ts for s in obj.siblings)
    else:
        assert tomb is None


def test_record_summary_of_garbage_raises_the_decode_error() -> None:
    import pytest

    from kvstore.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        vclock.record_summary(b"\xc1 not msgpack")
