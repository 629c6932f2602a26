"""Data types inside versioned records, as the node stores them: the update path of
kvstore.runtime.datatypes (read the local record, merge its siblings' states, apply under the
replica's actor with the node-wide counter as floor, mint a version superseding the local
siblings) interleaved with anti-entropy style syncs between replicas and with crashes that
lose recent writes (followed by a fresh actor epoch, as Replica.start takes).

Whatever the interleaving: no dot is ever minted twice (a sync never raises DotConflict), and
once every replica has synced with every other, the counter holds every increment some
replica's record still held, and the set every add."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core import crdt, vclock
from kvstore.core.vclock import Obj

N = 3
props = settings(deadline=None, max_examples=150)
rep = st.integers(0, N - 1)
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("incr"), rep, st.integers(1, 4)),
        st.tuples(st.just("add"), rep),
        st.tuples(st.just("sync"), rep, rep),
        st.tuples(st.just("snap"), rep),
        st.tuples(st.just("lose"), rep),
    ),
    max_size=50,
)


@dataclass
class Replica:
    i: int
    epoch: int = 1
    counter: int = 0
    obj: Obj | None = None
    held: frozenset[int] = frozenset()
    snap: tuple[Obj | None, frozenset[int]] | None = None

    @property
    def actor(self) -> str:
        return f"r{self.i}~{self.epoch}"


@dataclass
class World:
    type: str
    reps: list[Replica] = field(default_factory=lambda: [Replica(i) for i in range(N)])
    amounts: dict[int, Any] = field(default_factory=dict)
    t: int = 0

    def update(self, i: int, raw: Any, eid: int, amount: Any) -> None:
        r = self.reps[i]
        self.t += 1
        local = r.obj
        state = None if local is None else crdt.from_siblings(s.value for s in local.siblings if s.value is not None)
        new = crdt.apply(state, crdt.parse_op(self.type, raw), actor=r.actor, floor=r.counter, ts=self.t)
        r.counter = max(r.counter, new.clock.get(r.actor, 0))
        r.obj = vclock.update(local, vclock.context_of(local), crdt.encode(new), r.actor, self.t, r.counter)
        r.counter = r.obj.vv[r.actor]
        r.held = r.held | {eid}
        self.amounts[eid] = amount

    def sync(self, i: int, j: int) -> None:
        a, b = self.reps[i], self.reps[j]
        a.obj = vclock.sync(a.obj, b.obj)  # DotConflict here would be a dot minted twice
        a.held = a.held | b.held

    def lose(self, i: int) -> None:
        """A crash that loses what was written since the last snapshot; the restart takes a
        fresh actor epoch (no clean stop recorded)."""
        r = self.reps[i]
        r.obj, r.held = r.snap if r.snap is not None else (None, frozenset())
        r.epoch += 1
        r.counter = 0

    def converge(self) -> crdt.State | None:
        for _ in range(2):
            for i in range(N):
                for j in range(N):
                    self.sync(i, j)
        obj = self.reps[0].obj
        assert all(r.obj == obj for r in self.reps)
        return None if obj is None else crdt.from_siblings(s.value for s in obj.siblings if s.value is not None)


def run(type_: str, ops: list[Any]) -> World:
    w = World(type_)
    for n, op in enumerate(ops):
        if op[0] == "incr" and type_ == "counter":
            w.update(op[1], {"incr": op[2]}, n, op[2])
        elif op[0] == "add" and type_ == "set":
            w.update(op[1], {"add": [b"%d" % n]}, n, b"%d" % n)
        elif op[0] == "sync":
            w.sync(op[1], op[2])
        elif op[0] == "snap":
            r = w.reps[op[1]]
            r.snap = (r.obj, r.held)
        elif op[0] == "lose":
            w.lose(op[1])
    return w


@props
@given(ops_st)
def test_counter_in_records_keeps_every_held_increment(ops: list[Any]) -> None:
    w = run("counter", ops)
    held = set().union(*(r.held for r in w.reps))
    final = w.converge()
    assert crdt.value(final, "counter") == sum(w.amounts[e] for e in held)


@props
@given(ops_st)
def test_set_in_records_keeps_every_held_add(ops: list[Any]) -> None:
    w = run("set", ops)
    held = set().union(*(r.held for r in w.reps))
    final = w.converge()
    assert crdt.value(final, "set") == sorted(w.amounts[e] for e in held)
