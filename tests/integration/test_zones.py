"""Zone-aware placement on real node processes: losing a whole zone keeps every key
readable at R=2, and a node restarted with another zone is moved to it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kvstore.client import AsyncClient
from kvstore.core.ring import Ring
from kvstore.testing.processes import LocalCluster, wait_until

ZONES = {"n1": "a", "n2": "b", "n3": "c", "n4": "a", "n5": "b", "n6": "c"}


def _zoned_cluster(root: Path) -> LocalCluster:
    # Generous deadlines: six processes on a shared machine can be slow to answer.
    c = LocalCluster(root, nodes=6, n=3, r=2, w=2, extra=["--request-timeout-s", "10", "--forward-timeout-s", "20"])
    for name, zone in ZONES.items():
        c.nodes[name].args += ["--zone", zone]
    return c


def _start_all(c: LocalCluster) -> None:
    """LocalCluster.start_all with room for six joins, one ring change at a time."""
    names = list(c.nodes)
    c.start(names[0])
    for name in names[1:]:
        c.start(name, wait=False)
    for name in names:
        c.wait_serving(name, timeout=120)
    c.wait_ring(len(names), timeout=180)


def _ring(c: LocalCluster, name: str) -> Ring:
    doc = c.client(name).call(c.nodes[name].addr, "cluster.ring")
    return Ring.from_wire(doc["ring"])


def test_losing_a_whole_zone_keeps_every_key_readable_at_r2(tmp_path: Path) -> None:
    keys = [f"z{i}" for i in range(2000)]
    with _zoned_cluster(tmp_path) as c:
        _start_all(c)
        ring = _ring(c, "n1")
        assert ring.zone_map == ZONES
        # Status tells every member's zone, and the zones of the ring.
        st = c.status("n2")
        assert st is not None and st["zone"] == "b" and st["zones"] == ["a", "b", "c"]
        assert {mem["name"]: mem["zone"] for mem in st["members"]} == ZONES
        # Every key's replicas are in three zones, so one zone holds one replica of each.
        lost = {"n3", "n6"}
        for k in keys:
            pl = ring.key_preference_list(k.encode(), 3)
            assert {ZONES[x] for x in pl} == {"a", "b", "c"}
            assert len(lost & set(pl)) == 1

        async def fill() -> None:
            async with AsyncClient(c.addrs("n1", "n2"), timeout_s=30.0) as kv:
                for i in range(0, len(keys), 200):
                    # W=3: every replica has each key before the zone goes.
                    await asyncio.gather(*(kv.put(k, k, w=3) for k in keys[i : i + 200]))

        asyncio.run(fill())
        for name in sorted(lost):
            c.kill(name)

        async def read_all() -> list[str]:
            async with AsyncClient(c.addrs("n1", "n2", "n4", "n5"), timeout_s=30.0) as kv:
                bad = []
                for i in range(0, len(keys), 200):
                    # strict: only the primaries count, so R=2 is met by the two replicas
                    # in the zones that are left, never by a fallback.
                    got = await asyncio.gather(
                        *(kv.get(k, r=2, strict=True) for k in keys[i : i + 200]), return_exceptions=True
                    )
                    bad += [
                        k for k, g in zip(keys[i : i + 200], got, strict=True)
                        if isinstance(g, BaseException) or g.values != [k.encode()]
                    ]
                return bad

        assert asyncio.run(read_all()) == []


def test_node_restarted_in_another_zone_is_moved_there(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=3, n=3, r=2, w=2) as c:
        for name, zone in (("n1", "a"), ("n2", "b"), ("n3", "b")):
            c.nodes[name].args += ["--zone", zone]
        _start_all(c)
        assert _ring(c, "n1").zone_map == {"n1": "a", "n2": "b", "n3": "b"}
        c.stop("n3")
        c.nodes["n3"].args += ["--zone", "c"]  # the last --zone wins
        c.start("n3")

        def moved() -> bool:
            st = c.status("n1")
            return (
                st is not None and not st["pending"] and st["zones"] == ["a", "b", "c"]
                and _ring(c, "n2").zone_of("n3") == "c"
            )

        wait_until(moved, 120, 0.2, "the ring to place n3 in zone c")
