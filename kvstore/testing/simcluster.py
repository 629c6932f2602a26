"""Coordinators and replicas of a whole cluster in one process, on the simulated network.

Each ``SimNode`` keeps its replica state in a dict and coordinates gets and puts with the
same pure machines the real node uses (kvstore.core.quorum, vclock, ring); only the I/O is
different: messages go through :class:`~kvstore.testing.simnet.SimNetwork` and deadlines are
timers on the virtual clock. Records cross the network encoded, as on the wire.

    sim = SimCluster(["a", "b", "c", "d", "e"], seed=7)
    op = sim.put("a", b"k", b"v1")            # returns an Op, completed as the sim runs
    sim.run_for(1.0)
    op.result                                 # {"context": ...} or an Unavailable
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvstore.core import quorum, vclock
from kvstore.core.merkle import MerkleTree
from kvstore.core.quorum import ReadQuorum, Status, WriteQuorum
from kvstore.core.ring import Ring, claim, partition_of
from kvstore.core.vclock import Obj
from kvstore.errors import KVError, Unavailable
from kvstore.testing.clock import VirtualClock
from kvstore.testing.simnet import SimNetwork

CLIENT = "client"


@dataclass
class Op:
    kind: str
    key: bytes
    value: bytes | None = None
    result: dict[str, Any] | KVError | None = None
    done_at: float | None = None

    @property
    def ok(self) -> bool:
        return isinstance(self.result, dict)


@dataclass
class SimNode:
    name: str
    sim: SimCluster
    store: dict[tuple[int, bytes], Obj] = field(default_factory=dict)
    pending: dict[int, Callable[[str, Any], None]] = field(default_factory=dict)
    repairs: int = 0
    # Healing state: Merkle trees per partition, hints for primaries that did not answer.
    trees: dict[int, MerkleTree] = field(default_factory=dict)
    hints: dict[tuple[str, int, bytes], Obj] = field(default_factory=dict)
    aae_repairs: int = 0
    hints_delivered: int = 0

    # --- replica side
    def _set(self, p: int, key: bytes, new: Obj) -> None:
        old = self.store.get((p, key))
        self.store[(p, key)] = new
        tree = self.trees.get(p)
        if tree is None:
            tree = self.trees[p] = MerkleTree(fanout=8, depth=2)
        tree.update(key, None if old is None else vclock.digest(old), vclock.digest(new))

    def merge_in(self, p: int, key: bytes, incoming: Obj) -> bool:
        old = self.store.get((p, key))
        merged = vclock.sync(old, incoming)
        assert merged is not None
        if merged == old:
            return False
        self._set(p, key, merged)
        return True

    def handle(self, src: str, msg: Any) -> None:
        kind = msg[0]
        if kind == "rput":
            _, rid, p, key, rec = msg
            self.merge_in(p, key, vclock.decode(rec))
            self.sim.net.send(self.name, src, ("reply", rid, True))
        elif kind == "rget":
            _, rid, p, key = msg
            obj = self.store.get((p, key))
            self.sim.net.send(self.name, src, ("reply", rid, None if obj is None else vclock.encode(obj)))
        elif kind == "aae_leaves":
            _, rid, p = msg
            tree = self.trees.get(p) or MerkleTree(fanout=8, depth=2)
            leaves = tree.level_hashes(tree.depth, range(tree.fanout**tree.depth))
            self.sim.net.send(self.name, src, ("reply", rid, leaves))
        elif kind == "aae_entries":
            _, rid, p, buckets = msg
            tree = self.trees.get(p) or MerkleTree(fanout=8, depth=2)
            want = set(buckets)
            entries = [
                (k, vclock.encode(o)) for (pp, k), o in self.store.items() if pp == p and tree.bucket_of(k) in want
            ]
            self.sim.net.send(self.name, src, ("reply", rid, entries))
        elif kind == "reply":
            _, rid, payload = msg
            cb = self.pending.get(rid)
            if cb is not None:
                cb(src, payload)

    # --- coordinator side
    def _ask(self, dst: str, msg_kind: str, args: tuple[Any, ...], cb: Callable[[str, Any], None]) -> None:
        rid = next(self.sim.ids)
        self.pending[rid] = cb
        self.sim.net.send(self.name, dst, (msg_kind, rid, *args))

    def coordinate_put(self, op: Op, ctx: bytes, w: int, strict: bool = False) -> None:
        ring = self.sim.ring
        p = partition_of(op.key, ring.partitions)
        pref = ring.preference_list(p, self.sim.n)
        plan = quorum.plan(pref, ring.fallbacks(p, self.sim.n), lambda n: True, sloppy=False)
        now = self.sim.clock.now
        wq = WriteQuorum(plan.targets, w, now + self.sim.timeout_s, strict=strict)
        new = vclock.update(self.store.get((p, op.key)), vclock.decode_context(ctx), op.value, self.name, int(now * 1000))
        self._set(p, op.key, new)
        rec = vclock.encode(new)
        hinted = False

        def finish(status: Status) -> None:
            nonlocal hinted
            if self.sim.hinted_handoff and not hinted and (wq.all_answered or self.sim.clock.now >= wq.deadline):
                # Primaries that did not acknowledge get the write later, from a hint.
                hinted = True
                for t in wq.targets:
                    if t.node not in wq.acked:
                        hk = (t.node, p, op.key)
                        self.hints[hk] = vclock.sync(self.hints.get(hk), new)  # type: ignore[assignment]
            if status is Status.PENDING or op.result is not None:
                return
            op.done_at = self.sim.clock.now
            if status is Status.OK:
                op.result = {"context": vclock.encode_context(vclock.context_of(new))}
            else:
                op.result = Unavailable(wq.explain(), answered=wq.acks, required=w)

        for t in plan.targets:
            if t.node == self.name:
                finish(wq.on_ack(self.name))
            else:
                self._ask(t.node, "rput", (p, op.key, rec), lambda src, _r: finish(wq.on_ack(src)))
        self.sim.net.schedule(self.name, wq.deadline, lambda: finish(wq.tick(wq.deadline)))

    # --- healing, driven by timers while the node is up
    def deliver_hints(self) -> None:
        for hk, obj in list(self.hints.items()):
            target, p, key = hk

            def acked(_src: str, _r: Any, hk: tuple[str, int, bytes] = hk, obj: Obj = obj) -> None:
                if self.hints.get(hk) == obj:
                    del self.hints[hk]
                    self.hints_delivered += 1

            self._ask(target, "rput", (p, key, vclock.encode(obj)), acked)

    def exchange(self) -> None:
        """One anti-entropy exchange: a random partition this node replicates, with a random
        peer replica: compare leaf hashes, then swap what differs in those buckets."""
        ring = self.sim.ring
        mine = [p for p in range(ring.partitions) if self.name in ring.preference_list(p, self.sim.n)]
        p = self.sim.rng.choice(mine)
        peer = self.sim.rng.choice([x for x in ring.preference_list(p, self.sim.n) if x != self.name])
        tree = self.trees.get(p) or MerkleTree(fanout=8, depth=2)

        def got_leaves(src: str, theirs: Any) -> None:
            level = tree.depth
            n = tree.fanout**level
            ours = tree.level_hashes(level, range(n))
            differing = [i for i in range(n) if ours[i] != theirs[i]]
            if differing:
                self._ask(peer, "aae_entries", (p, differing), lambda s, entries: got_entries(differing, entries))

        def got_entries(buckets: list[int], entries: Any) -> None:
            theirs = {k: vclock.decode(rec) for k, rec in entries}
            for k, obj in theirs.items():
                if self.merge_in(p, k, obj):
                    self.aae_repairs += 1
            want = set(buckets)
            for (pp, k), obj in list(self.store.items()):
                if pp == p and tree.bucket_of(k) in want and theirs.get(k) != obj:
                    self._ask(peer, "rput", (p, k, vclock.encode(obj)), lambda *_: None)

        self._ask(peer, "aae_leaves", (p,), got_leaves)

    def coordinate_get(self, op: Op, r: int) -> None:
        ring = self.sim.ring
        p = partition_of(op.key, ring.partitions)
        pref = ring.preference_list(p, self.sim.n)
        plan = quorum.plan(pref, ring.fallbacks(p, self.sim.n), lambda n: True, sloppy=False)
        now = self.sim.clock.now
        rq = ReadQuorum(plan.targets, r, now + self.sim.timeout_s)
        repaired = False

        def step(status: Status) -> None:
            nonlocal repaired
            if status is not Status.PENDING and op.result is None:
                op.done_at = self.sim.clock.now
                if status is Status.OK:
                    merged = rq.merged
                    op.result = {
                        "values": [] if merged is None else vclock.values(merged),
                        "context": b"" if merged is None else vclock.encode_context(vclock.context_of(merged)),
                    }
                else:
                    op.result = Unavailable(rq.explain(), answered=rq.answered, required=r)
            if status is Status.OK and rq.all_answered and not repaired:
                repaired = True
                for node, obj in rq.repairs():
                    self.repairs += 1
                    if node == self.name:
                        self.merge_in(p, op.key, obj)
                    else:
                        self._ask(node, "rput", (p, op.key, vclock.encode(obj)), lambda *_: None)

        for t in plan.targets:
            if t.node == self.name:
                step(rq.on_reply(self.name, self.store.get((p, op.key))))
            else:
                self._ask(
                    t.node, "rget", (p, op.key),
                    lambda src, rec: step(rq.on_reply(src, None if rec is None else vclock.decode(rec))),
                )
        self.sim.net.schedule(self.name, rq.deadline, lambda: step(rq.tick(rq.deadline)))


class SimCluster:
    def __init__(
        self,
        names: list[str],
        *,
        seed: int = 0,
        n: int = 3,
        partitions: int = 64,
        timeout_s: float = 0.5,
        hinted_handoff: bool = False,
        aae_interval_s: float | None = None,
    ) -> None:
        self.clock = VirtualClock()
        self.rng = random.Random(seed)
        self.net = SimNetwork(self.clock, self.rng)
        self.ring: Ring = claim(names, partitions)
        self.n = n
        self.timeout_s = timeout_s
        self.ids = itertools.count(1)
        self.hinted_handoff = hinted_handoff
        self.aae_interval_s = aae_interval_s
        self.nodes = {name: SimNode(name, self) for name in names}
        for name, node in self.nodes.items():
            self.net.register(name, node.handle)
            self._arm(name)

    def _arm(self, name: str) -> None:
        """Background healing timers of one node (a crash cancels them; restart re-arms)."""
        node = self.nodes[name]
        if self.hinted_handoff:
            self._every(name, 0.2, node.deliver_hints)
        if self.aae_interval_s:
            self._every(name, self.aae_interval_s, node.exchange)

    def _every(self, name: str, dt: float, fn: Callable[[], None]) -> None:
        def fire() -> None:
            fn()
            self.net.schedule(name, self.clock.now + dt, fire)

        self.net.schedule(name, self.clock.now + dt * (0.5 + self.rng.random()), fire)

    def crash(self, name: str) -> None:
        self.net.crash(name)

    def restart(self, name: str) -> None:
        """Back up with its durable state (the store survives a crash, as LevelDB does)."""
        self.net.restart(name)
        self._arm(name)

    def preference(self, key: bytes) -> tuple[str, ...]:
        return self.ring.preference_list(partition_of(key, self.ring.partitions), self.n)

    def _coordinator(self, via: str, key: bytes) -> SimNode:
        # Handle-or-forward: a node outside the preference list hands the request to one inside.
        pref = self.preference(key)
        return self.nodes[via if via in pref else pref[0]]

    def put(self, via: str, key: bytes, value: bytes | None, *, context: bytes = b"", w: int = 2, strict: bool = False) -> Op:
        op = Op("put" if value is not None else "delete", key, value)
        node = self._coordinator(via, key)
        if not self.net.is_up(node.name):
            op.result = Unavailable("coordinator down", answered=0, required=w)
        else:
            node.coordinate_put(op, context, w, strict)
        return op

    def get(self, via: str, key: bytes, *, r: int = 2) -> Op:
        op = Op("get", key)
        node = self._coordinator(via, key)
        if not self.net.is_up(node.name):
            op.result = Unavailable("coordinator down", answered=0, required=r)
        else:
            node.coordinate_get(op, r)
        return op

    def run_for(self, dt: float) -> None:
        self.net.run_for(dt)

    def replicas_of(self, key: bytes) -> dict[str, Obj | None]:
        p = partition_of(key, self.ring.partitions)
        return {n: self.nodes[n].store.get((p, key)) for n in self.preference(key)}
