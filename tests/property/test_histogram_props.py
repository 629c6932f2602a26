"""The fixed-bucket histogram against a sorted list of the same values."""

from __future__ import annotations

import math
from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from kvstore.runtime.observe.histogram import (
    LATENCY_BOUNDS_S,
    SIBLING_BOUNDS,
    Histogram,
    diff,
    quantile,
)

values = st.lists(st.floats(min_value=0, max_value=30, allow_nan=False), max_size=300)


@given(values)
def test_counts_and_cumulative_agree_with_the_values(xs: list[float]) -> None:
    h = Histogram(LATENCY_BOUNDS_S)
    for x in xs:
        h.observe(x)
    assert h.count == len(xs)
    assert math.isclose(h.sum, sum(xs), abs_tol=1e-9)
    cum = h.cumulative()
    assert cum[-1] == ("+Inf", len(xs))
    for le, n in cum[:-1]:
        # Prometheus's le is inclusive: everything <= the bound is counted.
        assert n == sum(1 for x in xs if x <= float(le))
    assert [n for _, n in cum] == sorted(n for _, n in cum)


@given(
    st.sampled_from([LATENCY_BOUNDS_S, SIBLING_BOUNDS, (1.0,), (0.5, 2.0)]),
    st.lists(st.floats(min_value=-1, max_value=200, allow_nan=False) | st.integers(-1, 200), max_size=50),
    st.data(),
)
def test_each_value_lands_where_bisect_left_puts_it(
    bounds: tuple[float, ...], xs: list[float], data: st.DataObject
) -> None:
    # The bounds themselves too: a value equal to a bound belongs to that bound's bucket.
    xs = xs + data.draw(st.lists(st.sampled_from(bounds), max_size=10))
    h = Histogram(bounds)
    want = [0] * (len(bounds) + 1)
    for x in xs:
        h.observe(x)
        want[bisect_left(h.bounds, x)] += 1
    assert h.counts == want


@given(values, st.floats(min_value=0.01, max_value=1.0))
def test_quantile_is_the_upper_bound_of_the_bucket_holding_it(xs: list[float], q: float) -> None:
    h = Histogram(LATENCY_BOUNDS_S)
    for x in xs:
        h.observe(x)
    got = quantile(h.bounds, h.counts, q)
    if not xs:
        assert got is None
        return
    assert got is not None
    true = sorted(xs)[max(0, math.ceil(q * len(xs)) - 1)]
    if true <= h.bounds[-1]:
        # Never below the true quantile, and at most one bucket above it.
        assert got >= true
        i = h.bounds.index(got)
        assert i == 0 or h.bounds[i - 1] < true
    else:
        assert got == h.bounds[-1]


@given(values, values)
def test_a_difference_of_snapshots_is_the_histogram_of_what_came_between(a: list[float], b: list[float]) -> None:
    h, only_b = Histogram(LATENCY_BOUNDS_S), Histogram(LATENCY_BOUNDS_S)
    for x in a:
        h.observe(x)
    before = h.snapshot()
    for x in b:
        h.observe(x)
        only_b.observe(x)
    assert diff(h.snapshot(), before) == only_b.counts
