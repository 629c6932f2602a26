"""Dot and Sibling behave as the tuples they replaced: equal and hashed by value, ordered by
``(node, counter)`` then the rest, which is what sorting versions, dict keys of dots and the
canonical encoding rely on (they are native classes under mypyc, NamedTuples before)."""

from __future__ import annotations

import operator

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core import vclock as vc
from kvstore.core.vclock import Dot, Sibling

props = settings(deadline=None, max_examples=200)
dot_st = st.tuples(st.sampled_from(["a", "b", "~x1", "~x10", "n1:7000"]), st.integers(1, 6))
sib_st = st.tuples(dot_st, st.one_of(st.none(), st.binary(max_size=3)), st.integers(0, 3), st.integers(0, 2))


def _sib(t: tuple[tuple[str, int], bytes | None, int, int]) -> Sibling:
    (n, c), value, ts, expires = t
    return Sibling(Dot(n, c), value, ts, expires)


@props
@given(dot_st, dot_st)
def test_dots_compare_hash_and_order_as_their_tuples(x: tuple[str, int], y: tuple[str, int]) -> None:
    a, b = Dot(*x), Dot(*y)
    assert (a == b) == (x == y) and (a != b) == (x != y)
    assert (a < b, a <= b, a > b, a >= b) == (x < y, x <= y, x > y, x >= y)
    if a == b:
        assert hash(a) == hash(b)
    assert len({a, b}) == len({x, y})


@props
@given(st.lists(sib_st, max_size=6, unique_by=lambda t: t[0]))
def test_siblings_sort_by_dot_and_compare_by_value(ts: list[tuple[tuple[str, int], bytes | None, int, int]]) -> None:
    sibs = [_sib(t) for t in ts]
    assert [(s.dot.node, s.dot.counter) for s in sorted(sibs)] == sorted(t[0] for t in ts)
    for s, t in zip(sibs, ts, strict=True):
        twin = _sib(t)
        assert s == twin and operator.ne(s, twin) is False and hash(s) == hash(twin) and s <= twin and s >= twin
        assert s._replace(expires=t[3] + 1) != s and s._replace(expires=t[3] + 1).expires == t[3] + 1


@props
@given(st.lists(sib_st, min_size=1, max_size=6, unique_by=lambda t: t[0]))
def test_a_version_round_trips_and_equal_versions_hash_alike(ts: list[tuple[tuple[str, int], bytes | None, int, int]]) -> None:
    sibs = tuple(sorted(_sib(t) for t in ts))
    vv: dict[str, int] = {}
    for s in sibs:
        vv[s.dot.node] = max(vv.get(s.dot.node, 0), s.dot.counter)
    obj = vc.Obj(sibs, vv)
    again = vc.decode(vc.encode(obj), canonical=True)
    assert again == obj and hash(again) == hash(obj) and vc.digest(again) == vc.digest(obj)
