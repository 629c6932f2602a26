"""The fault plan of a run, derived from the seed alone (pure: same inputs, same plan).

A plan alternates healthy intervals and single faults, starts and ends healthy, and heals
its last fault ``tail_s`` before the end so the final read meets a whole cluster. Kinds are
drawn round-robin over a shuffled list of the enabled nemeses, so a short run still sees each
kind once before any repeats.

Besides partitions, kills, pauses and clock skew:

    lose-unsynced    a node restarted (gracefully) with the storage engine's test-only
                     power-loss mode on, left to take writes for ``delay_s``, then SIGKILLed:
                     it loses exactly what it had acknowledged but not yet fsynced; the heal
                     restarts it normally
    ring             a ring change with a crash right after it: one node is asked to leave,
                     and ``delay_s`` later a node (``restart``: the leaver itself half the
                     time, else another) is SIGKILLed and restarted, while partitions are
                     being handed off; the heal rejoins the leaver (a join) and crash-restarts
                     the same node the same ``delay_s`` after that

Partitions are sets of directed links ``(src, dst)`` whose packets are dropped (Jepsen's
"grudges"); node indices are 0-based. The shapes:

    halves           two random halves (n//2 | rest)
    isolate          one node cut off from all others
    majority         a random minority (1..(n-1)//2 nodes) cut off from the majority
    majorities-ring  every node sees a majority, no two the same majority (3 nodes: a bridge)
    bridge           two halves that each still reach one "bridge" node
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "NEMESES",
    "PARTITIONS",
    "Fault",
    "Timing",
    "components_cut",
    "make_partition",
    "make_schedule",
]

# New kinds go at the end: the order fixes the draws, so old schedules stay as they were.
NEMESES = ("partition", "kill", "pause", "clock", "lose-unsynced", "ring")
PARTITIONS = ("halves", "isolate", "majority", "majorities-ring", "bridge")

Link = tuple[int, int]

# How soon after a ring change (leave, join) the ring nemesis crash-restarts a node: within
# the first seconds, while partitions are being handed off or just dropped.
RING_RESTART_S = (0.2, 3.0)


@dataclass(frozen=True, slots=True)
class Timing:
    """Bounds, in seconds, of the random durations a plan is built from."""

    fault_min_s: float = 10.0
    fault_max_s: float = 30.0
    heal_min_s: float = 5.0
    heal_max_s: float = 15.0
    tail_s: float = 5.0
    clock_min_s: float = 2.0
    clock_max_s: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.fault_min_s <= self.fault_max_s:
            raise ValueError("need 0 < fault_min_s <= fault_max_s")
        if not 0 < self.heal_min_s <= self.heal_max_s:
            raise ValueError("need 0 < heal_min_s <= heal_max_s")
        if self.tail_s < 0:
            raise ValueError("tail_s must be >= 0")
        if not 0 < self.clock_min_s <= self.clock_max_s:
            raise ValueError("need 0 < clock_min_s <= clock_max_s")


@dataclass(frozen=True, slots=True)
class Fault:
    id: int
    kind: str
    start_s: float
    end_s: float
    nodes: tuple[int, ...] = ()
    shape: str = ""
    cuts: frozenset[Link] = field(default_factory=frozenset)
    clock_offset_s: float = 0.0
    delay_s: float = 0.0
    restart: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        if self.kind == "partition":
            return f"partition {self.shape}"
        names = ",".join(f"n{i + 1}" for i in self.nodes)
        if self.kind == "clock":
            return f"clock {names} {self.clock_offset_s:+.0f}s"
        if self.kind == "lose-unsynced":
            return f"lose-unsynced {names} after {self.delay_s:.1f}s"
        if self.kind == "ring":
            again = ",".join(f"n{i + 1}" for i in self.restart)
            return f"ring {names} leave+join, restart {again} +{self.delay_s:.1f}s"
        return f"{self.kind} {names}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "label": self.label,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "nodes": list(self.nodes),
            "shape": self.shape,
            "cuts": sorted([list(c) for c in self.cuts]),
            "clock_offset_s": self.clock_offset_s,
            "delay_s": self.delay_s,
            "restart": list(self.restart),
        }


def components_cut(components: Iterable[Iterable[int]]) -> frozenset[Link]:
    """Both directions of every link between nodes of different components."""
    comps = [set(c) for c in components]
    cuts: set[Link] = set()
    for i, a in enumerate(comps):
        for b in comps[i + 1 :]:
            for x in a:
                for y in b:
                    cuts.add((x, y))
                    cuts.add((y, x))
    return frozenset(cuts)


def _ring_cut(order: Sequence[int]) -> frozenset[Link]:
    n = len(order)
    majority = n // 2 + 1
    # Each node keeps its neighbours within distance d on the ring: a majority, and a
    # different one for every node.
    d = math.ceil((majority - 1) / 2)
    cuts: set[Link] = set()
    for i, x in enumerate(order):
        for j, y in enumerate(order):
            dist = min((i - j) % n, (j - i) % n)
            if x != y and dist > d:
                cuts.add((y, x))
    if cuts:
        return frozenset(cuts)
    # Three nodes cannot form such a ring with symmetric links (and over TCP a one-way cut
    # is a two-way one). A bridge is the nearest shape: {a, b}, {b, c}, {a, b, c} are three
    # distinct majorities.
    return components_cut([order[:1], order[2:]])


def make_partition(shape: str, n: int, rng: random.Random) -> frozenset[Link]:
    if n < 2:
        raise ValueError("a partition needs at least 2 nodes")
    order = list(range(n))
    rng.shuffle(order)
    if shape == "halves":
        return components_cut([order[: n // 2], order[n // 2 :]])
    if shape == "isolate":
        return components_cut([order[:1], order[1:]])
    if shape == "majority":
        k = rng.randint(1, max(1, (n - 1) // 2))
        return components_cut([order[:k], order[k:]])
    if shape == "majorities-ring":
        return _ring_cut(order)
    if shape == "bridge":
        if n < 3:
            return components_cut([order[:1], order[1:]])
        rest = order[1:]
        a, b = rest[: len(rest) // 2], rest[len(rest) // 2 :]
        return components_cut([a, b])
    raise ValueError(f"unknown partition shape {shape!r}; choose from {', '.join(PARTITIONS)}")


def _targets(n: int, rng: random.Random) -> tuple[int, ...]:
    # At most a minority, so a quorum of every key can still be reached somewhere.
    k = rng.randint(1, max(1, (n - 1) // 2))
    return tuple(sorted(rng.sample(range(n), k)))


def _clock_offset(t: Timing, rng: random.Random) -> float:
    magnitude = math.exp(rng.uniform(math.log(t.clock_min_s), math.log(t.clock_max_s)))
    return round(magnitude if rng.random() < 0.5 else -magnitude, 1)


def make_schedule(
    seed: int,
    n_nodes: int,
    nemeses: Sequence[str],
    time_s: float,
    timing: Timing | None = None,
    partitions: Sequence[str] = PARTITIONS,
) -> list[Fault]:
    """The faults of a run of ``time_s`` seconds, in order, none overlapping."""
    t = timing or Timing()
    for k in nemeses:
        if k not in NEMESES:
            raise ValueError(f"unknown nemesis {k!r}; choose from {', '.join(NEMESES)}")
    kinds = sorted(set(nemeses), key=NEMESES.index)
    for needs_two in ("partition", "ring"):
        if needs_two in kinds and n_nodes < 2:
            kinds.remove(needs_two)
    if not kinds or n_nodes < 1:
        return []
    rng = random.Random(f"jepsen-lite schedule {seed}")
    faults: list[Fault] = []
    now = rng.uniform(t.heal_min_s, t.heal_max_s)
    queue: list[str] = []
    while True:
        if not queue:
            queue = list(kinds)
            rng.shuffle(queue)
        kind = queue.pop()
        duration = rng.uniform(t.fault_min_s, t.fault_max_s)
        end = now + duration
        if end > time_s - t.tail_s:
            break
        fid = len(faults)
        if kind == "partition":
            shape = rng.choice(list(partitions))
            faults.append(Fault(fid, kind, now, end, shape=shape, cuts=make_partition(shape, n_nodes, rng)))
        elif kind == "clock":
            faults.append(Fault(fid, kind, now, end, nodes=_targets(n_nodes, rng)[:1],
                                clock_offset_s=_clock_offset(t, rng)))
        elif kind == "lose-unsynced":
            # Long enough under load to hold an un-synced tail and to have synced before.
            delay = round(rng.uniform(1.0, max(1.0, min(5.0, duration / 2))), 2)
            faults.append(Fault(fid, kind, now, end, nodes=_targets(n_nodes, rng), delay_s=delay))
        elif kind == "ring":
            leaver = rng.randrange(n_nodes)
            others = [i for i in range(n_nodes) if i != leaver]
            again = leaver if rng.random() < 0.5 else rng.choice(others)
            delay = round(rng.uniform(RING_RESTART_S[0], RING_RESTART_S[1]), 2)
            faults.append(Fault(fid, kind, now, end, nodes=(leaver,), delay_s=delay, restart=(again,)))
        else:
            faults.append(Fault(fid, kind, now, end, nodes=_targets(n_nodes, rng)))
        now = end + rng.uniform(t.heal_min_s, t.heal_max_s)
    return faults
