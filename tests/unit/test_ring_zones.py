"""The ring with zones: the zone table, its checksum and wire form, zone-spread preference
lists and a claim that spaces zones. (test_ring.py covers the ring without zones.)"""

from __future__ import annotations

import collections

import msgpack
import pytest

from kvstore.core.ring import Ring, claim, crowded_partitions, zone_crowded_partitions
from kvstore.core.zones import DEFAULT_ZONE
from kvstore.errors import ConfigError, InvalidRequest

SIX = {"n1": "a", "n2": "b", "n3": "c", "n4": "a", "n5": "b", "n6": "c"}


def test_zone_table_is_normalized() -> None:
    owners = ("x", "y", "z", "x")
    r = Ring(4, owners, 1, (("z", "c"), ("x", "a"), ("y", DEFAULT_ZONE), ("gone", "q")))
    # Sorted, members only, default zone left implicit.
    assert r.zones == (("x", "a"), ("z", "c"))
    assert r.zone_of("y") == DEFAULT_ZONE and r.zone_of("x") == "a"
    assert r.zone_map == {"x": "a", "y": DEFAULT_ZONE, "z": "c"}
    assert r.zone_names == ("a", "c", DEFAULT_ZONE)
    assert Ring(4, owners, 1, {"x": "a", "z": "c"}) == r


def test_zone_table_rejects_bad_entries() -> None:
    with pytest.raises(InvalidRequest, match="zone"):
        Ring(2, ("x", "y"), 1, (("x", "a,b"),))
    with pytest.raises(InvalidRequest, match="pair"):
        Ring(2, ("x", "y"), 1, (("x",),))  # type: ignore[arg-type]


def test_no_zones_keeps_checksum_and_wire_form() -> None:
    plain = Ring(4, ("x", "y", "x", "y"), 3)
    same = Ring(4, ("x", "y", "x", "y"), 3, {"x": DEFAULT_ZONE})
    assert same == plain and same.checksum == plain.checksum
    assert "zones" not in plain.to_wire()
    zoned = Ring(4, ("x", "y", "x", "y"), 3, {"x": "a", "y": "b"})
    assert zoned.checksum != plain.checksum
    assert Ring(4, ("x", "y", "x", "y"), 3, {"x": "b", "y": "a"}).checksum != zoned.checksum


def test_wire_round_trip_with_zones() -> None:
    ring = claim(SIX, 64, zones=SIX)
    wire = ring.to_wire()
    assert wire["zones"] == ["a", "b", "c", "a", "b", "c"]
    for raw in (False, True):
        back = Ring.from_wire(msgpack.unpackb(msgpack.packb(wire, use_bin_type=False), raw=raw))
        assert back == ring and back.zone_map == SIX
    wire["zones"] = ["a", "b"]
    with pytest.raises(InvalidRequest, match="one zone per node"):
        Ring.from_wire(wire)
    wire = ring.to_wire()
    wire["zones"][0] = "b"
    with pytest.raises(InvalidRequest, match="checksum"):
        Ring.from_wire(wire)


def test_preference_list_reaches_past_a_repeated_zone() -> None:
    # Owners a1 a2 b1 c1 ...: the next three owners hold two of zone a; the list skips a2.
    ring = Ring(8, ("a1", "a2", "b1", "c1", "a1", "a2", "b1", "c1"), 1, {"a1": "a", "a2": "a", "b1": "b", "c1": "c"})
    assert ring.preference_list(0, 3) == ("a1", "b1", "c1")
    assert ring.fallbacks(0, 3) == ("a2",)
    assert ring.preference_list(1, 2) == ("a2", "b1")
    # N beyond the zones: fill with second nodes of zones, in walk order.
    assert ring.preference_list(0, 4) == ("a1", "b1", "c1", "a2")
    assert ring.key_preference_list(b"k", 3) == ring.preference_list(ring.partition_of(b"k"), 3)


def test_one_named_zone_places_as_no_zones() -> None:
    owners = ("a", "a", "b", "a", "c", "b", "d", "a")
    plain = Ring(8, owners, 1)
    one = Ring(8, owners, 1, dict.fromkeys("abcd", "z1"))
    for p in range(8):
        assert one.preference_list(p, 3) == plain.preference_list(p, 3)
        assert one.fallbacks(p, 3) == plain.fallbacks(p, 3)
    assert one.zone_names == ("z1",)


def test_fresh_claim_spaces_equal_zones_and_balances_replicas() -> None:
    ring = claim(SIX, 256, zones=SIX)
    assert collections.Counter(ring.owners).most_common()[-1][1] >= 256 // 6
    assert crowded_partitions(ring) == 0
    # 256 is not a multiple of 6: only the wrap-around can crowd.
    assert zone_crowded_partitions(ring) <= 2
    load = collections.Counter(x for p in range(256) for x in ring.preference_list(p, 3))
    assert max(load.values()) - min(load.values()) <= 6
    for p in range(256):
        assert len({ring.zone_of(x) for x in ring.preference_list(p, 3)}) == 3


def test_claim_keeps_zones_of_members_and_takes_the_joiners() -> None:
    ring = claim(["n1", "n2"], 16, zones={"n1": "a", "n2": "b"})
    joined = claim(["n1", "n2", "n3"], 16, ring, zones={"n3": "c"})
    assert joined.zone_map == {"n1": "a", "n2": "b", "n3": "c"}
    left = claim(["n1", "n3"], 16, joined)
    assert left.zone_map == {"n1": "a", "n3": "c"}
    moved = claim(["n1", "n3"], 16, left, zones={"n3": "a"})
    # A zone change alone moves no partition; it changes preference lists only.
    assert moved.owners == left.owners and moved.zone_names == ("a",)


def test_claim_rejects_bad_zone() -> None:
    with pytest.raises(ConfigError, match="zone"):
        claim(["n1"], 8, zones={"n1": ""})
