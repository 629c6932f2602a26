"""The hint store with a real Engine: handing hints on after a ring change, isolating a hint a
real target node refuses, expiry. (Delivery between node processes: tests/integration.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest

from kvstore.config import Settings
from kvstore.core import vclock
from kvstore.core.ring import Ring, claim
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.hints import Hints, hint_key
from kvstore.runtime.node import Node
from kvstore.runtime.replica import Replica
from kvstore.runtime.rpc import RpcClient
from kvstore.testing.processes import free_port
from storage.engine import Engine

Q = 16
ME = "h"


class Clock:
    """Wall clock under the test's control; ``step`` moves it on after every reading."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.step = 0.0

    def __call__(self) -> float:
        t = self.now
        self.now += self.step
        return t


class Holder:
    """A node's hint store and what it needs, without the rest of the node."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.view = ClusterView(ME, "127.0.0.1:1", engine, settings.n_replicas)
        self.replica = Replica(engine, ME)
        self.rpc = RpcClient(connect_timeout_s=1.0)
        self.clock = Clock()
        self.hints = Hints(settings, self.view, engine, self.rpc, self.replica, wall=self.clock)


@pytest.fixture
async def holder(tmp_path: Path) -> AsyncIterator[Holder]:
    engine = Engine.open(str(tmp_path / "holder"))
    h = Holder(engine, Settings(node_id=ME, hint_max_age_s=100.0, tombstone_grace_s=1000.0))
    h.replica.new_epoch()
    yield h
    await h.rpc.close()
    await engine.close()


def _obj(value: bytes, actor: str = "w~1") -> vclock.Obj:
    return vclock.update(None, {}, value, actor, 1)


def _since(h: Holder, target: str, p: int, key: bytes) -> float | None:
    raw = h.engine.meta_get(hint_key(target, p, key))
    return None if raw is None else float(msgpack.unpackb(raw)[0])


async def test_hints_for_a_node_that_left_go_to_the_current_replicas(holder: Holder) -> None:
    before = claim(["a", "b", "c", ME, "old"], Q)
    after = claim(["a", "b", "c", ME], Q, before)
    held = [p for p in range(Q) if "old" in before.preference_list(p, 3)]
    mine = next(p for p in held if ME in after.preference_list(p, 3))
    others = next((p for p in held if ME not in after.preference_list(p, 3)), None)
    holder.view.ring = before
    for p in (mine, others):
        if p is not None:
            await holder.hints.store("old", p, b"k%d" % p, _obj(b"v%d" % p))
    first = holder.clock.now
    assert holder.hints.by_target() == {"old": 2 if others is not None else 1}

    holder.view.ring = after
    holder.clock.now += 10
    await holder.hints.tick()

    assert "old" not in holder.hints.by_target()
    # Where this node is now a replica, the hint is merged into its own store...
    assert vclock.values(holder.replica.read(mine, b"k%d" % mine)) == [b"v%d" % mine]
    # ...and kept for every other current replica, expiring from the original write.
    for p in (mine, others):
        if p is None:
            continue
        for q in after.preference_list(p, 3):
            if q != ME:
                assert _since(holder, q, p, b"k%d" % p) == first, (p, q)
    assert holder.hints.stats.rerouted == (2 if others is not None else 1)
    assert holder.hints.stats.delivered == 0


async def test_hints_for_a_down_node_that_still_replicates_stay(holder: Holder) -> None:
    ring = claim(["a", "b", "c", ME], Q)
    p = next(p for p in range(Q) if "a" in ring.preference_list(p, 3))
    holder.view.ring = ring
    holder.view.addrs["a"] = f"127.0.0.1:{free_port()}"  # nobody listens there
    holder.view.down_checks = (lambda n, _addr: n == "a",)
    await holder.hints.store("a", p, b"k", _obj(b"v"))
    await holder.hints.tick()
    assert holder.hints.by_target() == {"a": 1}
    assert holder.hints.stats.rerouted == 0


async def test_a_hint_kept_for_a_node_joining_in_a_pending_change_is_not_handed_on(holder: Holder) -> None:
    ring = claim(["a", "b", "c", ME], Q)
    nxt = claim(["a", "b", "c", ME, "new"], Q, ring)
    p = next(p for p in range(Q) if "new" in nxt.preference_list(p, 3))
    holder.view.ring, holder.view.next = ring, nxt
    await holder.hints.store("new", p, b"k", _obj(b"v"))
    await holder.hints.tick()
    assert holder.hints.by_target() == {"new": 1}


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[Node]:
    s = Settings(
        node_id="t", listen=f"127.0.0.1:{free_port()}", data_dir=str(tmp_path / "t"),
        snapshot_dir=str(tmp_path / "shm"), hint_max_age_s=100.0, tombstone_grace_s=1000.0,
    )
    node = Node(s)
    await node.start()
    yield node
    await node.stop()


async def test_a_hint_the_target_refuses_does_not_hold_back_the_others(holder: Holder, target: Node) -> None:
    assert target.view is not None and target.view.ring is not None
    ring: Ring = target.view.ring
    holder.view.ring = ring
    holder.view.addrs["t"] = target.addr
    good = {b"g%d" % i: b"value %d" % i for i in range(5)}
    for k, v in good.items():
        await holder.hints.store("t", ring.partition_of(k), k, _obj(v))
    # A hint whose record the target cannot decode, sorted among the good ones.
    bad = b"g2-bad"
    await holder.engine.meta_put(
        hint_key("t", ring.partition_of(bad), bad), msgpack.packb([holder.clock.now, b"\xc1junk"], use_bin_type=True)
    )
    holder.hints.pending["t"] += 1

    assert await holder.hints.tick() == 5
    st = holder.hints.stats
    assert (st.delivered, st.refused_invalid) == (5, 1)
    for k, v in good.items():
        assert vclock.values(target.replica.read(ring.partition_of(k), k)) == [v]
    # The refused hint is set aside, not resent every round, and not dropped for it.
    failed = st.failed_batches
    assert await holder.hints.tick() == 0
    assert st.failed_batches == failed
    assert holder.hints.by_target() == {"t": 1}
    # Past its age it goes like any hint.
    holder.clock.now += 101
    await holder.hints.tick()
    assert holder.hints.by_target() == {} and st.expired == 1


async def test_expired_hints_are_dropped_not_sent(holder: Holder, target: Node) -> None:
    assert target.view is not None and target.view.ring is not None
    ring = target.view.ring
    holder.view.ring = ring
    holder.view.addrs["t"] = target.addr
    await holder.hints.store("t", ring.partition_of(b"old"), b"old", _obj(b"v"))
    holder.clock.now += 101
    assert await holder.hints.tick() == 0
    assert holder.hints.stats.expired == 1 and holder.hints.by_target() == {}
    assert target.replica.read(ring.partition_of(b"old"), b"old") is None


async def test_large_hints_go_in_batches_bounded_by_bytes(tmp_path: Path, target: Node) -> None:
    engine = Engine.open(str(tmp_path / "small-batches"))
    h = Holder(engine, Settings(node_id=ME, hint_batch_bytes=2500, hint_max_age_s=100.0, tombstone_grace_s=1000.0))
    try:
        assert target.view is not None and target.view.ring is not None
        ring = target.view.ring
        h.view.ring = ring
        h.view.addrs["t"] = target.addr
        values = {b"b%d" % i: bytes([i]) * (1000 if i != 3 else 5000) for i in range(6)}
        for k, v in values.items():
            await h.hints.store("t", ring.partition_of(k), k, _obj(v))
        assert await h.hints.tick() == 6
        assert h.hints.stats.failed_batches == 0
        for k, v in values.items():
            assert vclock.values(target.replica.read(ring.partition_of(k), k)) == [v]
    finally:
        await h.rpc.close()
        await engine.close()


async def test_expiry_is_checked_again_right_before_sending(holder: Holder, target: Node) -> None:
    assert target.view is not None and target.view.ring is not None
    ring = target.view.ring
    holder.view.ring = ring
    holder.view.addrs["t"] = target.addr
    await holder.hints.store("t", ring.partition_of(b"k"), b"k", _obj(b"v"))
    # Listed at age 90 s (alive), about to be sent at 110 s: past the 100 s age by then.
    holder.clock.now += 90
    holder.clock.step = 20
    assert await holder.hints.tick() == 0
    assert holder.hints.stats.expired == 1 and holder.hints.by_target() == {}
    assert target.replica.read(ring.partition_of(b"k"), b"k") is None


async def test_an_unreadable_hint_is_dropped_and_the_others_delivered(holder: Holder, target: Node) -> None:
    assert target.view is not None and target.view.ring is not None
    ring = target.view.ring
    holder.view.ring = ring
    holder.view.addrs["t"] = target.addr
    await holder.hints.store("t", ring.partition_of(b"a"), b"a", _obj(b"1"))
    await holder.hints.store("t", ring.partition_of(b"c"), b"c", _obj(b"3"))
    await holder.engine.meta_put(hint_key("t", ring.partition_of(b"b"), b"b"), b"\xc1 not msgpack")
    holder.hints.pending["t"] += 1
    assert await holder.hints.tick() == 2
    assert holder.hints.stats.unreadable == 1 and holder.hints.by_target() == {}
