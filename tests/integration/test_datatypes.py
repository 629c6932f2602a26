"""Convergent data types on real node processes: updates coordinated by different nodes at
once, a coordinator killed mid-stream, forwarding from a node outside the preference list,
sets with observed removes, maps, `kv incr` / `kv get` from the command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from kvstore.client import AsyncClient
from kvstore.errors import InvalidRequest, KVError
from kvstore.testing.processes import LocalCluster, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Four nodes, N=3: some node is outside each key's preference list and must forward.
    with LocalCluster(tmp_path_factory.mktemp("datatypes"), nodes=4) as c:
        c.start_all()
        yield c


def _incr_from(addrs: list[str], key: str, count: int) -> tuple[int, int]:
    """``count`` increments of 1 from each address at once (one coordinator each):
    (acknowledged, outcome unknown)."""

    async def one(addr: str) -> tuple[int, int]:
        ok = unknown = 0
        async with AsyncClient([addr], route=False, timeout_s=5.0) as kv:
            for _ in range(count):
                try:
                    await kv.incr(key)
                    ok += 1
                except KVError:
                    unknown += 1
        return ok, unknown

    async def all_() -> list[tuple[int, int]]:
        return await asyncio.gather(*(one(a) for a in addrs))

    res = asyncio.run(all_())
    return sum(r[0] for r in res), sum(r[1] for r in res)


def test_concurrent_increments_from_every_node_all_count(cluster: LocalCluster) -> None:
    ok, unknown = _incr_from(cluster.addrs(), "hits", 40)
    assert unknown == 0 and ok == 160
    for name in cluster.nodes:
        got = cluster.client(name, route=False).fetch("hits", "counter")
        assert got.found and got.type == "counter" and got.value == 160


def test_update_via_a_node_outside_the_preference_list_is_forwarded(cluster: LocalCluster) -> None:
    for i in range(8):
        key = f"fwd-{i}"
        for name in cluster.nodes:
            assert cluster.client(name, route=False).incr(key, 2).type == "counter"
        assert cluster.client("n1").fetch(key).value == 8
    forwarded = [cluster.status(n)["counters"]["forwarded"] for n in cluster.nodes]  # type: ignore[index]
    assert sum(forwarded) > 0


def test_set_add_remove_and_add_wins_over_a_remove_that_did_not_see_it(cluster: LocalCluster) -> None:
    c1, c2, c3 = (cluster.client(n, route=False) for n in ("n1", "n2", "n3"))
    assert c1.add("tags", "a", "b", "c").value == [b"a", b"b", b"c"]
    c2.remove("tags", "b")
    assert c3.fetch("tags").value == [b"a", b"c"]
    seen = c3.fetch("tags")
    c1.add("tags", "a")                      # a new add of a, after that read
    c2.remove("tags", "a", "c", context=seen.context)  # removes only the adds the read saw
    assert c3.fetch("tags", "set").value == [b"a"]


def test_map_fields_and_field_removal(cluster: LocalCluster) -> None:
    c1, c2 = cluster.client("n1", route=False), cluster.client("n2", route=False)
    c1.update_map("user:1", [("visits", "counter", {"incr": 3}), ("name", "register", {"set": b"ann"})])
    c2.update_map("user:1", [("visits", "counter", {"incr": 2}), ("tags", "set", {"add": [b"x"]}),
                             ("admin", "flag", {"enable": True})])
    got = c1.fetch("user:1", "map")
    assert got.value == {
        "admin_flag": True, "name_register": b"ann", "tags_set": [b"x"], "visits_counter": 5,
    }
    c2.update_map("user:1", removes=[("visits", "counter")])
    c1.update_map("user:1", [("visits", "counter", {"incr": 1})])
    assert c2.fetch("user:1").value["visits_counter"] == 1  # reset by the remove, then counted on


def test_wrong_type_and_plain_values_are_refused(cluster: LocalCluster) -> None:
    c = cluster.client("n1")
    c.incr("typed", 1)
    with pytest.raises(InvalidRequest, match="holds a counter"):
        c.add("typed", "x")
    c.put("plain", "v")
    with pytest.raises(InvalidRequest, match="plain value"):
        c.incr("plain")
    with pytest.raises(InvalidRequest, match="data type"):
        c.update("typed", "nonsense", {"incr": 1})
    with pytest.raises(InvalidRequest):
        c.update("typed", "counter", {"incr": "many"})


def test_kv_incr_add_and_get_show_plain_values(cluster: LocalCluster) -> None:
    env = {**os.environ, "KV_NODES": ",".join(cluster.addrs())}

    def kv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, timeout=60)

    assert kv("incr", "cli-count", "5").stdout.strip() == "5"
    assert kv("incr", "cli-count", "--", "-2").stdout.strip() == "3"
    got = kv("get", "cli-count")
    assert got.returncode == 0 and got.stdout.strip() == "3"
    kv("add", "cli-set", "b", "a")
    assert kv("get", "cli-set").stdout.split() == ["a", "b"]
    kv("remove", "cli-set", "a")
    assert kv("fetch", "cli-set").stdout.split() == ["b"]
    res = kv("map", "cli-map", "--incr", "n=2", "--add", "s=m", "--enable", "on", "--json")
    assert res.returncode == 0, res.stderr
    assert '"n_counter": 2' in res.stdout and '"on_flag": true' in res.stdout
    got = kv("get", "cli-map", "--json")
    assert got.returncode == 0 and '"type": "map"' in got.stdout and '"s_set": [' in got.stdout
    assert kv("fetch", "no-such-counter").returncode == 1
    bad = kv("incr", "cli-set")
    assert bad.returncode == 2 and "holds a set" in bad.stderr


def test_increments_survive_a_coordinator_killed_mid_stream(cluster: LocalCluster) -> None:
    """Two coordinators increment at once; one is killed -9 part way. Every acknowledged
    increment counts, and at most the unknown ones besides; after a restart (a new actor
    epoch on the killed node) its increments count again."""
    addrs = cluster.addrs("n1", "n2")

    async def run() -> tuple[int, int]:
        ok = unknown = 0
        stop = asyncio.Event()

        async def worker(addr: str) -> None:
            nonlocal ok, unknown
            async with AsyncClient([addr], route=False, timeout_s=3.0) as kv:
                for _ in range(150):
                    try:
                        await kv.incr("survivor")
                        ok += 1
                    except KVError:
                        unknown += 1
                        if stop.is_set():
                            return
                        await asyncio.sleep(0.05)

        async def killer() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(cluster.kill, "n2")
            stop.set()

        await asyncio.gather(worker(addrs[0]), worker(addrs[1]), killer())
        return ok, unknown

    ok, unknown = asyncio.run(run())
    assert ok > 0
    c = cluster.client("n1", "n3", "n4")

    def in_range() -> bool:
        v = c.fetch("survivor").value
        return bool(ok <= v <= ok + unknown)

    wait_until(in_range, 30, what="the counter to hold every acknowledged increment")
    before = c.fetch("survivor").value
    cluster.start("n2")
    n2 = cluster.client("n2", route=False)
    for _ in range(10):
        n2.incr("survivor")
    wait_until(lambda: c.fetch("survivor", r=3).value == before + 10, 30, what="increments after the restart")
