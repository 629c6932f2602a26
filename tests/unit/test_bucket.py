"""kvstore.core.bucket: properties and their validation, the registry document's merge,
storage keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.config import Settings
from kvstore.core import bucket as bk
from kvstore.core import messages as m
from kvstore.core.bucket import BucketProps, Entry
from kvstore.errors import InvalidRequest

LIMITS = Settings().limits
DEFAULT = bk.default_props(LIMITS, 2, 2, "siblings")


def test_the_default_bucket_is_the_cluster_settings() -> None:
    assert (DEFAULT.name, DEFAULT.n, DEFAULT.r, DEFAULT.w, DEFAULT.conflict) == ("default", 3, 2, 2, "siblings")
    assert (DEFAULT.ttl_s, DEFAULT.datatype) == (0.0, "none")
    assert DEFAULT.limits(LIMITS) == LIMITS


def test_new_props_take_the_base_and_follow_a_smaller_n() -> None:
    p = bk.validate(bk.new_props("b", {"n": "1"}, DEFAULT), LIMITS)
    assert (p.n, p.r, p.w) == (1, 1, 1)
    p = bk.validate(bk.new_props("b", {"conflict": "lww", "ttl_s": "60"}, DEFAULT), LIMITS)
    assert p.lww and p.ttl_s == 60.0 and p.n == 3
    p = bk.validate(bk.new_props("b", {"datatype": "counter"}, DEFAULT), LIMITS)
    assert p.datatype == "counter" and not p.lww


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n": 4}, "n must be in 1..3"),
        ({"n": 0}, "n must be in 1..3"),
        ({"n": 2, "r": 3}, "r must be in 1..n"),
        ({"w": 0}, "w must be in 1..n"),
        ({"conflict": "newest"}, "conflict must be one of"),
        ({"datatype": "list"}, "datatype must be one of"),
        ({"datatype": "set", "conflict": "lww"}, "needs conflict = siblings"),
        ({"max_siblings": 1000}, "max_siblings must be in 1..100"),
        ({"max_record_bytes": 10}, "max_record_bytes must be in"),
        ({"ttl_s": -1}, "ttl_s must be in"),
        ({"n": "two"}, "must be int"),
        ({"n": 1.5}, "must be int"),
        ({"colour": "red"}, "unknown bucket property"),
    ],
)
def test_bad_properties_are_refused_with_what_is_wrong(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        bk.validate(bk.new_props("b", changes, DEFAULT), LIMITS)


def test_the_limits_of_a_bucket_are_the_clusters_with_its_bounds() -> None:
    p = bk.validate(bk.new_props("b", {"max_siblings": 5, "max_record_bytes": 2 * 1024 * 1024, "n": 2}, DEFAULT), LIMITS)
    lim = p.limits(LIMITS)
    assert (lim.max_siblings, lim.max_record_bytes, lim.n_replicas) == (5, 2 * 1024 * 1024, 2)
    assert lim.warn_siblings == 5 and lim.max_key_bytes == LIMITS.max_key_bytes


@pytest.mark.parametrize("name", ["", "a/b", "-x", "x" * 65, "é", "a b", 3])
def test_bad_names(name: object) -> None:
    with pytest.raises(InvalidRequest, match="bad bucket name"):
        bk.check_name(name)


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)


@given(names, st.binary(min_size=1, max_size=64))
def test_storage_keys_round_trip_and_never_meet_the_default_bucket(name: str, key: bytes) -> None:
    sk = bk.storage_key(name, key)
    assert bk.split_storage_key(sk) == ((name, key) if name != "default" else ("default", key))
    if name != "default":
        # What a default-bucket key may not be: check_key refuses it.
        with pytest.raises(InvalidRequest, match="reserved"):
            m.check_key(sk, LIMITS)
    assert bk.storage_key(None, key) == key


@given(names, names, st.binary(min_size=1, max_size=8), st.binary(min_size=1, max_size=8))
def test_storage_keys_of_different_buckets_differ(a: str, b: str, ka: bytes, kb: bytes) -> None:
    if (a, ka) != (b, kb) and "default" not in (a, b):
        assert bk.storage_key(a, ka) != bk.storage_key(b, kb)


def entries() -> st.SearchStrategy[dict[str, Entry]]:
    entry = st.builds(
        lambda name, n, counter, node: Entry(BucketProps(name, n, 1, 1), counter, node),
        st.sampled_from(["a", "b", "c"]), st.integers(1, 3), st.integers(1, 5), st.sampled_from(["n1", "n2"]),
    )
    return st.lists(entry, max_size=4).map(lambda es: {e.props.name: e for e in es})


@given(entries(), entries(), entries())
def test_merge_is_commutative_associative_and_idempotent(x: dict[str, Entry], y: dict[str, Entry], z: dict[str, Entry]) -> None:
    def same(p: dict[str, Entry], q: dict[str, Entry]) -> bool:
        return {k: v.version for k, v in p.items()} == {k: v.version for k, v in q.items()}

    assert same(bk.merge(x, y), bk.merge(y, x))
    assert same(bk.merge(bk.merge(x, y), z), bk.merge(x, bk.merge(y, z)))
    assert bk.merge(x, x) == x
    for name, e in bk.merge(x, y).items():
        assert e.version == max(d[name].version for d in (x, y) if name in d)


@given(entries())
def test_the_document_round_trips_on_the_wire_and_digests_equal_documents_equally(doc: dict[str, Entry]) -> None:
    back = bk.doc_from_wire(bk.doc_to_wire(doc))
    assert back == doc
    assert bk.digest(back) == bk.digest(doc)


def test_a_wire_document_is_checked() -> None:
    with pytest.raises(InvalidRequest):
        bk.doc_from_wire([1, 2])
    with pytest.raises(InvalidRequest):
        bk.doc_from_wire({"a": [{"name": "b", "n": 1, "r": 1, "w": 1}, 1, "n1"]})
    with pytest.raises(InvalidRequest):
        bk.doc_from_wire({"a": [{"name": "a", "n": 1, "r": 1, "w": 1}, 0, "n1"]})
