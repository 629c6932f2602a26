from __future__ import annotations

import pytest
import xxhash

from kvstore.core import vclock as vc
from kvstore.core.merkle import (
    MerkleTree,
    diff,
    diff_entries,
    item_hash,
    keys_in_buckets,
)
from kvstore.errors import ConfigError, InvalidRequest


def test_empty_tree() -> None:
    t = MerkleTree()
    assert t.leaves == 1024
    assert t.root() == 0
    assert diff(t, MerkleTree()) == []


def test_insert_then_remove_returns_to_empty() -> None:
    t = MerkleTree()
    t.update(b"k", None, 5)
    assert t.root() != 0
    t.update(b"k", 5, None)
    assert t.root() == 0
    assert t == MerkleTree()


def test_update_touches_one_leaf() -> None:
    t = MerkleTree(fanout=4, depth=3)
    before = t.level_hashes(3, range(64))
    t.update(b"key", None, 42)
    after = t.level_hashes(3, range(64))
    changed = [i for i in range(64) if before[i] != after[i]]
    assert changed == [t.bucket_of(b"key")]
    assert after[t.bucket_of(b"key")] == item_hash(b"key", 42)


def test_bucket_uses_low_bits_not_the_partition_bits() -> None:
    t = MerkleTree()
    assert t.bucket_of(b"abc") == xxhash.xxh3_64_intdigest(b"abc") % 1024
    # Keys of one partition (same top bits) still spread over the buckets.
    keys = [str(i).encode() for i in range(20000)]
    same_partition = [k for k in keys if xxhash.xxh3_64_intdigest(k) >> 60 == 3]
    assert len({t.bucket_of(k) for k in same_partition}) > 600


def test_order_of_updates_does_not_matter() -> None:
    a, b = MerkleTree(), MerkleTree()
    items = [(b"k%d" % i, i * 7919) for i in range(200)]
    for k, d in items:
        a.update(k, None, d)
    for k, d in reversed(items):
        b.update(k, None, d)
    assert a.root() == b.root()
    assert a == b


def test_same_digest_update_is_a_no_op() -> None:
    t = MerkleTree()
    t.update(b"k", None, 1)
    r = t.root()
    t.update(b"k", 1, 1)
    assert t.root() == r


def test_diff_finds_the_changed_key() -> None:
    items = {b"k%d" % i: i for i in range(500)}
    a = MerkleTree.from_items(items.items())
    b = MerkleTree.from_items(items.items())
    assert diff(a, b) == []
    b.update(b"k42", 42, 4242)
    buckets = diff(a, b)
    assert buckets == [a.bucket_of(b"k42")]
    ours = {k: d for k, d in items.items() if a.bucket_of(k) in buckets}
    theirs = dict(ours)
    theirs[b"k42"] = 4242
    assert diff_entries(ours, theirs) == [b"k42"]
    assert list(keys_in_buckets(a, items, buckets)) == sorted(ours, key=list(items).index)


def test_protocol_step_by_step() -> None:
    a, b = MerkleTree(fanout=4, depth=2), MerkleTree(fanout=4, depth=2)
    b.update(b"x", None, 1)
    bucket = b.bucket_of(b"x")
    step1 = a.differing_children(0, [0], b.level_hashes(0, [0]))
    assert step1 == [0, 1, 2, 3]
    step2 = a.differing_children(1, step1, b.level_hashes(1, step1))
    assert step2 == list(a.children(1, bucket // 4))
    step3 = a.differing_children(2, step2, b.level_hashes(2, step2))
    assert step3 == [bucket]
    assert a.children(2, 0) == range(0)


def test_differing_children_validates_peer_input() -> None:
    t = MerkleTree(fanout=4, depth=2)
    with pytest.raises(InvalidRequest):
        t.differing_children(0, [0], [1, 2])
    with pytest.raises(InvalidRequest):
        t.level_hashes(3, [0])
    with pytest.raises(InvalidRequest):
        t.level_hashes(1, [4])
    with pytest.raises(InvalidRequest):
        t.level_hashes(1, [-1])
    with pytest.raises(InvalidRequest):
        t.level_hashes(True, [0])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        diff(t, MerkleTree())


def test_bad_shapes() -> None:
    for f, d in ((1, 2), (32, 0), (2, 21), (True, 2)):
        with pytest.raises(ConfigError):
            MerkleTree(f, d)  # type: ignore[arg-type]


def test_snapshot_round_trip() -> None:
    t = MerkleTree.from_items((b"k%d" % i, i) for i in range(100))
    raw = t.to_bytes()
    back = MerkleTree.from_bytes(raw)
    assert back == t
    assert back.root() == t.root()
    assert back.level_hashes(1, range(32)) == t.level_hashes(1, range(32))
    assert len(raw) == 16 + 8 * 1024


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:10],
        lambda b: b[:-1],
        lambda b: b + b"\x00",
        lambda b: b"XXXX" + b[4:],
        lambda b: b[:4] + b"\x09" + b[5:],
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),
        lambda b: b[:5] + b"\x01\x00" + b[7:],
        lambda b: b"",
    ],
)
def test_snapshot_corruption_is_detected(mangle: object) -> None:
    raw = MerkleTree.from_items([(b"a", 1)]).to_bytes()
    with pytest.raises(InvalidRequest):
        MerkleTree.from_bytes(mangle(raw))  # type: ignore[operator]


def test_with_real_vclock_digests() -> None:
    o1 = vc.update(None, {}, b"v1", "a", 1)
    o2 = vc.update(o1, vc.context_of(o1), b"v2", "b", 2)
    a, b = MerkleTree(), MerkleTree()
    a.update(b"key", None, vc.digest(o1))
    b.update(b"key", None, vc.digest(o1))
    assert diff(a, b) == []
    b.update(b"key", vc.digest(o1), vc.digest(o2))
    assert diff(a, b) == [a.bucket_of(b"key")]
    a.update(b"key", vc.digest(o1), vc.digest(vc.decode(vc.encode(o2))))
    assert diff(a, b) == []


def test_diff_entries() -> None:
    assert diff_entries({}, {}) == []
    assert diff_entries({b"a": 1, b"b": 2}, {b"b": 2, b"c": 3}) == [b"a", b"c"]
    assert diff_entries({b"a": 1}, {b"a": 2}) == [b"a"]


def test_tree_is_not_hashable_but_comparable() -> None:
    t = MerkleTree()
    with pytest.raises(TypeError):
        hash(t)
    assert t != MerkleTree(fanout=4, depth=5)
    assert t != "tree"
    assert "root=0x0" in repr(t)
