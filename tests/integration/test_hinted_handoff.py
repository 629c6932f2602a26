"""Sloppy quorum and hinted handoff with real node processes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kvstore.client import AsyncClient
from kvstore.core.ring import Ring, partition_of
from kvstore.errors import Unavailable
from kvstore.testing.processes import LocalCluster, wait_until


def _hints(c: LocalCluster, name: str) -> dict[str, Any]:
    return c.client(name).call(c.nodes[name].addr, "cluster.hints")  # type: ignore[no-any-return]


def test_down_node_gets_its_writes_from_hints_when_back(tmp_path: Path) -> None:
    keys = [f"h{i}" for i in range(5000)]
    with LocalCluster(tmp_path, nodes=3, extra=["--hint-interval-s", "0.2"]) as c:
        c.start_all()
        c.kill("n3")

        async def fill() -> None:
            async with AsyncClient(c.addrs("n1", "n2")) as kv:
                for i in range(0, len(keys), 250):
                    await asyncio.gather(*(kv.put(k, k) for k in keys[i : i + 250]))

        asyncio.run(fill())
        # With three nodes there is no fallback beyond the preference list: coordinators keep
        # the hints for n3 themselves (a hint is kept once n3's failure is seen, which may be
        # just after the write was acknowledged by the other two).
        wait_until(
            lambda: sum(_hints(c, n)["pending"].get("n3", 0) for n in ("n1", "n2")) >= len(keys),
            60,
            0.2,
            "a hint for n3 of every write",
        )
        c.start("n3")
        wait_until(
            lambda: all(not _hints(c, n)["pending"] for n in ("n1", "n2", "n3")),
            120,
            0.5,
            "the hint stores to drain",
        )
        delivered = sum(_hints(c, n)["delivered"] for n in ("n1", "n2"))
        assert delivered >= len(keys)

        async def read_alone() -> list[str]:
            async with AsyncClient(c.addrs("n3"), route=False) as kv:
                missing = []
                for i in range(0, len(keys), 500):
                    got = await asyncio.gather(*(kv.get(k, r=1) for k in keys[i : i + 500]))
                    missing += [
                        k
                        for k, g in zip(keys[i : i + 500], got, strict=True)
                        if g.values != [k.encode()]
                    ]
                return missing

        assert asyncio.run(read_alone()) == []


def test_sloppy_quorum_uses_fallbacks_and_strict_quorum_refuses(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=5, extra=["--hint-interval-s", "0.2"]) as c:
        c.start_all()
        doc = c.client("n1").call(c.nodes["n1"].addr, "cluster.ring")
        ring = Ring.from_wire(doc["ring"])
        key = b"sloppy"
        p = partition_of(key, ring.partitions)
        coord, down1, down2 = ring.preference_list(p, 3)
        fallbacks = ring.fallbacks(p, 3)
        c.kill(down1)
        c.kill(down2)
        kv = c.client(coord, route=False)
        kv.put(key, b"v")  # two primaries down: the write goes to fallbacks with hints
        with pytest.raises(Unavailable) as ei:
            kv.put(key, b"strict", strict=True)
        # Two of three primaries known down: refused at once, stored nowhere.
        assert ei.value.required == 2 and ei.value.answered == 0
        assert kv.get(key, r=1).values == [b"v"]
        # The reply came with W (the coordinator and one stand-in); the other stand-in's copy
        # may still be on its way, so its hint is waited for, not expected at once.
        held: dict[str, dict[str, int]] = {}

        def both_hinted() -> bool:
            held.update({f: _hints(c, f)["pending"] for f in fallbacks})
            return sum(h.get(down1, 0) + h.get(down2, 0) for h in held.values()) >= 2

        wait_until(both_hinted, 30, 0.1, "a hint for each of the two down primaries")
        c.start(down1)
        c.start(down2)
        wait_until(
            lambda: all(not _hints(c, f)["pending"] for f in fallbacks),
            120,
            0.5,
            "fallbacks to hand their hints home",
        )
        for node in (down1, down2):
            got = c.client(node, route=False).get(key, r=1)
            assert (
                sorted(got.values) == [b"strict", b"v"]
                or got.values == [b"v"]
                or b"v" in got.values
            )


def test_hints_larger_than_a_frame_together_are_all_delivered(tmp_path: Path) -> None:
    """Ten hints of ~1 MiB for one target: together they exceed max_frame_bytes, so they must
    go in batches bounded by bytes, not in one call that can never be sent."""
    with LocalCluster(tmp_path, nodes=3, extra=["--hint-interval-s", "0.2"]) as c:
        c.start_all()
        c.kill("n3")
        kv = c.client("n1", route=False)  # n1 coordinates (and keeps the hints for) every key
        values = {f"large-{i}": bytes([i]) * (1024 * 1024 - 64) for i in range(10)}
        for k, v in values.items():
            kv.put(k, v, w=2)
        # W=2 is met by n1 and n2, so a put can return before its call to n3 has failed and
        # the hint it leaves is kept: the last hints come a moment after the last put.
        wait_until(lambda: _hints(c, "n1")["pending"] == {"n3": 10}, 60, 0.2, "n1 to keep all 10 hints for n3")
        c.start("n3")
        wait_until(lambda: not _hints(c, "n1")["pending"], 120, 0.5, "n1's hints for n3 to be delivered")
        st = _hints(c, "n1")
        assert st["delivered"] == 10 and st["refused_invalid"] == 0, st
        alone = c.client("n3", route=False)
        for k, v in values.items():
            assert alone.get(k, r=1).values == [v], k
