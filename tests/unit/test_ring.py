from __future__ import annotations

import collections

import msgpack
import pytest
import xxhash

from kvstore.core.ring import Ring, claim, crowded_partitions, partition_of
from kvstore.errors import ConfigError, InvalidRequest

NODES = ["a", "b", "c", "d"]


def test_partition_of_uses_top_bits_of_xxh3() -> None:
    h = xxhash.xxh3_64_intdigest(b"hello")
    assert partition_of(b"hello", 256) == h >> 56
    assert partition_of(b"hello", 1024) == h >> 54
    assert partition_of(b"hello", 1) == 0
    assert partition_of(b"hello", 2) == h >> 63


def test_partition_of_ranges_are_contiguous() -> None:
    # Partition p covers hashes [p * 2^64/Q, (p+1) * 2^64/Q): ordering by hash orders partitions.
    keys = [str(i).encode() for i in range(2000)]
    by_hash = sorted(keys, key=xxhash.xxh3_64_intdigest)
    parts = [partition_of(k, 64) for k in by_hash]
    assert parts == sorted(parts)


def test_partition_of_spreads_keys() -> None:
    counts = collections.Counter(partition_of(str(i).encode(), 16) for i in range(16000))
    assert len(counts) == 16
    assert max(counts.values()) < 1.2 * 1000


def test_ring_method_matches_function() -> None:
    ring = claim(NODES, 64)
    for i in range(100):
        k = f"k{i}".encode()
        assert ring.partition_of(k) == partition_of(k, 64)
        assert ring.key_preference_list(k, 3) == ring.preference_list(partition_of(k, 64), 3)


def test_claim_fresh_is_round_robin_like_and_balanced() -> None:
    ring = claim(NODES, 16)
    assert ring.version == 1
    assert ring.members == ("a", "b", "c", "d")
    assert collections.Counter(ring.owners) == {"a": 4, "b": 4, "c": 4, "d": 4}
    assert crowded_partitions(ring) == 0
    assert ring.owned_by("a") == [p for p, o in enumerate(ring.owners) if o == "a"]


def test_claim_needs_members_and_power_of_two() -> None:
    with pytest.raises(ConfigError, match="at least one member"):
        claim([], 64)
    with pytest.raises(ConfigError, match="power of two"):
        claim(["a"], 48)
    with pytest.raises(ConfigError, match="power of two"):
        claim(["a"], 0)
    with pytest.raises(ConfigError, match="fixed"):
        claim(["a"], 32, claim(["a"], 64))


def test_claim_version_and_determinism() -> None:
    r1 = claim(["c", "a", "b"], 64)
    r2 = claim(iter(["b", "c", "a", "a"]), 64)
    assert r1 == r2
    assert r1.checksum == r2.checksum
    r3 = claim(["a", "b", "c", "d"], 64, r1)
    assert r3.version == 2
    assert claim(["a", "b", "c", "d"], 64, r3).version == 3


def test_claim_same_members_moves_nothing() -> None:
    r1 = claim(NODES, 256)
    r2 = claim(NODES, 256, r1)
    assert r2.owners == r1.owners
    assert r2.version == r1.version + 1
    assert r2.checksum == r1.checksum
    assert r2 != r1  # versions differ


def test_join_moves_only_to_the_newcomer() -> None:
    r1 = claim(["a", "b", "c"], 256)
    r2 = claim(["a", "b", "c", "d"], 256, r1)
    moved = [p for p in range(256) if r1.owners[p] != r2.owners[p]]
    assert all(r2.owners[p] == "d" for p in moved)
    assert len(moved) == 64
    assert collections.Counter(r2.owners) == {"a": 64, "b": 64, "c": 64, "d": 64}


def test_leave_moves_only_the_leavers_partitions() -> None:
    r1 = claim(["a", "b", "c", "d", "e"], 256)
    r2 = claim(["a", "b", "d", "e"], 256, r1)
    moved = {p for p in range(256) if r1.owners[p] != r2.owners[p]}
    assert moved == set(r1.owned_by("c"))
    assert "c" not in r2.members


def test_more_members_than_partitions() -> None:
    ring = claim([f"n{i}" for i in range(10)], 4)
    assert len(set(ring.owners)) == 4
    assert len(ring.members) == 4
    assert ring.preference_list(0, 3) == tuple(ring.owners[:3])


def test_preference_list_walks_clockwise_skipping_repeats() -> None:
    ring = Ring(8, ("a", "a", "b", "a", "c", "b", "d", "a"), 1)
    assert ring.preference_list(0, 3) == ("a", "b", "c")
    assert ring.preference_list(6, 3) == ("d", "a", "b")
    assert ring.preference_list(7, 2) == ("a", "b")
    assert ring.preference_list(0, 10) == ("a", "b", "c", "d")
    assert ring.preference_list(0, 0) == ()
    assert ring.fallbacks(0, 3) == ("d",)
    assert ring.fallbacks(6, 2) == ("b", "c")
    assert ring.fallbacks(0, 4) == ()
    # Cached answers are the same objects, and stay right.
    assert ring.preference_list(0, 3) is ring.preference_list(0, 3)


def test_preference_list_out_of_range() -> None:
    ring = claim(NODES, 8)
    with pytest.raises(InvalidRequest):
        ring.preference_list(8, 3)
    with pytest.raises(InvalidRequest):
        ring.fallbacks(-1, 3)


def test_replicas_of() -> None:
    ring = Ring(4, ("a", "b", "c", "d"), 1)
    assert ring.replicas_of("a", 1) == {0}
    assert ring.replicas_of("a", 2) == {0, 3}
    assert ring.replicas_of("a", 3) == {0, 3, 2}
    assert ring.replicas_of("zz", 3) == set()


def test_checksum_ignores_version_and_tracks_owners() -> None:
    r1 = Ring(4, ("a", "b", "a", "b"), 1)
    r2 = Ring(4, ("a", "b", "a", "b"), 9)
    r3 = Ring(4, ("b", "a", "a", "b"), 1)
    assert r1.checksum == r2.checksum
    assert r1.checksum != r3.checksum
    # Length-prefixing keeps concatenation ambiguity out.
    assert Ring(2, ("ab", "c"), 1).checksum != Ring(2, ("a", "bc"), 1).checksum


def test_ring_validates_construction() -> None:
    with pytest.raises(InvalidRequest):
        Ring(3, ("a", "b", "c"), 1)
    with pytest.raises(InvalidRequest):
        Ring(4, ("a", "b", "c"), 1)
    with pytest.raises(InvalidRequest):
        Ring(2, ("a", ""), 1)
    with pytest.raises(InvalidRequest):
        Ring(2, ("a", "b"), -1)


def test_wire_round_trip_through_msgpack() -> None:
    ring = claim(["n1:7000", "n2:7000", "n3:7000"], 64)
    wire = ring.to_wire()
    assert Ring.from_wire(wire) == ring
    for raw in (False, True):
        back = msgpack.unpackb(msgpack.packb(wire, use_bin_type=False), raw=raw)
        assert Ring.from_wire(back) == ring


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("owners"),
        lambda d: d.update(checksum=d["checksum"] ^ 1),
        lambda d: d.update(owners=d["owners"][:-1]),
        lambda d: d.update(owners=[*d["owners"][:-1], 99]),
        lambda d: d.update(owners="abc"),
        lambda d: d.update(nodes=[1, 2, 3]),
        lambda d: d.update(partitions="64"),
        lambda d: d.update(partitions=True),
        lambda d: d.update(version=-3),
        lambda d: d.update(nodes=[b"\xff", "b", "c"]),
    ],
)
def test_from_wire_rejects_bad_shapes(mutate: object) -> None:
    wire = claim(["a", "b", "c"], 64).to_wire()
    mutate(wire)  # type: ignore[operator]
    with pytest.raises(InvalidRequest):
        Ring.from_wire(wire)


def test_from_wire_rejects_non_map() -> None:
    bad: object
    for bad in (None, [], "ring", 5):
        with pytest.raises(InvalidRequest):
            Ring.from_wire(bad)


def test_crowding_is_rare_for_common_sizes() -> None:
    # A fresh claim with S >= TARGET_N and S | Q is perfectly spaced; S = 3 with Q = 2^k
    # cannot be (it would need 3 | Q), but only the wrap-around suffers.
    for s in (4, 5, 6, 7, 8, 16):
        assert crowded_partitions(claim([f"n{i}" for i in range(s)], 256)) == 0
    assert crowded_partitions(claim(["a", "b", "c"], 256)) <= 2
    assert crowded_partitions(claim(["a", "b"], 256), 2) == 0
