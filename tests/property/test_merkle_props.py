from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core.merkle import MerkleTree, diff, diff_entries, keys_in_buckets

props = settings(deadline=None, max_examples=60)

keys_st = st.binary(min_size=1, max_size=12)
digest_st = st.integers(0, 2**64 - 1)
store_st = st.dictionaries(keys_st, digest_st, max_size=60)
shape_st = st.sampled_from([(2, 3), (4, 2), (32, 2), (3, 3)])
# An edit: set key to a digest, or delete it (None).
edits_st = st.lists(st.tuples(keys_st, st.none() | digest_st), max_size=60)


def apply(tree: MerkleTree, store: dict[bytes, int], key: bytes, new: int | None) -> None:
    tree.update(key, store.get(key), new)
    if new is None:
        store.pop(key, None)
    else:
        store[key] = new


@props
@given(store_st, edits_st, shape_st, st.lists(st.booleans(), max_size=60))
def test_incremental_equals_rebuilt(
    initial: dict[bytes, int],
    edits: list[tuple[bytes, int | None]],
    shape: tuple[int, int],
    peeks: list[bool],
) -> None:
    tree = MerkleTree.from_items(initial.items(), *shape)
    store = dict(initial)
    for i, (k, d) in enumerate(edits):
        apply(tree, store, k, d)
        if i < len(peeks) and peeks[i]:
            tree.root()  # interleave lazy refreshes with writes
    fresh = MerkleTree.from_items(store.items(), *shape)
    assert tree == fresh
    assert tree.root() == fresh.root()
    for level in range(shape[1] + 1):
        n = shape[0] ** level
        assert tree.level_hashes(level, range(n)) == fresh.level_hashes(level, range(n))


@props
@given(store_st, edits_st, shape_st)
def test_diff_finds_exactly_the_differing_keys(
    initial: dict[bytes, int], edits: list[tuple[bytes, int | None]], shape: tuple[int, int]
) -> None:
    a = MerkleTree.from_items(initial.items(), *shape)
    b = MerkleTree.from_items(initial.items(), *shape)
    sa, sb = dict(initial), dict(initial)
    for k, d in edits:
        apply(b, sb, k, d)
    truly = sorted(k for k in sa.keys() | sb.keys() if sa.get(k) != sb.get(k))

    buckets = diff(a, b)
    assert diff(b, a) == buckets
    # Every differing key sits in a reported bucket, and every reported bucket holds one
    # (a bucket differs only if its contents do; 64-bit sums make collisions negligible).
    assert {a.bucket_of(k) for k in truly} == set(buckets)
    ours = {k: sa[k] for k in keys_in_buckets(a, sa, buckets)}
    theirs = {k: sb[k] for k in keys_in_buckets(b, sb, buckets)}
    assert diff_entries(ours, theirs) == truly
    if not truly:
        assert a.root() == b.root()


@props
@given(store_st, shape_st)
def test_identical_trees_have_no_diff(store: dict[bytes, int], shape: tuple[int, int]) -> None:
    a = MerkleTree.from_items(store.items(), *shape)
    b = MerkleTree.from_items(reversed(list(store.items())), *shape)
    assert diff(a, b) == []
    assert a.root() == b.root()


@props
@given(store_st, shape_st)
def test_snapshot_round_trip(store: dict[bytes, int], shape: tuple[int, int]) -> None:
    a = MerkleTree.from_items(store.items(), *shape)
    b = MerkleTree.from_bytes(a.to_bytes())
    assert b == a
    assert b.root() == a.root()
    assert diff(a, b) == []


@settings(deadline=None, max_examples=100)
@given(st.binary(max_size=200))
def test_from_bytes_never_raises_anything_but_invalid_request(raw: bytes) -> None:
    from kvstore.errors import InvalidRequest

    try:
        MerkleTree.from_bytes(raw)
    except InvalidRequest:
        pass
