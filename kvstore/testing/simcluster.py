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

from kvstore.core import vclock
from kvstore.core.merkle import MerkleTree
from kvstore.core.request import (
    PUT,
    ReadRequest,
    Ready,
    Send,
    WriteRequest,
    answered_alone,
    read_answer,
    write_answer,
)
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
            _, rid, p, key, rec, hint_for = msg
            obj = vclock.decode(rec)
            if hint_for is not None:
                # A stand-in keeps the write as a hint for the primary it covers.
                hk = (hint_for, p, key)
                self.hints[hk] = vclock.sync(self.hints.get(hk), obj)
            else:
                self.merge_in(p, key, obj)
            self.sim.net.send(self.name, src, ("reply", rid, True))
        elif kind == "rget":
            _, rid, p, key = msg
            held = self.store.get((p, key))
            self.sim.net.send(self.name, src, ("reply", rid, None if held is None else vclock.encode(held)))
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

    # --- coordinator side: the node's own request machines, driven over the simulated network
    def _ask(self, dst: str, msg_kind: str, args: tuple[Any, ...], cb: Callable[[str, Any], None]) -> None:
        rid = next(self.sim.ids)
        self.pending[rid] = cb
        self.sim.net.send(self.name, dst, (msg_kind, rid, *args))

    def _is_up(self, node: str) -> bool:
        # The simulation's failure detector is exact: a crashed node is known down, a
        # partitioned one is not (it is asked, and times out), as with SWIM between probes.
        return self.sim.net.is_up(node)

    def coordinate_put(self, op: Op, ctx: bytes, w: int, strict: bool = False) -> None:
        ring = self.sim.ring
        p = partition_of(op.key, ring.partitions)
        now = self.sim.clock.now
        new = vclock.update(self.store.get((p, op.key)), vclock.decode_context(ctx), op.value, self.name, int(now * 1000))
        preference = ring.preference_list(p, self.sim.n)
        if answered_alone(self.name, preference, w):
            self._set(p, op.key, new)  # the simulated store is durable at once
            op.done_at = now
            op.result = write_answer(new)
            return
        hinting = self.sim.hinted_handoff
        machine = WriteRequest(
            self.name, new, vclock.encode(new),
            preference=preference,
            fallbacks=ring.fallbacks(p, self.sim.n),
            is_up=self._is_up,
            w=w,
            timeout_s=self.sim.timeout_s,
            now=now,
            sloppy=self.sim.sloppy and not strict,
            hinting=hinting,
            strict=strict,
        )
        _SimDrive(self, op, machine, p).run(machine.start())

    # --- healing, driven by timers while the node is up
    def deliver_hints(self) -> None:
        for hk, obj in list(self.hints.items()):
            target, p, key = hk

            def acked(_src: str, _r: Any, hk: tuple[str, int, bytes] = hk, obj: Obj = obj) -> None:
                if self.hints.get(hk) == obj:
                    del self.hints[hk]
                    self.hints_delivered += 1

            self._ask(target, "rput", (p, key, vclock.encode(obj), None), acked)

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
                    self._ask(peer, "rput", (p, k, vclock.encode(obj), None), lambda *_: None)

        self._ask(peer, "aae_leaves", (p,), got_leaves)

    def coordinate_get(self, op: Op, r: int) -> None:
        ring = self.sim.ring
        p = partition_of(op.key, ring.partitions)
        preference = ring.preference_list(p, self.sim.n)
        local = self.store.get((p, op.key))
        if answered_alone(self.name, preference, r):
            op.done_at = self.sim.clock.now
            op.result = read_answer(local, lww=False, now_ms=0)
            return
        machine = ReadRequest(
            self.name, local,
            preference=preference,
            is_up=self._is_up,
            r=r,
            timeout_s=self.sim.timeout_s,
            now=self.sim.clock.now,
        )
        _SimDrive(self, op, machine, p).run(machine.start())


class _SimDrive:
    """Carries out one request machine's effects on the simulated network: the simulation's
    counterpart of kvstore.runtime.coordinator's driver (same machine, other I/O)."""

    def __init__(self, node: SimNode, op: Op, machine: WriteRequest | ReadRequest, p: int) -> None:
        self.node = node
        self.op = op
        self.machine = machine
        self.p = p
        self.timer_at: float | None = None

    @property
    def now(self) -> float:
        return self.node.sim.clock.now

    def run(self, ready: Ready) -> None:
        node, op, p = self.node, self.op, self.p
        for s in ready.sends:
            self._call(s)
        if ready.local_write is not None:
            tag, obj = ready.local_write
            node._set(p, op.key, obj)  # the simulated store is durable at once
            node.sim.net.schedule(node.name, self.now, lambda: self._local_acked(tag))
        for h in ready.hints:
            hk = (h.primary, p, op.key)
            node.hints[hk] = vclock.sync(node.hints.get(hk), h.obj)
        for rep in ready.repairs:
            node.repairs += 1
            if rep.node == node.name:
                node.merge_in(p, op.key, rep.obj)
            else:
                node._ask(rep.node, "rput", (p, op.key, vclock.encode(rep.obj), None), lambda *_: None)
        if ready.reply is not None and op.result is None:
            op.done_at = self.now
            op.result = ready.reply.error if ready.reply.error is not None else ready.reply.result
        if ready.deadline is not None and ready.deadline != self.timer_at:
            self.timer_at = ready.deadline
            node.sim.net.schedule(node.name, ready.deadline, self._tick)
        elif ready.deadline is None:
            self.timer_at = None

    def _tick(self) -> None:
        if self.timer_at is not None and self.now >= self.timer_at:
            self.timer_at = None
            self.run(self.machine.tick(self.now))

    def _local_acked(self, tag: int) -> None:
        assert isinstance(self.machine, WriteRequest)
        self.run(self.machine.acked(tag))

    def _failed(self, tag: int, reason: str) -> Ready:
        m = self.machine
        return m.failed(tag, reason) if isinstance(m, WriteRequest) else m.failed(tag, reason, self.now)

    def _call(self, s: Send) -> None:
        """One replica call, with its own timeout (a partitioned peer never answers)."""
        answered = False

        def reply(_src: str, payload: Any) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            if not s.counted:
                return
            m = self.machine
            if isinstance(m, WriteRequest):
                self.run(m.acked(s.tag) if payload is True else m.failed(s.tag, str(payload)))
            else:
                self.run(m.replied(s.tag, None if payload is None else vclock.decode(payload), self.now))

        def timed_out() -> None:
            nonlocal answered
            if not answered:
                answered = True
                if s.counted:
                    self.run(self._failed(s.tag, "timeout"))

        node = self.node
        if s.op == PUT:
            node._ask(s.node, "rput", (self.p, self.op.key, s.record, s.hint_for), reply)
        else:
            node._ask(s.node, "rget", (self.p, self.op.key), reply)
        node.sim.net.schedule(node.name, self.now + s.timeout_s, timed_out)


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
        sloppy: bool | None = None,
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
        # Sloppy quorum (stand-ins beyond the preference list) comes with hinted handoff
        # unless asked otherwise, as on a real node.
        self.sloppy = hinted_handoff if sloppy is None else sloppy
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

    def partition(self, key: bytes) -> int:
        return partition_of(key, self.ring.partitions)

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
