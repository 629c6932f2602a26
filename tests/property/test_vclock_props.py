"""Dotted version vectors against a model of causality.

The model tracks, for every write, the set of writes its client had seen (its causal
past), and for every replica the set of writes it knows of. A replica must hold exactly
the writes it knows that no other write it knows has superseded: nothing concurrent is
ever dropped, nothing superseded ever lingers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.core import vclock as vc
from kvstore.core.vclock import Dot, Obj

REPLICAS = ("r0", "r1", "r2")
CLIENTS = 3
props = settings(deadline=None, max_examples=80)

replica_i = st.integers(0, len(REPLICAS) - 1)
client_i = st.integers(0, CLIENTS - 1)
op_st = st.one_of(
    st.tuples(st.just("read"), client_i, st.sets(replica_i, min_size=1)),
    st.tuples(st.just("write"), client_i, replica_i, st.booleans(), st.booleans()),
    st.tuples(st.just("sync"), replica_i, replica_i),
)
history_st = st.lists(op_st, max_size=40)


@dataclass
class World:
    objs: list[Obj | None] = field(default_factory=lambda: [None] * len(REPLICAS))
    seen: list[set[int]] = field(default_factory=lambda: [set() for _ in REPLICAS])
    past: dict[int, frozenset[int]] = field(default_factory=dict)
    wid_of: dict[Dot, int] = field(default_factory=dict)
    ctx: list[dict[str, int]] = field(default_factory=lambda: [{} for _ in range(CLIENTS)])
    readset: list[frozenset[int]] = field(default_factory=lambda: [frozenset()] * CLIENTS)
    last_write: list[int | None] = field(default_factory=lambda: [None] * CLIENTS)
    clock: int = 0

    def read(self, c: int, rs: set[int]) -> None:
        self.ctx[c] = vc.context_of(vc.sync_all(self.objs[r] for r in rs))
        self.readset[c] = frozenset().union(*(self.seen[r] for r in rs))

    def write(self, c: int, r: int, tombstone: bool, session: bool) -> int:
        wid = len(self.past)
        self.clock += 1
        self.past[wid] = self.readset[c]
        new = vc.update(
            self.objs[r], self.ctx[c], None if tombstone else b"w%d" % wid, REPLICAS[r], self.clock
        )
        dot = Dot(REPLICAS[r], new.vv[REPLICAS[r]])
        assert dot not in self.wid_of, "dots must be unique"
        self.wid_of[dot] = wid
        self.objs[r] = new
        self.seen[r] |= self.readset[c] | {wid}
        self.last_write[c] = wid
        if session:
            # Read-your-writes: the client carries the context the write returned.
            self.ctx[c] = vc.context_of(new)
            self.readset[c] = frozenset(self.seen[r])
        return wid

    def sync(self, dst: int, src: int) -> None:
        self.objs[dst] = vc.sync(self.objs[dst], self.objs[src])
        self.seen[dst] |= self.seen[src]

    def apply(self, op: tuple) -> None:  # type: ignore[type-arg]
        if op[0] == "read":
            self.read(op[1], op[2])
        elif op[0] == "write":
            self.write(*op[1:])
        else:
            self.sync(op[1], op[2])

    def expected(self, known: set[int]) -> set[int]:
        superseded: set[int] = set()
        for w in known:
            superseded |= self.past[w]
        return known - superseded

    def held(self, obj: Obj | None) -> set[int]:
        return set() if obj is None else {self.wid_of[s.dot] for s in obj.siblings}

    def converge(self) -> None:
        for _ in range(2):
            for a in range(len(REPLICAS)):
                for b in range(len(REPLICAS)):
                    self.sync(a, b)


def run(ops: list[tuple]) -> World:  # type: ignore[type-arg]
    w = World()
    for op in ops:
        w.apply(op)
    return w


@props
@given(history_st)
def test_replicas_hold_exactly_the_unsuperseded_writes(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    w = World()
    for op in ops:
        w.apply(op)
        for r in range(len(REPLICAS)):
            assert w.held(w.objs[r]) == w.expected(w.seen[r])
    w.converge()
    final = w.objs[0]
    assert all(o == final for o in w.objs)
    assert w.held(final) == w.expected(set(w.past))


@props
@given(history_st, history_st)
def test_sync_is_commutative_associative_idempotent(
    ops1: list[tuple], ops2: list[tuple]  # type: ignore[type-arg]
) -> None:
    states = run(ops1 + ops2).objs + run(ops1).objs
    for a in states:
        assert vc.sync(a, a) == a
        for b in states:
            ab = vc.sync(a, b)
            assert ab == vc.sync(b, a)
            assert vc.sync(ab, a) == ab  # absorbing what is already merged
            for c in states[:3]:
                assert vc.sync(ab, c) == vc.sync(a, vc.sync(b, c))


@props
@given(history_st, replica_i, replica_i)
def test_two_writers_same_context_make_exactly_two_siblings(
    ops: list[tuple], x: int, y: int  # type: ignore[type-arg]
) -> None:
    w = run(ops)
    w.converge()
    base = w.objs[0]
    ctx = vc.context_of(base)
    if x == y:
        # Same coordinator, one after the other, both with the old context.
        first = vc.update(base, ctx, b"x", REPLICAS[x], 1)
        both = vc.update(first, ctx, b"y", REPLICAS[x], 2)
    else:
        both = vc.sync(
            vc.update(base, ctx, b"x", REPLICAS[x], 1), vc.update(base, ctx, b"y", REPLICAS[y], 2)
        )
    assert both is not None
    assert sorted(s.value or b"" for s in both.siblings) == [b"x", b"y"]


@props
@given(history_st, st.sets(replica_i, min_size=1), replica_i, st.booleans())
def test_write_with_read_context_replaces_what_the_read_saw(
    ops: list[tuple], read_from: set[int], coord: int, tombstone: bool  # type: ignore[type-arg]
) -> None:
    w = run(ops)
    read = vc.sync_all(w.objs[r] for r in read_from)
    seen_by_read = {s.dot for s in read.siblings} if read else set()
    value = None if tombstone else b"new"
    new = vc.update(w.objs[coord], vc.context_of(read), value, REPLICAS[coord], 99)
    merged = vc.sync_all([*w.objs, new])
    assert merged is not None
    dots = {s.dot for s in merged.siblings}
    assert dots.isdisjoint(seen_by_read)
    assert any(s.value == value and s.ts == 99 for s in merged.siblings)
    if len(read_from) == len(REPLICAS):
        assert len(merged.siblings) == 1
        assert vc.values(merged) == ([] if tombstone else [b"new"])
        assert vc.is_deleted(merged) == tombstone


session_op = st.one_of(
    st.tuples(st.just("read"), client_i, st.sets(replica_i, min_size=1)),
    st.tuples(st.just("write"), client_i, replica_i, st.booleans(), st.just(True)),
    st.tuples(st.just("sync"), replica_i, replica_i),
)


@props
@given(st.lists(session_op, max_size=40))
def test_siblings_bounded_by_concurrent_writers(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    # Clients that carry their own write's context (and merge reads into it) never
    # create more siblings than there are of them.
    w = World()
    for op in ops:
        if op[0] == "read":
            _, c, rs = op
            prev_ctx, prev_set = w.ctx[c], w.readset[c]
            w.read(c, rs)
            joined = dict(prev_ctx)
            for n, k in w.ctx[c].items():
                joined[n] = max(k, joined.get(n, 0))
            w.ctx[c], w.readset[c] = joined, prev_set | w.readset[c]
        else:
            w.apply(op)
        for o in w.objs:
            assert o is None or len(o.siblings) <= CLIENTS
    w.converge()
    final = w.objs[0]
    assert final is None or len(final.siblings) <= CLIENTS
    # And the survivors are exactly each client's last write (if not superseded).
    assert w.held(w.objs[0]) == w.expected(set(w.past))


@props
@given(history_st)
def test_encode_decode_round_trip(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    w = run(ops)
    for o in w.objs:
        if o is None:
            continue
        back = vc.decode(vc.encode(o))
        assert back == o
        assert vc.digest(back) == vc.digest(o)
        assert vc.decode_context(vc.encode_context(vc.context_of(o))) == o.vv


@props
@given(history_st)
def test_stale_iff_merge_adds_something(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    w = run(ops)
    merged = vc.sync_all(w.objs)
    for o in w.objs:
        assert merged is not None or o is None
        assert vc.is_stale(o, merged) == (o != merged)
        assert vc.descends(merged, o)
        if o is not None and merged is not None and o != merged:
            assert vc.dominates(merged, o) or o.vv == merged.vv


@props
@given(history_st)
def test_lww_converges(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    # Replicas that apply lww after every merge agree on a single survivor.
    w = run(ops)
    states = [vc.lww(o) if o is not None else None for o in w.objs]
    a = vc.lww(vc.sync_all(states))
    b = vc.lww(vc.sync_all(reversed(states)))
    assert a == b
    assert a is None or len(a.siblings) == 1


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=64))
def test_decode_never_raises_anything_but_invalid_request(raw: bytes) -> None:
    from kvstore.errors import InvalidRequest

    for fn in (vc.decode, vc.decode_context):
        try:
            fn(raw)
        except InvalidRequest:
            pass
