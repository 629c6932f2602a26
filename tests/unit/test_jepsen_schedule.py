"""The fault plan is a pure function of its inputs and keeps its promises (healthy gaps,
healed before the end, sane partitions)."""

from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jepsen-lite"))

from jepsen_lite.schedule import (
    NEMESES,
    PARTITIONS,
    RING_RESTART_S,
    Timing,
    components_cut,
    make_partition,
    make_schedule,
)

ALL = list(NEMESES)


def test_same_seed_same_schedule() -> None:
    a = make_schedule(7, 5, ALL, 300)
    b = make_schedule(7, 5, ALL, 300)
    assert a == b
    assert [f.to_json() for f in a] == [f.to_json() for f in b]


def test_different_seeds_differ() -> None:
    plans = {tuple(f.label for f in make_schedule(s, 5, ALL, 300)) for s in range(10)}
    assert len(plans) > 1


def test_nemesis_order_does_not_matter() -> None:
    assert make_schedule(3, 5, ["kill", "partition"], 200) == make_schedule(3, 5, ["partition", "kill"], 200)


@pytest.mark.parametrize("seed", range(20))
def test_faults_are_separated_by_healthy_gaps_and_healed_before_the_end(seed: int) -> None:
    t = Timing()
    plan = make_schedule(seed, 5, ALL, 300, t)
    assert plan
    assert plan[0].start_s >= t.heal_min_s
    for f in plan:
        assert t.fault_min_s <= f.end_s - f.start_s <= t.fault_max_s
        assert f.end_s <= 300 - t.tail_s
    for a, b in itertools.pairwise(plan):
        assert b.start_s - a.end_s >= t.heal_min_s
    assert [f.id for f in plan] == list(range(len(plan)))


def test_every_enabled_kind_appears_before_any_repeats() -> None:
    plan = make_schedule(11, 5, ALL, 600)
    first = [f.kind for f in plan[: len(ALL)]]
    assert sorted(first) == sorted(ALL)


def test_only_enabled_kinds_and_valid_targets() -> None:
    plan = make_schedule(5, 3, ["kill", "pause"], 400)
    assert {f.kind for f in plan} == {"kill", "pause"}
    for f in plan:
        assert f.nodes and all(0 <= i < 3 for i in f.nodes)
        assert len(f.nodes) <= 1  # a minority of three


def test_clock_offsets_in_range() -> None:
    t = Timing(clock_min_s=2, clock_max_s=300)
    plan = make_schedule(1, 5, ["clock"], 2000, t)
    assert plan
    for f in plan:
        assert 2 <= abs(f.clock_offset_s) <= 300
        assert len(f.nodes) == 1


@pytest.mark.parametrize("seed", range(10))
def test_ring_changes_restart_a_node_soon_after(seed: int) -> None:
    plan = make_schedule(seed, 5, ["ring"], 600)
    assert plan and {f.kind for f in plan} == {"ring"}
    for f in plan:
        assert len(f.nodes) == 1 and len(f.restart) == 1
        assert all(0 <= i < 5 for i in (*f.nodes, *f.restart))
        assert RING_RESTART_S[0] <= f.delay_s <= RING_RESTART_S[1]
        assert f.to_json()["restart"] == list(f.restart) and "leave+join" in f.label
    # Half the time the leaver itself restarts (mid-handoff of its own partitions).
    leavers = [f.restart == f.nodes for s in range(20) for f in make_schedule(s, 5, ["ring"], 600)]
    assert any(leavers) and not all(leavers)


def test_ring_needs_two_nodes() -> None:
    assert make_schedule(1, 1, ["ring"], 300) == []
    assert {f.kind for f in make_schedule(1, 1, ["ring", "kill"], 300)} == {"kill"}


@pytest.mark.parametrize("seed", range(10))
def test_lose_unsynced_kills_a_minority_within_the_fault(seed: int) -> None:
    t = Timing()
    plan = make_schedule(seed, 5, ["lose-unsynced"], 400, t)
    assert plan
    for f in plan:
        assert 1 <= len(f.nodes) <= 2
        assert 1.0 <= f.delay_s <= max(1.0, (f.end_s - f.start_s) / 2)
        assert f.label.startswith("lose-unsynced n")


def test_new_kinds_leave_the_old_plans_alone() -> None:
    # Seed 7 with the four old kinds, as the README's runs used it before lose-unsynced and
    # ring existed (taken from that code): the new kinds must not shift any draw.
    old = ["partition", "kill", "pause", "clock"]
    plan = make_schedule(7, 5, old, 300)
    assert [(f.label, round(f.start_s, 3)) for f in plan[:4]] == [
        ("partition majority", 12.424), ("pause n4", 51.748), ("clock n1 +51s", 94.745),
        ("kill n1,n4", 123.554),
    ]
    assert all(f.delay_s == 0.0 and f.restart == () for f in plan)


def test_too_short_a_run_has_no_faults() -> None:
    assert make_schedule(1, 5, ALL, 10) == []


def test_unknown_nemesis_rejected() -> None:
    with pytest.raises(ValueError, match="unknown nemesis"):
        make_schedule(1, 3, ["meteor"], 100)


def _reachable(cuts: frozenset[tuple[int, int]], n: int, x: int) -> set[int]:
    """Nodes x hears from directly (itself included)."""
    return {y for y in range(n) if y == x or (y, x) not in cuts}


@pytest.mark.parametrize("n", [3, 5, 7])
@pytest.mark.parametrize("shape", PARTITIONS)
def test_partition_shapes(shape: str, n: int) -> None:
    for seed in range(10):
        cuts = make_partition(shape, n, random.Random(seed))
        assert cuts, f"{shape} on {n} nodes cut nothing"
        assert all(a != b and 0 <= a < n and 0 <= b < n for a, b in cuts)
        heard = [_reachable(cuts, n, x) for x in range(n)]
        if shape == "isolate":
            sizes = sorted(len(h) for h in heard)
            assert sizes[0] == 1 and sizes[1:] == [n - 1] * (n - 1)
        if shape == "majority":
            assert any(len(h) > n // 2 for h in heard) and any(len(h) <= n // 2 for h in heard)
        if shape == "majorities-ring":
            assert all(len(h) > n // 2 for h in heard)
            assert len({frozenset(h) for h in heard}) == n
        if shape == "bridge":
            bridges = [x for x in range(n) if len(heard[x]) == n]
            assert len(bridges) == 1
        if shape in ("halves", "isolate", "majority", "bridge"):
            assert all((b, a) in cuts for a, b in cuts)


def test_components_cut_is_symmetric_and_complete() -> None:
    cuts = components_cut([[0, 1], [2]])
    assert cuts == {(0, 2), (2, 0), (1, 2), (2, 1)}
