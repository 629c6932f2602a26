from __future__ import annotations

import collections
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core.ring import Ring, claim

NAMES = [f"node{i}" for i in range(24)]

q_st = st.sampled_from([1, 2, 8, 16, 64, 256])
members_st = st.lists(st.sampled_from(NAMES), min_size=1, max_size=12, unique=True)
props = settings(deadline=None, max_examples=60)


def counts(ring: Ring, members: list[str]) -> dict[str, int]:
    c = collections.Counter(ring.owners)
    return {m: c.get(m, 0) for m in members}


def assert_balanced(ring: Ring, members: list[str]) -> None:
    q, s = ring.partitions, len(members)
    c = counts(ring, members)
    assert set(ring.owners) <= set(members)
    assert min(c.values()) >= q // s
    assert max(c.values()) <= -(-q // s)


def moves(a: Ring, b: Ring) -> int:
    return sum(1 for x, y in zip(a.owners, b.owners, strict=True) if x != y)


@props
@given(members=members_st, q=q_st)
def test_fresh_claim_is_balanced(members: list[str], q: int) -> None:
    assert_balanced(claim(members, q), members)


@props
@given(members=members_st, q=q_st, seed=st.integers(0, 2**32))
def test_claim_ignores_member_order(members: list[str], q: int, seed: int) -> None:
    shuffled = list(members)
    random.Random(seed).shuffle(shuffled)
    base = claim(members, q)
    assert claim(shuffled + shuffled[:2], q) == base
    grown = [*members, "late"]
    random.Random(seed + 1).shuffle(grown)
    assert claim(grown, q, base) == claim(sorted(grown), q, base)


@props
@given(
    history=st.lists(members_st, min_size=2, max_size=5),
    q=st.sampled_from([16, 64, 256]),
)
def test_any_change_is_balanced_and_moves_the_minimum(history: list[list[str]], q: int) -> None:
    ring = claim(history[0], q)
    for members in history[1:]:
        nxt = claim(members, q, ring)
        assert_balanced(nxt, members)
        assert nxt.version == ring.version + 1
        old = counts(ring, members)
        new = counts(nxt, members)
        # Every partition a member gains is a move, so this is the least possible; the
        # rest of the bound is that no member gives up a partition it could have kept.
        assert moves(ring, nxt) == sum(max(0, new[m] - old[m]) for m in members)
        ring = nxt


@props
@given(members=members_st, q=st.sampled_from([16, 64, 256]), data=st.data())
def test_join_moves_about_q_over_s(members: list[str], q: int, data: st.DataObject) -> None:
    ring = claim(members, q)
    joiner = data.draw(st.sampled_from([n for n in NAMES if n not in members]))
    after = claim([*members, joiner], q, ring)
    s = len(members) + 1
    assert moves(ring, after) == after.owners.count(joiner)
    assert after.owners.count(joiner) in (q // s, -(-q // s))
    # Everything that moved went to the joiner.
    assert all(
        after.owners[p] == joiner for p in range(q) if ring.owners[p] != after.owners[p]
    )


@props
@given(members=st.lists(st.sampled_from(NAMES), min_size=2, max_size=12, unique=True),
       q=st.sampled_from([16, 64, 256]), data=st.data())
def test_leave_moves_exactly_the_leavers_partitions(
    members: list[str], q: int, data: st.DataObject
) -> None:
    # Start from a ring with history, not just a fresh one.
    ring = claim(members[:-1], q)
    ring = claim(members, q, ring)
    leaver = data.draw(st.sampled_from(members))
    after = claim([m for m in members if m != leaver], q, ring)
    changed = {p for p in range(q) if ring.owners[p] != after.owners[p]}
    assert changed == set(ring.owned_by(leaver))


@props
@given(members=members_st, q=q_st, n=st.integers(0, 6), data=st.data())
def test_preference_lists(members: list[str], q: int, n: int, data: st.DataObject) -> None:
    ring = claim(members, q)
    p = data.draw(st.integers(0, q - 1))
    pl = ring.preference_list(p, n)
    fb = ring.fallbacks(p, n)
    s = len(ring.members)
    assert len(pl) == min(n, s)
    assert len(set(pl)) == len(pl)
    assert set(pl).isdisjoint(fb)
    assert sorted(pl + fb) == list(ring.members)
    # The walk is clockwise from p: the first entry owns p, and each later node first
    # appears after every earlier one.
    order = pl + fb
    if order:
        assert order[0] == ring.owners[p]
    first = [next(d for d in range(q) if ring.owners[(p + d) % q] == m) for m in order]
    assert first == sorted(first)
    for node in pl:
        assert p in ring.replicas_of(node, n)


@props
@given(
    a=st.lists(st.sampled_from(["x", "y", "z"]), min_size=8, max_size=8),
    b=st.lists(st.sampled_from(["x", "y", "z"]), min_size=8, max_size=8),
    va=st.integers(0, 5),
    vb=st.integers(0, 5),
)
def test_checksum_equal_iff_owners_equal(a: list[str], b: list[str], va: int, vb: int) -> None:
    ra, rb = Ring(8, tuple(a), va), Ring(8, tuple(b), vb)
    assert (ra.checksum == rb.checksum) == (a == b)


@props
@given(members=members_st, q=q_st)
def test_wire_round_trip(members: list[str], q: int) -> None:
    ring = claim(members, q)
    assert Ring.from_wire(ring.to_wire()) == ring
