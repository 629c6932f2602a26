"""Quorum paths of whole clusters on the simulated network (virtual time, seeded faults)."""

from __future__ import annotations

import random

import pytest

from kvstore.core import vclock
from kvstore.errors import Unavailable
from kvstore.testing.simcluster import SimCluster

NAMES = ["a", "b", "c", "d", "e"]


def test_put_then_get_through_any_node() -> None:
    sim = SimCluster(NAMES, seed=1)
    for i, via in enumerate(NAMES):
        op = sim.put(via, b"k%d" % i, b"v%d" % i)
        sim.run_for(1.0)
        assert op.ok, op.result
    for i in range(len(NAMES)):
        got = sim.get(NAMES[(i + 2) % 5], b"k%d" % i)
        sim.run_for(1.0)
        assert got.result == {"values": [b"v%d" % i], "context": got.result["context"]}  # type: ignore[index]


def test_one_replica_partitioned_away_reads_and_writes_still_succeed() -> None:
    sim = SimCluster(NAMES, seed=2)
    key = b"key"
    a, b, c = sim.preference(key)
    sim.net.partition({c}, set(NAMES) - {c})
    put = sim.put(a, key, b"v")
    sim.run_for(1.0)
    assert put.ok
    get = sim.get(b, key)
    sim.run_for(1.0)
    assert get.result["values"] == [b"v"]  # type: ignore[index]


def test_two_replicas_partitioned_away_write_is_unavailable_with_count() -> None:
    sim = SimCluster(NAMES, seed=3)
    key = b"key"
    a, b, c = sim.preference(key)
    sim.net.partition({a}, {b, c})
    put = sim.put(a, key, b"v")
    sim.run_for(1.0)
    assert isinstance(put.result, Unavailable)
    assert put.result.answered == 1 and put.result.required == 2


def test_concurrent_writers_with_one_context_make_two_siblings_and_a_context_resolves_them() -> (
    None
):
    sim = SimCluster(NAMES, seed=4)
    key = b"k"
    a, b, _ = sim.preference(key)
    first = sim.put(a, key, b"base")
    sim.run_for(1.0)
    ctx = first.result["context"]  # type: ignore[index]
    x = sim.put(a, key, b"x", context=ctx)
    y = sim.put(b, key, b"y", context=ctx)
    sim.run_for(1.0)
    assert x.ok and y.ok
    got = sim.get(a, key, r=3)
    sim.run_for(1.0)
    assert sorted(got.result["values"]) == [b"x", b"y"]  # type: ignore[index]
    fix = sim.put(b, key, b"z", context=got.result["context"])  # type: ignore[index]
    sim.run_for(1.0)
    assert fix.ok
    final = sim.get(a, key, r=3)
    sim.run_for(1.0)
    assert final.result["values"] == [b"z"]  # type: ignore[index]


def test_read_repair_brings_a_stale_replica_up_to_date() -> None:
    sim = SimCluster(NAMES, seed=5)
    key = b"k"
    a, _b, c = sim.preference(key)
    sim.net.partition({c}, set(NAMES) - {c})
    sim.put(a, key, b"v")
    sim.run_for(1.0)
    sim.net.heal()
    assert sim.replicas_of(key)[c] is None
    sim.get(a, key, r=2)
    sim.run_for(1.0)
    stale = sim.replicas_of(key)[c]
    assert stale is not None and vclock.values(stale) == [b"v"]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_loss_and_partitions_lose_no_acknowledged_write(seed: int) -> None:
    """Two thousand blind writes (no context, so none supersedes another) under 10% message
    loss and shifting partitions; after healing, every acknowledged value is still there."""
    sim = SimCluster(NAMES, seed=seed, timeout_s=0.3)
    rng = random.Random(seed)
    sim.net.set_loss(0.1)
    ops = []
    for i in range(2000):
        if i % 200 == 0:
            sim.net.heal()
            side = set(rng.sample(NAMES, rng.randint(1, 2)))
            sim.net.partition(side, set(NAMES) - side)
        key = b"k%d" % rng.randrange(40)
        ops.append(sim.put(rng.choice(NAMES), key, b"v%d" % i))
        sim.run_for(0.01)
    sim.net.heal()
    sim.net.set_loss(0.0)
    sim.run_for(2.0)
    acked: dict[bytes, set[bytes]] = {}
    for op in ops:
        if op.ok:
            acked.setdefault(op.key, set()).add(op.value)  # type: ignore[arg-type]
    failed = sum(1 for op in ops if not op.ok)
    assert failed < len(ops)  # the faults must leave some writes succeeding...
    reads = {key: sim.get("a", key, r=3) for key in acked}
    sim.run_for(2.0)
    lost = []
    for key, values in acked.items():
        res = reads[key].result
        assert isinstance(res, dict), res
        lost += [(key, v) for v in values - set(res["values"])]
    assert not lost, f"acknowledged writes lost: {lost[:10]}"
