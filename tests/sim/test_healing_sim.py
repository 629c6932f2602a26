"""Whole-cluster healing on the simulated network: crashes, restarts and partitions over
thousands of operations, then heal — every replica converges, no acknowledged write is
missing, and no deleted key comes back."""

from __future__ import annotations

import random

import pytest

from kvstore.core import vclock
from kvstore.testing.simcluster import Op, SimCluster

NAMES = ["a", "b", "c", "d", "e"]


class SetClient:
    """Jepsen's Riak workload per key: read, union the siblings, add a unique element, write
    back with the read's context. An element is acknowledged when its write is."""

    def __init__(self, sim: SimCluster, rng: random.Random, keys: list[bytes]) -> None:
        self.sim, self.rng, self.keys = sim, rng, keys
        self.get: Op | None = None
        self.put: Op | None = None
        self.element: int | None = None
        self.acked: dict[bytes, set[int]] = {}

    def step(self, next_element: int) -> bool:
        """Advance; returns True when it used ``next_element``."""
        if self.put is not None:
            if self.put.result is None:
                return False
            if self.put.ok:
                self.acked.setdefault(self.put.key, set()).add(self.element)  # type: ignore[arg-type]
            self.put = None
        if self.get is None:
            self.get = self.sim.get(self.rng.choice(NAMES), self.rng.choice(self.keys))
            return False
        if self.get.result is None:
            return False
        got, self.get = self.get, None
        if not got.ok:
            return False
        current = set()
        for v in got.result["values"]:  # type: ignore[index]
            current |= {int(x) for x in v.split(b",") if x}
        self.element = next_element
        current.add(next_element)
        value = b",".join(b"%d" % x for x in sorted(current))
        self.put = self.sim.put(self.rng.choice(NAMES), got.key, value, context=got.result["context"])  # type: ignore[index]
        return True


@pytest.mark.parametrize("seed", [1, 2])
def test_crashes_and_partitions_then_heal_converges_and_loses_nothing(seed: int) -> None:
    sim = SimCluster(NAMES, seed=seed, timeout_s=0.2, hinted_handoff=True, aae_interval_s=0.05)
    rng = random.Random(seed)
    set_keys = [b"set-%d" % i for i in range(6)]
    clients = [SetClient(sim, random.Random(seed * 100 + i), set_keys) for i in range(5)]
    deleted: list[tuple[bytes, Op]] = []
    deletes: list[tuple[bytes, Op]] = []
    element = 0
    down: set[str] = set()
    for step in range(3000):
        if step % 150 == 0:  # a new fault every 1.5 virtual seconds
            sim.net.heal()
            for name in list(down):
                sim.restart(name)
                down.discard(name)
            fault = rng.choice(["partition", "crash", "none"])
            if fault == "partition":
                side = set(rng.sample(NAMES, rng.randint(1, 2)))
                sim.net.partition(side, set(NAMES) - side)
            elif fault == "crash":
                victim = rng.choice(NAMES)
                sim.crash(victim)
                down.add(victim)
        for cl in clients:
            if cl.step(element):
                element += 1
        if step % 100 == 50:
            # A key written once and deleted with the context of a read that saw it.
            key = b"del-%d" % step
            w = sim.put(rng.choice(NAMES), key, b"doomed", w=3)
            deletes.append((key, w))
        sim.run_for(0.01)
        for key, w in list(deletes):
            if w.result is not None:
                deletes.remove((key, w))
                if w.ok:
                    d = sim.put(rng.choice(NAMES), key, None, context=w.result["context"], w=2)  # type: ignore[index]
                    deleted.append((key, d))
    # Heal everything and let hints and anti-entropy run.
    sim.net.heal()
    for name in down:
        sim.restart(name)
    sim.run_for(30.0)

    # 1. Every replica of every key holds the same version.
    keys = {k for node in sim.nodes.values() for (_, k) in node.store}
    for key in keys:
        versions = {None if o is None else vclock.digest(o) for o in sim.replicas_of(key).values()}
        assert len(versions) == 1, f"replicas of {key!r} differ after healing"
    # 2. No acknowledged add is missing from its set.
    final_reads = {k: sim.get("a", k, r=3) for k in set_keys}
    sim.run_for(2.0)
    acked_total = 0
    for key, read in final_reads.items():
        assert read.ok, read.result
        present: set[int] = set()
        for v in read.result["values"]:  # type: ignore[index]
            present |= {int(x) for x in v.split(b",") if x}
        for cl in clients:
            lost = cl.acked.get(key, set()) - present
            acked_total += len(cl.acked.get(key, set()))
            assert not lost, f"acknowledged adds lost from {key!r}: {sorted(lost)[:10]}"
    assert acked_total > 100, "the workload must have made progress under faults"
    # 3. No key whose delete was acknowledged is back, on any replica.
    acked_deletes = [key for key, d in deleted if d.ok]
    assert acked_deletes
    for key in acked_deletes:
        for node, obj in sim.replicas_of(key).items():
            assert obj is not None and vclock.values(obj) == [], f"{key!r} came back on {node}"
    repairs = sum(n.aae_repairs for n in sim.nodes.values())
    delivered = sum(n.hints_delivered for n in sim.nodes.values())
    print(f"seed {seed}: {acked_total} acked adds, {len(acked_deletes)} deletes, {delivered} hints delivered, {repairs} keys repaired by AAE")

