"""ClusterView's placement cache answers exactly what the ring does, and follows ring changes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core.ring import Ring, claim, partition_of
from kvstore.runtime.cluster import ClusterView
from storage.engine import Engine


def _check(view: ClusterView, ring: Ring, keys: list[bytes]) -> None:
    for key in keys:
        p, pref = view.locate(ring, key)
        assert p == partition_of(key, ring.partitions)
        assert pref == ring.preference_list(p, view.n)
        if ring is view.ring:
            assert view.read_preference(p) == pref
        assert view.fallbacks(ring, p) == ring.fallbacks(p, view.n)


@settings(max_examples=25, deadline=None)
@given(keys=st.lists(st.binary(min_size=1, max_size=32), min_size=1, max_size=20), n=st.integers(1, 4))
def test_placement_matches_the_ring_across_ring_changes(
    tmp_path_factory: pytest.TempPathFactory, keys: list[bytes], n: int
) -> None:
    path = tmp_path_factory.mktemp("view") / "db"
    engine = Engine.open(str(path))
    try:
        view = ClusterView("a", "127.0.0.1:1", engine, n)
        first = claim(["a", "b", "c"], 16)
        view.ring = first
        _check(view, first, keys)
        # A new ring (a join, a different size): the cache is the new ring's, not the old.
        second = claim(["a", "b", "c", "d", "e"], 32, prev=None)
        view.ring = second
        _check(view, second, keys)
        # A ring other than the current one (a request that began before the change).
        _check(view, first, keys)
    finally:
        engine.close_sync()
