"""The node's own request machines (kvstore.core.request) on the simulated network: sloppy
quorum with a stand-in that fails, hinted handoff home to a returned primary, read repair."""

from __future__ import annotations

import pytest

from kvstore.core import vclock
from kvstore.testing.simcluster import SimCluster

NAMES = ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_failing_stand_in_then_hints_home_then_read_repair(seed: int) -> None:
    sim = SimCluster(NAMES, seed=seed, hinted_handoff=True, timeout_s=0.5)
    key = b"k"
    coord, b, c = sim.preference(key)
    first, second = sim.ring.fallbacks(sim.partition(key), 3)[:2]

    # c is down (known down: not asked); its first stand-in cannot be reached from the
    # coordinator, so its call times out and the hint goes to the next fallback instead.
    sim.crash(c)
    sim.net.partition({coord}, {first})
    put = sim.put(coord, key, b"v1", w=2)
    sim.run_for(2.0)
    assert put.ok, put.result
    assert (c, sim.partition(key), key) in sim.nodes[second].hints
    assert not sim.nodes[first].hints

    # c comes back: the stand-in hands the write home.
    sim.net.heal()
    sim.restart(c)
    sim.run_for(3.0)
    assert vclock.values(sim.nodes[c].store.get((sim.partition(key), key))) == [b"v1"]
    assert not sim.nodes[second].hints
    assert sim.nodes[second].hints_delivered >= 1

    # b misses an overwrite whose hint is stranded on a crashed stand-in: the next read
    # through the coordinator repairs b.
    ctx = put.result["context"]  # type: ignore[index]
    sim.net.partition({b}, set(NAMES) - {b})
    put2 = sim.put(coord, key, b"v2", context=ctx, w=2)
    sim.run_for(0.3)
    stand_in = next(n for n in (first, second) if (b, sim.partition(key), key) in sim.nodes[n].hints)
    sim.crash(stand_in)
    sim.run_for(2.0)
    assert put2.ok, put2.result
    sim.net.heal()
    get = sim.get(coord, key, r=3)
    sim.run_for(2.0)
    assert get.result["values"] == [b"v2"], get.result  # type: ignore[index]
    assert sim.nodes[coord].repairs >= 1
    assert vclock.values(sim.nodes[b].store.get((sim.partition(key), key))) == [b"v2"]
