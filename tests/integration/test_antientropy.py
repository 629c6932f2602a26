"""Active anti-entropy with real node processes: replicas diverged behind the coordinator's
back (writes stored on one replica only, no read repair, no hints) converge through Merkle
exchanges alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgpack

from kvstore.client import Client
from kvstore.core import vclock
from kvstore.core.ring import partition_of
from kvstore.testing.processes import LocalCluster, wait_until

Q = 256
# Short intervals and generous budgets, so a test sees several rounds per second.
AAE_FLAGS = [
    "--aae-interval-s", "0.3",
    "--aae-exchanges-per-min", "6000",
    "--aae-max-repairs-per-s", "5000",
]


class Nodes:
    """One admin client per node, for the RPCs the tests call on a chosen node."""

    def __init__(self, c: LocalCluster) -> None:
        self.c = c
        self.clients = {name: c.client(name, route=False) for name in c.nodes}

    def call(self, name: str, method: str, *params: Any) -> Any:
        return self.clients[name].call(self.c.nodes[name].addr, method, *params)

    def roots(self, name: str) -> list[int | None]:
        return self.call(name, "aae.roots", list(range(Q)))  # type: ignore[no-any-return]

    def status(self, name: str) -> dict[str, Any]:
        return self.call(name, "aae.status")  # type: ignore[no-any-return]

    def raw(self, name: str, key: bytes) -> bytes | None:
        rec = self.call(name, "replica.get", partition_of(key, Q), key)
        return None if rec is None else bytes(rec)

    def put_raw(self, name: str, key: bytes, obj: vclock.Obj) -> None:
        self.call(name, "replica.put", partition_of(key, Q), key, vclock.encode(obj), None)

    def agree(self) -> bool:
        """Every partition's tree is built on every node and has the same root everywhere."""
        rs = [self.roots(n) for n in self.c.nodes]
        return all(None not in r for r in rs) and all(r == rs[0] for r in rs)


def _trees_exact(eng: Any, aae: Any) -> bool:
    """Every partition's root as served equals a tree built from the store's records."""
    from kvstore.core import merkle

    for p, d in eng.table().items():
        ref = merkle.MerkleTree.from_items((k, vclock.digest(vclock.decode(r))) for k, r in d.items())
        if ref.root() != aae.h_root(p):
            return False
    return True


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_diverged_replicas_converge_through_exchanges(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=3, extra=AAE_FLAGS) as c:
        c.start_all()
        nodes = Nodes(c)
        kv = c.client()
        keys = [f"ae-{i}".encode() for i in range(300)]
        for k in keys:
            kv.put(k, b"v0-" + k, w=3)
        wait_until(nodes.agree, 30, 0.2, "the trees to agree after a clean load")
        base = {n: nodes.status(n)["keys_repaired"] for n in c.nodes}

        # Behind the coordinator's back: newer versions on n1 only, new keys on n2 only,
        # and deletes (tombstones) on n3 only.
        newer, fresh, deleted = keys[:40], [f"ae-new-{i}".encode() for i in range(20)], keys[40:50]
        for k in newer:
            old = vclock.decode(nodes.raw("n1", k) or b"")
            nodes.put_raw("n1", k, vclock.update(old, old.vv, b"v1-" + k, "rogue", _now_ms()))
        for k in fresh:
            nodes.put_raw("n2", k, vclock.update(None, {}, b"v1-" + k, "rogue", _now_ms()))
        for k in deleted:
            old = vclock.decode(nodes.raw("n3", k) or b"")
            nodes.put_raw("n3", k, vclock.update(old, old.vv, None, "rogue", _now_ms()))
        assert not nodes.agree()

        wait_until(nodes.agree, 30, 0.2, "anti-entropy to bring every replica to the same root")

        for k in [*newer, *fresh, *deleted]:
            recs = {nodes.raw(n, k) for n in c.nodes}
            assert len(recs) == 1 and None not in recs, k
        for k in [*newer, *fresh]:
            assert vclock.values(vclock.decode(nodes.raw("n3", k) or b"")) == [b"v1-" + k]
        for k in deleted:
            assert vclock.is_deleted(vclock.decode(nodes.raw("n1", k) or b""))
        # Each diverged key was repaired on two replicas; one exchange repairs a key on
        # both sides or two exchanges one side each, so at least one count per key.
        repaired = sum(nodes.status(n)["keys_repaired"] - base[n] for n in c.nodes)
        assert repaired >= len(newer) + len(fresh) + len(deleted)
        st = nodes.status("n1")
        assert st["exchanges"] > 0 and st["keys_compared"] > 0 and st["trees_building"] == 0
        wait_until(lambda: nodes.status("n1")["agreement"]["never"] == 0, 10, 0.2, "agreement on every partition")
        # The figures the lead shows in `kv cluster status`.
        assert "aae" in (c.status("n1") or {})


def test_trees_survive_a_graceful_restart_and_catch_up(tmp_path: Path) -> None:
    """A node stopped gracefully comes back with its trees (from the shared-memory snapshot
    when that loads, else rebuilt) and repairs what it missed while away."""
    with LocalCluster(tmp_path, nodes=3, extra=[*AAE_FLAGS, "--max-hints", "0"]) as c:
        c.start_all()
        nodes = Nodes(c)
        kv = c.client()
        for i in range(200):
            kv.put(f"rs-{i}", f"v{i}", w=3)
        wait_until(nodes.agree, 30, 0.2, "the trees to agree")
        c.stop("n3")
        # Written to n1 only while n3 is away (no hints: --max-hints 0), so only
        # anti-entropy can bring it to n2 and n3.
        missed = [f"rs-missed-{i}".encode() for i in range(30)]
        for k in missed:
            nodes.put_raw("n1", k, vclock.update(None, {}, b"x", "rogue", _now_ms()))
        c.start("n3")
        nodes = Nodes(c)
        st3 = c.status("n3") or {}
        if st3.get("load", {}).get("path") == "snapshot":
            # Trees came with the snapshot: nothing had to be built.
            assert nodes.status("n3")["trees_built"] == 0
        wait_until(nodes.agree, 30, 0.2, "n3 to catch up")
        for k in missed:
            assert nodes.raw("n3", k) == nodes.raw("n1", k) is not None


def test_entries_rpc_rejects_bad_params(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=1, n=1, r=1, w=1, extra=AAE_FLAGS) as c:
        c.start_all()
        kv: Client = c.client()
        addr = c.nodes["n1"].addr
        cases: list[tuple[str, list[Any]]] = [
            ("aae.entries", [0, [99999]]),
            ("aae.entries", [-1, [0]]),
            ("aae.level", [0, 7, [0]]),
            ("aae.roots", ["x"]),
            ("aae.forget", [0, b"k", "nope"]),
        ]
        for method, params in cases:
            try:
                kv.call(addr, method, *params)
            except Exception as e:
                assert getattr(e, "code", None) == "invalid_request", (method, e)
            else:
                raise AssertionError(f"{method} accepted {params}")
        assert kv.call(addr, "aae.forget", 0, b"absent", 1) is False


async def test_trees_stay_exact_under_writes_racing_build_and_rebuild(tmp_path: Path) -> None:
    """In one process: writes stored but not yet hooked when a (re)build copies the table
    are counted once, and exported trees are adopted only by the store they describe."""
    import random

    from kvstore.config import Settings
    from kvstore.core.ring import claim
    from kvstore.runtime.antientropy import AntiEntropy
    from kvstore.runtime.cluster import ClusterView
    from kvstore.runtime.replica import Replica
    from kvstore.runtime.rpc import RpcClient
    from storage.engine import Engine

    eng = Engine.open(str(tmp_path / "db"), fsync="no")
    view = ClusterView("a", "127.0.0.1:1", eng, 3)
    view.ring = claim(["a", "b"], 4)  # not alone: a lone node keeps no trees (the next test)
    rep = Replica(eng, "a")
    rep.new_epoch()
    rng = random.Random(1)

    async def write(i: int) -> None:
        k = b"k%d" % rng.randrange(2000)
        p = partition_of(k, 4)
        old = rep.read(p, k)
        await rep.merge_in(p, k, vclock.update(old, vclock.context_of(old), None if i % 4 == 0 else b"v", "a", i))

    await asyncio.gather(*(write(i) for i in range(3000)))
    settings = Settings(partitions=4)
    aae = AntiEntropy(settings, view, rep, eng, RpcClient())

    def exact() -> bool:
        return _trees_exact(eng, aae)

    # Build while writing.
    await asyncio.gather(aae._build_pending(), *(write(i) for i in range(3000)))
    assert exact()
    tombs = sum(1 for d in eng.table().values() for r in d.values() if vclock.is_deleted(vclock.decode(r)))
    assert aae.status()["tombstones_pending"] == tombs
    for _ in range(3):
        # Rebuild with writes in flight: stored in the table, their hooks not yet run.
        pending = [asyncio.ensure_future(write(i)) for i in range(1000)]
        await asyncio.sleep(0)
        for p in range(4):
            aae._rebuilt_at.clear()
            aae._rebuild(p)
        await asyncio.gather(aae._build_pending(), *pending, *(write(i) for i in range(1000)))
        assert exact()
    blob = aae.export()
    other = AntiEntropy(settings, view, rep, eng, RpcClient())
    assert other.import_(blob) and other.status()["trees_building"] == 0
    assert all(other.h_root(p) == aae.h_root(p) for p in range(4))
    await write(0)
    third = AntiEntropy(settings, view, rep, eng, RpcClient())
    assert not third.import_(blob)  # the store moved on: build instead
    await eng.close()


async def test_a_lone_node_keeps_no_trees_and_builds_them_exactly_when_a_member_joins(tmp_path: Path) -> None:
    """In one process: alone in its ring a node stops keeping trees at its first write (and
    answers no root) but still tracks tombstones; once the ring has another member, the
    first write builds every tree from a copy, exact with writes racing the copy."""
    import random

    from kvstore.config import Settings
    from kvstore.core.ring import claim
    from kvstore.runtime.antientropy import AntiEntropy
    from kvstore.runtime.cluster import ClusterView
    from kvstore.runtime.replica import Replica
    from kvstore.runtime.rpc import RpcClient
    from storage.engine import Engine

    eng = Engine.open(str(tmp_path / "db"), fsync="no")
    view = ClusterView("a", "127.0.0.1:1", eng, 3)
    view.ring = claim(["a"], 4)
    rep = Replica(eng, "a")
    rep.new_epoch()
    rng = random.Random(2)
    aae = AntiEntropy(Settings(partitions=4), view, rep, eng, RpcClient())

    async def write(i: int) -> None:
        k = b"k%d" % rng.randrange(500)
        p = partition_of(k, 4)
        old = rep.read(p, k)
        await rep.merge_in(p, k, vclock.update(old, vclock.context_of(old), None if i % 5 == 0 else b"v", "a", i))

    def exact() -> bool:
        return _trees_exact(eng, aae)

    def tombs() -> int:
        return sum(1 for d in eng.table().values() for r in d.values() if vclock.is_deleted(vclock.decode(r)))

    for i in range(2000):
        await write(i)
    st = aae.status()
    assert st["dormant"] is True and st["trees"] == 0
    assert all(aae.h_root(p) is None for p in range(4))  # no root to compare: none kept
    assert st["tombstones_pending"] == tombs() > 0
    assert not msgpack.unpackb(aae.export(), raw=False, strict_map_key=False)["trees"]

    # A member joins; writes are stored but not yet hooked when the first hook wakes the
    # trees (their results are in the copy: counted once).
    view.ring = claim(["a", "b"], 4)
    pending = [asyncio.ensure_future(write(i)) for i in range(2000, 2500)]
    await asyncio.sleep(0)
    await asyncio.gather(*pending)
    assert aae.status()["dormant"] is False
    await asyncio.gather(aae._build_pending(), *(write(i) for i in range(2500, 3500)))
    assert aae.status()["trees_building"] == 0
    assert exact()
    assert aae.status()["tombstones_pending"] == tombs()

    # Alone again (the other left): dormant again; a round with a member back wakes it too.
    view.ring = claim(["a"], 4)
    await write(4000)
    assert aae.status()["dormant"] is True
    view.ring = claim(["a", "b"], 4)
    await aae.tick()
    assert aae.status()["dormant"] is False
    await aae._build_pending()
    assert exact()
    await eng.close()
