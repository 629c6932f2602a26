"""A real 3-node (and 4-node) cluster of node processes on loopback: Dynamo's semantics end to end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from kvstore.client import AsyncClient, Client, Conflict
from kvstore.core.ring import Ring, partition_of
from kvstore.errors import InvalidRequest, TooLarge, Unavailable
from kvstore.testing.processes import LocalCluster, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster3"), nodes=3) as c:
        c.start_all()
        yield c


def test_put_get_delete_through_every_node(cluster: LocalCluster) -> None:
    for i, name in enumerate(cluster.nodes):
        c = cluster.client(name, route=False)
        c.put(f"key-{i}", f"value-{i}")
    for i in range(3):
        for name in cluster.nodes:
            assert cluster.client(name, route=False).get(f"key-{i}").value == f"value-{i}".encode()
    c = cluster.client("n1", route=False)
    got = c.get("key-0")
    c.delete("key-0", context=got.context)
    for name in cluster.nodes:
        res = cluster.client(name, route=False).get("key-0")
        assert res.values == [] and not res.found


def test_raw_msgpack_rpc_client_with_str_params(cluster: LocalCluster) -> None:
    """Any msgpack-RPC client can call a node; old ones send str where bytes are meant."""
    import socket

    host, port = cluster.nodes["n1"].addr.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        unp = msgpack.Unpacker(raw=False)
        replies: dict[int, list] = {}  # type: ignore[type-arg]

        def call(msg: list) -> None:  # type: ignore[type-arg]
            s.sendall(msgpack.packb(msg, use_bin_type=False))
            while msg[1] not in replies:
                unp.feed(s.recv(65536))
                for reply in unp:
                    replies[reply[1]] = reply

        # One at a time: pipelined, the get could be served before the put completes.
        call([0, 1, "put", ["raw-key", "raw-value", None, {}]])
        call([0, 2, "get", ["raw-key", {}]])
        call([0, 3, "no.such.method", []])
    assert replies[1][2] is None
    assert replies[2][3]["values"] == [b"raw-value"]
    assert replies[3][2]["code"] == "unknown_method"
    assert "no.such.method" in replies[3][2]["message"]


def test_concurrent_writes_become_siblings_and_a_context_resolves_them(
    cluster: LocalCluster,
) -> None:
    a = cluster.client("n1", route=False)
    b = cluster.client("n2", route=False)
    base = a.put("shared", "base")
    a.put("shared", "from-a", context=base.context)
    b.put("shared", "from-b", context=base.context)
    res = a.get("shared", r=3)
    assert sorted(res.values) == [b"from-a", b"from-b"]
    with pytest.raises(Conflict):
        _ = res.value
    b.put("shared", "merged", context=res.context)
    for name in cluster.nodes:
        assert cluster.client(name, route=False).get("shared", r=3).values == [b"merged"]


def test_blind_writes_without_context_are_all_kept(cluster: LocalCluster) -> None:
    c = cluster.client()
    for i in range(3):
        c.put("blind", f"v{i}")
    assert sorted(c.get("blind", r=3).values) == [b"v0", b"v1", b"v2"]


def test_r_and_w_overrides(cluster: LocalCluster) -> None:
    c = cluster.client()
    c.put("rw", "x", w=3)
    assert c.get("rw", r=3).value == b"x"
    assert c.get("rw", r=1).value == b"x"
    with pytest.raises(InvalidRequest):
        c.get("rw", r=4)
    with pytest.raises(InvalidRequest):
        c.put("rw", "y", w=0)


def test_oversize_key_or_value_is_rejected_and_nothing_stored(cluster: LocalCluster) -> None:
    c = cluster.client()
    with pytest.raises(TooLarge):
        c.put("big", b"x" * (1024 * 1024 + 1))
    assert c.get("big", r=3).values == []
    with pytest.raises(TooLarge):
        c.put(b"k" * (64 * 1024 + 1), "v")
    for name in cluster.nodes:
        st = cluster.status(name)
        assert st is not None
    # The largest allowed value goes through.
    c.put("big", b"y" * (1024 * 1024))
    assert c.get("big").value == b"y" * (1024 * 1024)


def test_forwarding_from_a_node_outside_the_preference_list(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=4, n=2, r=1, w=2) as c:
        c.start_all()
        doc = c.client("n1").call(c.nodes["n1"].addr, "cluster.ring")
        ring = Ring.from_wire(doc["ring"])
        # Find a key that n1 does not hold, then write and read it through n1.
        key = next(
            f"fw-{i}".encode()
            for i in range(10_000)
            if "n1"
            not in ring.preference_list(partition_of(f"fw-{i}".encode(), ring.partitions), 2)
        )
        n1 = c.client("n1", route=False)
        n1.put(key, "forwarded")
        assert n1.get(key).value == b"forwarded"
        st = c.status("n1")
        assert st is not None and st["counters"]["forwarded"] >= 2
        assert st["keys"] == 0  # n1 stored nothing: it only forwarded


def test_one_node_killed_quorum_still_works_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    with LocalCluster(tmp_path, nodes=3) as c:
        c.start_all()
        client = c.client()
        for i in range(300):
            client.put(f"k{i}", f"v{i}")
        c.kill("n3")
        for i in range(300, 400):
            client.put(f"k{i}", f"v{i}")
        for i in range(400):
            assert client.get(f"k{i}").value == f"v{i}".encode()
        # Two of three down: Unavailable names how many answered. Once the survivor knows both
        # peers are down, the write cannot reach W and is refused before anything is stored
        # (asked at once instead, it would race the failure detector: 1 or 0 answered). "Knows"
        # is SWIM's verdict, dead: "up" also goes false on a failed connect, but only for the
        # reconnect backoff, and a merely suspect peer is still tried (CI saw 1 answered).
        c.kill("n2")
        wait_until(
            lambda: all(m["state"] == "dead" for m in c.status("n1")["members"] if m["name"] != "n1"),  # type: ignore[index]
            60, what="n1's SWIM to declare n2 and n3 dead",
        )  # fmt: skip
        survivor = c.client("n1", route=False, timeout_s=3.0)
        with pytest.raises(Unavailable) as ei:
            survivor.put("k-unavailable", "v")
        assert ei.value.answered == 0 and ei.value.required == 2
        assert "0 of 2" in str(ei.value)
        with pytest.raises(Unavailable):
            survivor.get("k0")
        # R=1 still reads from the survivor.
        assert survivor.get("k1", r=1).value == b"v1"


def test_whole_cluster_restart_keeps_every_key(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=3) as c:
        c.start_all()
        client = c.client()
        for i in range(500):
            client.put(f"r{i}", f"v{i}")
        for name in c.nodes:
            assert c.stop(name) == 0
        c.start_all()
        client2 = c.client()
        for i in range(500):
            assert client2.get(f"r{i}", r=3).value == f"v{i}".encode()


def test_async_client_pipelines_many_requests(cluster: LocalCluster) -> None:
    async def go() -> None:
        async with AsyncClient(cluster.addrs()) as c:
            await asyncio.gather(*(c.put(f"async-{i}", f"{i}") for i in range(500)))
            got = await asyncio.gather(*(c.get(f"async-{i}") for i in range(500)))
            assert [g.value for g in got] == [f"{i}".encode() for i in range(500)]

    asyncio.run(go())


def test_sync_client_basic_contract(cluster: LocalCluster) -> None:
    with Client(cluster.addrs("n2")) as c:
        assert c.get("never-written").value is None
        r = c.put("contract", "1")
        assert isinstance(r.context, bytes) and r.context
        wait_until(lambda: c.get("contract", r=3).value == b"1", 10)


def test_concurrent_same_context_puts_through_one_coordinator_keep_both(cluster: LocalCluster) -> None:
    """Regression: two puts with one context arriving in the same loop turn at one
    coordinator both survive as siblings (the second must build on the first)."""

    async def go() -> list[list[bytes]]:
        addr = cluster.addrs("n1")
        async with AsyncClient(addr, route=False) as a, AsyncClient(addr, route=False) as b:
            out = []
            for i in range(20):
                key = f"race-{i}"
                await a.put(key, b"base")
                seen = await a.get(key)
                await asyncio.gather(
                    a.put(key, b"x", context=seen.context), b.put(key, b"y", context=seen.context)
                )
                out.append(sorted((await a.get(key, r=3)).values))
            return out

    assert asyncio.run(go()) == [[b"x", b"y"]] * 20


def test_nodes_all_seeded_with_each_other_form_one_cluster(tmp_path: Path) -> None:
    """Containers and StatefulSets start every node at once, each seeded with the others:
    the lowest address founds the ring, the others join it."""
    with LocalCluster(tmp_path, nodes=3) as c:
        addrs = c.addrs()
        for node in c.nodes.values():
            args = [a for a in node.args]
            while "--seed" in args:
                i = args.index("--seed")
                del args[i : i + 2]
            node.args = args + [x for a in addrs if a != node.addr for x in ("--seed", a)]
        for name in c.nodes:
            c.start(name, wait=False)
        for name in c.nodes:
            c.wait_serving(name, timeout=60)
        c.wait_ring(3, timeout=60)
        c.client().put("everyone", "seeded")
        assert c.client(route=False).get("everyone", r=3).value == b"seeded"
