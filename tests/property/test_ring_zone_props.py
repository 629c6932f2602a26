"""Properties of zone-aware placement (hypothesis): preference lists span min(N, zones)
zones, the claim stays balanced and moves the minimum with zones as without, and one zone
places exactly as none."""

from __future__ import annotations

import collections

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core.ring import Ring, claim

NAMES = [f"node{i}" for i in range(16)]
ZONES = ["za", "zb", "zc", "zd"]

q_st = st.sampled_from([1, 2, 8, 16, 64, 256])
props = settings(deadline=None, max_examples=60)


@st.composite
def zoned_members(draw: st.DrawFn, min_size: int = 1) -> dict[str, str]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=min_size, max_size=10, unique=True))
    zones = draw(st.lists(st.sampled_from(ZONES), min_size=len(names), max_size=len(names)))
    return dict(zip(names, zones, strict=True))


def assert_balanced(ring: Ring, members: list[str]) -> None:
    q, s = ring.partitions, len(members)
    c = collections.Counter(ring.owners)
    counts = [c.get(m, 0) for m in members]
    assert set(ring.owners) <= set(members)
    assert min(counts) >= q // s and max(counts) <= -(-q // s)


def moves(a: Ring, b: Ring) -> int:
    return sum(1 for x, y in zip(a.owners, b.owners, strict=True) if x != y)


def assert_zone_spread(ring: Ring, n: int) -> None:
    z = len(ring.zone_names)
    for p in range(ring.partitions):
        pl = ring.preference_list(p, n)
        assert len(pl) == min(n, len(ring.members)) and len(set(pl)) == len(pl)
        # Distinct zones first: the first min(n, Z) entries are in distinct zones.
        head = pl[: min(n, z)]
        assert len({ring.zone_of(x) for x in head}) == len(head)
        # Fallbacks: the rest of the members, each once.
        fb = ring.fallbacks(p, n)
        assert sorted(pl + fb) == list(ring.members)


@props
@given(zoned=zoned_members(), q=q_st, n=st.integers(1, 5))
def test_every_preference_list_spans_min_n_zones(zoned: dict[str, str], q: int, n: int) -> None:
    ring = claim(zoned, q, zones=zoned)
    assert_balanced(ring, list(zoned))
    assert ring.zone_map == {m: zoned[m] for m in ring.members}
    assert_zone_spread(ring, n)


@props
@given(history=st.lists(zoned_members(), min_size=2, max_size=5), q=st.sampled_from([16, 64, 256]))
def test_changes_with_zones_stay_balanced_move_the_minimum_and_spread(
    history: list[dict[str, str]], q: int
) -> None:
    ring = claim(history[0], q, zones=history[0])
    for zoned in history[1:]:
        nxt = claim(zoned, q, ring, zones=zoned)
        members = list(zoned)
        assert_balanced(nxt, members)
        old = collections.Counter(o for o in ring.owners if o in zoned)
        new = collections.Counter(nxt.owners)
        # Zones never cost movement: still only what balance forces.
        assert moves(ring, nxt) == sum(max(0, new[m] - old[m]) for m in members)
        assert_zone_spread(nxt, 3)
        ring = nxt


@props
@given(zoned=zoned_members(min_size=2), q=st.sampled_from([16, 64, 256]), data=st.data())
def test_leave_with_zones_moves_exactly_the_leavers_partitions(
    zoned: dict[str, str], q: int, data: st.DataObject
) -> None:
    names = list(zoned)
    ring = claim(names[:-1], q, zones=zoned)
    ring = claim(names, q, ring, zones=zoned)
    leaver = data.draw(st.sampled_from(names))
    after = claim([m for m in names if m != leaver], q, ring)
    assert {p for p in range(q) if ring.owners[p] != after.owners[p]} == set(ring.owned_by(leaver))
    assert_zone_spread(after, 3)


@props
@given(
    history=st.lists(st.lists(st.sampled_from(NAMES), min_size=1, max_size=10, unique=True), min_size=1, max_size=4),
    q=q_st,
    zone=st.sampled_from(ZONES),
)
def test_one_zone_claims_and_places_exactly_as_no_zones(history: list[list[str]], q: int, zone: str) -> None:
    plain = claim(history[0], q)
    zoned = claim(history[0], q, zones=dict.fromkeys(NAMES, zone))
    for members in history[1:]:
        plain = claim(members, q, plain)
        zoned = claim(members, q, zoned, zones=dict.fromkeys(NAMES, zone))
    assert zoned.owners == plain.owners
    for p in range(q):
        for n in (1, 3):
            assert zoned.preference_list(p, n) == plain.preference_list(p, n)
            assert zoned.fallbacks(p, n) == plain.fallbacks(p, n)


@props
@given(zoned=zoned_members(), q=q_st)
def test_zoned_wire_round_trip(zoned: dict[str, str], q: int) -> None:
    ring = claim(zoned, q, zones=zoned)
    back = Ring.from_wire(ring.to_wire())
    assert back == ring and back.checksum == ring.checksum and back.zone_map == ring.zone_map
