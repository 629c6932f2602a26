"""Convergent data types against a model: replicas (actors) apply operations and merge with
each other in any order; the model remembers which adds and increments happened and which
adds each remove observed.

* merge is commutative, associative and idempotent (on states real histories produce);
* a counter ends at exactly the sum of every increment, however the merges interleave;
* a set member is present at the end iff some add of it was observed by no remove of it
  (add-wins, and a remove removes only what its read observed: the replica's own state, or a
  client's read on another replica whose context it carries);
* encoding round-trips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core import crdt
from kvstore.core.crdt import State

ACTORS = ("a~1", "b~1", "c~1")
MEMBERS = (b"x", b"y", b"z")
props = settings(deadline=None, max_examples=120)

actor_i = st.integers(0, len(ACTORS) - 1)
member = st.sampled_from(MEMBERS)

counter_op = st.one_of(
    st.tuples(st.just("incr"), actor_i, st.integers(-5, 5)),
    st.tuples(st.just("merge"), actor_i, actor_i),
)
set_op = st.one_of(
    st.tuples(st.just("add"), actor_i, member),
    st.tuples(st.just("remove"), actor_i, member),
    # a client reads at one replica and its remove is coordinated at another
    st.tuples(st.just("remove_ctx"), actor_i, actor_i, member),
    st.tuples(st.just("merge"), actor_i, actor_i),
)
field_st = st.sampled_from([("c", "counter"), ("s", "set"), ("r", "register"), ("f", "flag"), ("m", "map")])


def _field_op(f: tuple[str, str], n: int) -> Any:
    _, t = f
    if t == "counter":
        return {"incr": n}
    if t == "set":
        return {"add": [MEMBERS[n % 3]]} if n >= 0 else {"remove": [MEMBERS[n % 3]]}
    if t == "register":
        return {"set": b"v%d" % n}
    if t == "flag":
        return {"enable": n >= 0}
    return {"update": [["inner", "counter", {"incr": n}]]}


map_op = st.one_of(
    st.tuples(st.just("update"), actor_i, field_st, st.integers(-3, 3)),
    st.tuples(st.just("remove"), actor_i, field_st),
    st.tuples(st.just("merge"), actor_i, actor_i),
)


@dataclass
class World:
    type: str
    states: list[State | None] = field(default_factory=lambda: [None] * len(ACTORS))
    floor: list[int] = field(default_factory=lambda: [0] * len(ACTORS))
    clock: int = 0
    seen: list[set[int]] = field(default_factory=lambda: [set() for _ in ACTORS])
    adds: dict[int, bytes] = field(default_factory=dict)
    removes: list[tuple[bytes, frozenset[int]]] = field(default_factory=list)
    total: int = 0
    history: list[State] = field(default_factory=list)

    def apply(self, i: int, raw: Any, ctx: dict[str, int] | None = None) -> None:
        op = crdt.parse_op(self.type, raw)
        self.clock += 1
        new = crdt.apply(self.states[i], op, actor=ACTORS[i], floor=self.floor[i], ts=self.clock, ctx=ctx)
        self.floor[i] = max(self.floor[i], new.clock.get(ACTORS[i], 0))
        self.states[i] = new
        self.history.append(new)

    def merge(self, i: int, j: int) -> None:
        a, b = self.states[i], self.states[j]
        if b is not None:
            self.states[i] = b if a is None else crdt.merge(a, b)
            self.history.append(self.states[i])  # type: ignore[arg-type]
        self.seen[i] |= self.seen[j]

    def all_merged(self) -> State | None:
        return crdt.merge_all(s for s in self.states if s is not None)


def run_counter(ops: list[Any]) -> World:
    w = World("counter")
    for op in ops:
        if op[0] == "incr":
            w.apply(op[1], {"incr": op[2]})
            w.total += op[2]
        else:
            w.merge(op[1], op[2])
    return w


def run_set(ops: list[Any]) -> World:
    w = World("set")
    for op in ops:
        if op[0] == "add":
            _, i, m = op
            w.apply(i, {"add": [m]})
            eid = len(w.adds)
            w.adds[eid] = m
            w.seen[i].add(eid)
        elif op[0] == "remove":
            _, i, m = op
            w.apply(i, {"remove": [m]})
            w.removes.append((m, frozenset(w.seen[i])))
        elif op[0] == "remove_ctx":
            _, reader, coord, m = op
            ctx = crdt.context(w.states[reader])
            w.apply(coord, {"remove": [m]}, ctx)
            w.removes.append((m, frozenset(w.seen[reader])))
            # the coordinator now also holds what the reader saw only as removed dots
        else:
            w.merge(op[1], op[2])
    return w


def run_map(ops: list[Any]) -> World:
    w = World("map")
    for op in ops:
        if op[0] == "update":
            _, i, f, n = op
            w.apply(i, {"update": [[f[0], f[1], _field_op(f, n)]]})
        elif op[0] == "remove":
            _, i, f = op
            w.apply(i, {"remove": [[f[0], f[1]]]})
        else:
            w.merge(op[1], op[2])
    return w


def _lattice(history: list[State], pick: Any) -> None:
    if not history:
        return
    a, b, c = (history[pick(len(history))] for _ in range(3))
    assert crdt.merge(a, b) == crdt.merge(b, a)
    assert crdt.merge(crdt.merge(a, b), c) == crdt.merge(a, crdt.merge(b, c))
    assert crdt.merge(a, a) == a
    ab = crdt.merge(a, b)
    assert crdt.merge(ab, a) == ab  # a join absorbs its parts


@props
@given(st.lists(counter_op, max_size=40), st.randoms(use_true_random=False))
def test_counter_lattice_and_no_increment_lost(ops: list[Any], rnd: Any) -> None:
    w = run_counter(ops)
    for _ in range(3):
        _lattice(w.history, lambda n: rnd.randrange(n))
    final = w.all_merged()
    assert crdt.value(final, "counter") == w.total


@props
@given(st.lists(set_op, max_size=40), st.randoms(use_true_random=False))
def test_set_lattice_add_wins_observed_remove(ops: list[Any], rnd: Any) -> None:
    w = run_set(ops)
    for _ in range(3):
        _lattice(w.history, lambda n: rnd.randrange(n))
    final = w.all_merged()
    expect = sorted(
        {m for eid, m in w.adds.items() if not any(rm == m and eid in seen for rm, seen in w.removes)}
    )
    assert crdt.value(final, "set") == expect


@props
@given(st.lists(set_op, max_size=30), st.permutations(range(len(ACTORS))))
def test_set_merge_order_does_not_matter(ops: list[Any], order: list[int]) -> None:
    w = run_set(ops)
    states = [w.states[i] for i in order if w.states[i] is not None]
    assert crdt.merge_all(states) == w.all_merged()


@props
@given(st.lists(map_op, max_size=40), st.randoms(use_true_random=False))
def test_map_lattice(ops: list[Any], rnd: Any) -> None:
    w = run_map(ops)
    for _ in range(3):
        _lattice(w.history, lambda n: rnd.randrange(n))


@props
@given(st.lists(st.one_of(counter_op), max_size=20), st.lists(map_op, max_size=20), st.lists(set_op, max_size=20))
def test_encoding_round_trips(cops: list[Any], mops: list[Any], sops: list[Any]) -> None:
    for w in (run_counter(cops), run_map(mops), run_set(sops)):
        for s in w.history:
            b = crdt.encode(s)
            assert crdt.is_state(b)
            assert crdt.decode(b) == s


@props
@given(st.lists(st.tuples(actor_i, st.integers(-3, 3)), max_size=30))
def test_map_counter_field_never_loses_increments_without_removes(ups: list[tuple[int, int]]) -> None:
    w = World("map")
    for i, n in ups:
        w.apply(i, {"update": [["hits", "counter", {"incr": n}]]})
        w.merge((i + 1) % len(ACTORS), i)
    final = w.all_merged()
    got = crdt.value(final, "map")
    assert got.get("hits_counter", 0) == sum(n for _, n in ups)
