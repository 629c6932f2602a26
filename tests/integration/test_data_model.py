"""Conditional writes, TTL and batches on real node processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from kvstore.core import bucket as bk
from kvstore.core import messages as m
from kvstore.core import vclock
from kvstore.core.ring import Ring, partition_of
from kvstore.errors import KVError, PreconditionFailed, UnknownBucket
from kvstore.testing.processes import LocalCluster, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("datamodel"), nodes=3, extra=["--ttl-sweep-interval-s", "0.2"]) as c:
        c.start_all()
        yield c


def call(c: LocalCluster, name: str, method: str, *params: object) -> Any:
    return c.client(name, route=False).call(c.nodes[name].addr, method, *params)


def records(c: LocalCluster, skey: bytes) -> dict[str, vclock.Obj | None]:
    ring = Ring.from_wire(call(c, "n1", m.RING)["ring"])
    p = partition_of(skey, ring.partitions)
    out: dict[str, vclock.Obj | None] = {}
    for name in c.nodes:
        rec = call(c, name, m.REPLICA_GET, p, skey)
        out[name] = None if rec is None else vclock.decode(bytes(rec))
    return out


# ---------------------------------------------------------------------- conditional writes


def test_if_none_match_creates_only_once(cluster: LocalCluster) -> None:
    kv = cluster.client()
    kv.put("once", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed, match="key exists") as e:
        kv.put("once", b"second", if_none_match=True)
    assert e.value.extra["reason"] == "exists"
    assert kv.get("once").values == [b"first"]
    # A deleted key is absent: if_none_match may create it again, superseding the tombstone.
    kv.delete("once")
    kv.put("once", b"again", if_none_match=True)
    assert kv.get("once").values == [b"again"]


def test_if_not_modified_writes_only_over_what_was_read(cluster: LocalCluster) -> None:
    kv = cluster.client()
    kv.put("cas", b"v1")
    seen = kv.get("cas")
    kv.put("cas", b"v2", if_not_modified=seen.context)
    with pytest.raises(PreconditionFailed, match="modified") as e:
        kv.put("cas", b"v3", if_not_modified=seen.context)  # the context of v1: stale now
    assert e.value.extra["reason"] == "modified"
    assert kv.get("cas").values == [b"v2"]
    # Deletes take the condition too.
    with pytest.raises(PreconditionFailed):
        kv.delete("cas", if_not_modified=seen.context)
    kv.delete("cas", if_not_modified=kv.get("cas").context)
    assert not kv.get("cas").found


def test_conditions_work_in_a_bucket_and_through_a_forwarding_node(cluster: LocalCluster) -> None:
    call(cluster, "n1", m.BUCKET_CREATE, "locks", {"n": 1, "r": 1, "w": 1})
    wait_until(lambda: all(_knows(cluster, n, "locks") for n in cluster.nodes), 30, what="bucket")
    wins = 0
    for name in cluster.nodes:  # two of the three forward (N=1)
        try:
            cluster.client(name, route=False).put("lock", name.encode(), bucket="locks", if_none_match=True)
            wins += 1
        except PreconditionFailed:
            pass
    assert wins == 1


def _knows(c: LocalCluster, name: str, bucket: str) -> bool:
    try:
        call(c, name, m.BUCKET_SHOW, bucket)
        return True
    except UnknownBucket:
        return False


# ---------------------------------------------------------------------- TTL


def test_a_value_with_a_ttl_reads_absent_once_expired_and_is_swept_to_a_tombstone(cluster: LocalCluster) -> None:
    kv = cluster.client()
    kv.put("short", b"v", ttl_s=1.0, w=3)
    kv.put("long", b"v", ttl_s=3600)
    t0 = time.monotonic()
    got = kv.get("short")
    if time.monotonic() - t0 < 0.9:  # (a very slow machine may already be past the second)
        assert got.values == [b"v"]
    wait_until(lambda: not kv.get("short").found, 30, what="the value to expire")
    # Every replica ends with a tombstone, written through the normal path (a versioned
    # delete that covers the expired value, so nothing can bring it back).
    wait_until(
        lambda: all(o is not None and vclock.is_deleted(o) for o in records(cluster, b"short").values()),
        30, what="the sweep's tombstone on every replica",
    )
    assert kv.get("long").values == [b"v"]
    # A rewrite without TTL does not expire.
    kv.put("short", b"kept", context=kv.get("short").context)
    time.sleep(1.5)
    assert kv.get("short").values == [b"kept"]


def test_a_bucket_ttl_applies_unless_the_write_says_otherwise(cluster: LocalCluster) -> None:
    call(cluster, "n2", m.BUCKET_CREATE, "sessions", {"ttl_s": 1})
    wait_until(lambda: all(_knows(cluster, n, "sessions") for n in cluster.nodes), 30, what="bucket")
    kv = cluster.client()
    kv.put("s1", b"x", bucket="sessions")
    kv.put("s2", b"y", bucket="sessions", ttl_s=0)  # never expires
    wait_until(lambda: not kv.get("s1", bucket="sessions").found, 30, what="s1 to expire")
    assert kv.get("s2", bucket="sessions").values == [b"y"]
    skey = bk.storage_key("sessions", b"s1")
    wait_until(
        lambda: all(o is None or vclock.is_deleted(o) for o in records(cluster, skey).values()),
        30, what="s1's tombstone",
    )


def test_an_expired_value_does_not_come_back_from_a_replica_that_missed_the_sweep(cluster: LocalCluster) -> None:
    kv = cluster.client()
    kv.put("gone", b"v", ttl_s=1.0, w=3)
    # A concurrent write without TTL is a sibling that must survive the sweep.
    kv.put("mixed", b"brief", ttl_s=1.0, w=3)
    kv.put("mixed", b"stays", w=3)
    cluster.stop("n3")
    try:
        wait_until(
            lambda: all(o is not None and vclock.is_deleted(o) for n, o in records_up(cluster, b"gone").items()),
            30, what="the tombstone on the live replicas",
        )
    finally:
        cluster.start("n3")
    cluster.wait_ring(3)
    # n3 still holds the expired value; an R=3 read sees absent and repairs n3.
    wait_until(lambda: _read3(cluster, "gone") == [], 30, what="an R=3 read finding it absent")
    wait_until(
        lambda: all(o is not None and vclock.is_deleted(o) for o in records(cluster, b"gone").values()),
        30, what="n3 repaired to the tombstone",
    )
    wait_until(lambda: _read3(cluster, "mixed") == [b"stays"], 30, what="mixed read at R=3")
    time.sleep(1.0)  # a few sweeps: the live sibling keeps the key from being tombstoned
    assert kv.get("mixed").values == [b"stays"]


def _read3(c: LocalCluster, key: str) -> list[bytes] | None:
    """An R=3 read through n3, None while a peer is still seen as restarting."""
    try:
        return c.client("n3", route=False).get(key, r=3).values
    except KVError:
        return None


def records_up(c: LocalCluster, skey: bytes) -> dict[str, vclock.Obj | None]:
    ring = Ring.from_wire(call(c, "n1", m.RING)["ring"])
    p = partition_of(skey, ring.partitions)
    out: dict[str, vclock.Obj | None] = {}
    for name, node in c.nodes.items():
        if node.running:
            rec = call(c, name, m.REPLICA_GET, p, skey)
            out[name] = None if rec is None else vclock.decode(bytes(rec))
    return out


def test_expired_keys_are_swept_after_a_restart(cluster: LocalCluster) -> None:
    kv = cluster.client()
    kv.put("restart-ttl", b"v", ttl_s=2.0, w=3)
    for name in cluster.nodes:
        cluster.stop(name)
    for name in cluster.nodes:
        cluster.start(name, wait=False)
    for name in cluster.nodes:
        cluster.wait_serving(name)
    cluster.wait_ring(3)
    wait_until(
        lambda: all(o is not None and vclock.is_deleted(o) for o in records(cluster, b"restart-ttl").values()),
        60, what="the tombstone after a restart (the expiry index is rebuilt on start)",
    )


# ---------------------------------------------------------------------- batches


def test_put_many_and_get_many_cost_one_call_per_coordinator(cluster: LocalCluster) -> None:
    kv = cluster.client()
    calls: list[str] = []

    class Counting:
        """The client's RpcClient, its calls counted (a compiled class takes no new methods)."""

        def __init__(self, rpc: Any) -> None:
            self._rpc = rpc

        def __getattr__(self, name: str) -> Any:
            return getattr(self._rpc, name)

        async def call(self, addr: str, method: str, params: list[Any], timeout: float) -> Any:
            calls.append(method)
            return await self._rpc.call(addr, method, params, timeout)

    kv._c.rpc = Counting(kv._c.rpc)
    kv.get("warm-the-ring")
    calls.clear()
    items = [(f"batch-{i}", f"value-{i}") for i in range(60)]
    res = kv.put_many(items)
    assert all(not isinstance(r, KVError) for r in res)
    assert calls.count(m.PUT_MANY) <= 3 and set(calls) == {m.PUT_MANY}
    calls.clear()
    got = kv.get_many([k for k, _ in items] + ["batch-missing"])
    assert calls.count(m.GET_MANY) <= 3 and set(calls) == {m.GET_MANY}
    assert [g.value for g in got[:-1]] == [v.encode() for _, v in items]  # type: ignore[union-attr]
    assert not got[-1].found  # type: ignore[union-attr]


def test_batches_take_buckets_and_report_each_item_on_its_own(cluster: LocalCluster) -> None:
    call(cluster, "n1", m.BUCKET_CREATE, "batchb", {"n": 2})
    wait_until(lambda: all(_knows(cluster, n, "batchb") for n in cluster.nodes), 30, what="bucket")
    kv = cluster.client()
    res = kv.put_many([("a", "1"), ("b", "2")], bucket="batchb")
    assert all(not isinstance(r, KVError) for r in res)
    got = kv.get_many(["a", "b"], bucket="batchb")
    assert [g.value for g in got] == [b"1", b"2"]  # type: ignore[union-attr]
    assert not kv.get("a").found  # not in the default bucket
    bad = kv.get_many(["a"], bucket="no-such")
    assert isinstance(bad[0], UnknownBucket)
    # Deletes in a batch, and an item with a bad key failing alone.
    res = kv.put_many([("a", None), (b"\x00\xffkvbX", "bad")], bucket="batchb")
    assert not isinstance(res[0], KVError) and isinstance(res[1], KVError)
    assert not kv.get("a", bucket="batchb").found
    # Through a node that coordinates none of them: forwarded item by item, same answers.
    raw = cluster.client("n3", route=False)
    assert [g.value for g in raw.get_many(["b", "a"], bucket="batchb")] == [b"2", None]  # type: ignore[union-attr]


def test_a_batch_whose_coordinator_is_down_goes_item_by_item(cluster: LocalCluster) -> None:
    kv = cluster.client()
    items = [(f"down-{i}", str(i)) for i in range(1200)]  # more than one call's 1000 items
    assert all(not isinstance(r, KVError) for r in kv.put_many(items, w=3))
    cluster.stop("n2")
    try:
        got = kv.get_many([k for k, _ in items])
        assert [g.value for g in got] == [v.encode() for _, v in items]  # type: ignore[union-attr]
        res = kv.put_many([(k, "again") for k, _ in items[:50]])
        # Calls to n2 were refused before anything was sent: safe to send item by item.
        assert all(not isinstance(r, KVError) for r in res), [r for r in res if isinstance(r, KVError)][:3]
    finally:
        cluster.start("n2")
    cluster.wait_ring(3)
