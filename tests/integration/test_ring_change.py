"""Ring changes under load: a node joins a loaded cluster and another leaves, while a client
reads and writes continuously. Nothing fails, nothing goes missing, ownership ends balanced."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from kvstore.client import AsyncClient
from kvstore.core.ring import Ring, partition_of
from kvstore.testing.processes import LocalCluster, wait_until

KEYS = 10_000


async def _fill(addrs: list[str], keys: list[str]) -> None:
    async with AsyncClient(addrs) as c:
        for i in range(0, len(keys), 500):
            await asyncio.gather(*(c.put(k, k.upper()) for k in keys[i : i + 500]))


class Load(threading.Thread):
    """Reads known keys (each must come back with its value) and writes new ones."""

    def __init__(self, addrs: list[str], known: list[str], tag: str) -> None:
        super().__init__(daemon=True)
        self.tag = tag
        self.addrs = addrs
        self.known = list(known)
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.reads = 0
        self.writes = 0
        self.written: list[str] = []

    def run(self) -> None:
        asyncio.run(self._go())

    async def _go(self) -> None:
        rng = random.Random(1)
        async with AsyncClient(self.addrs, timeout_s=10.0, ring_refresh_s=0.5) as c:
            i = 0
            while not self.stop.is_set() and i < 200_000:
                i += 1
                key = rng.choice(self.known)
                try:
                    got = await c.get(key)
                    if got.values != [key.upper().encode()]:
                        self.errors.append(f"read {key}: {got.values}")
                    self.reads += 1
                except Exception as e:
                    self.errors.append(f"read {key}: {type(e).__name__}: {e}")
                if i % 4 == 0:
                    new = f"{self.tag}-{i}"
                    try:
                        await c.put(new, new.upper())
                        self.written.append(new)
                        self.writes += 1
                    except Exception as e:
                        self.errors.append(f"write {new}: {type(e).__name__}: {e}")


def _ring(c: LocalCluster, name: str) -> Ring:
    doc: dict[str, Any] = c.client(name).call(c.nodes[name].addr, "cluster.ring")
    assert doc["next"] is None
    return Ring.from_wire(doc["ring"])


def _expected_counts(ring: Ring, keys: list[str], n: int = 3) -> dict[str, int]:
    counts = dict.fromkeys(ring.members, 0)
    for k in keys:
        for node in ring.preference_list(partition_of(k.encode(), ring.partitions), n):
            counts[node] += 1
    return counts


def _check_balanced_and_counts(c: LocalCluster, keys: list[str], names: list[str]) -> None:
    ring = _ring(c, names[0])
    assert sorted(ring.members) == sorted(names)
    owned = [len(ring.owned_by(n)) for n in names]
    assert max(owned) - min(owned) <= 1, owned
    expected = _expected_counts(ring, keys)

    def counts_match() -> bool:
        for n in names:
            st = c.status(n)
            if st is None or st["keys"] != expected[n]:
                return False
        return True

    try:
        wait_until(counts_match, 90, 0.5, "each node's key count to match its ownership")
    except TimeoutError:
        actual = {n: (c.status(n) or {}).get("keys") for n in names}
        raise AssertionError(f"key counts {actual} != expected {expected}") from None


def test_join_then_leave_under_load(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=3, extra=["--handoff-drop-delay-s", "1"]) as c:
        c.start_all()
        keys = [f"key-{i}" for i in range(KEYS)]
        asyncio.run(_fill(c.addrs(), keys))

        load = Load(c.addrs(), keys, "join")
        load.start()
        try:
            wait_until(lambda: load.reads > 200, 60, what="load to start")
            # A fourth node joins through a seed (auto-join).
            c.add("n4")
            c.start("n4")
            c.wait_ring(4, timeout=180)
            reads_at_join = load.reads
            wait_until(lambda: load.reads > reads_at_join + 200, 60, what="load to continue")
        finally:
            load.stop.set()
            load.join(60)
        assert not load.errors, load.errors[:10]
        all_keys = keys + load.written
        _check_balanced_and_counts(c, all_keys, ["n1", "n2", "n3", "n4"])

        # n2 leaves through the CLI; it exits by itself once its data is handed off.
        load = Load(c.addrs("n1", "n3", "n4"), all_keys[:5000], "leave")
        load.start()
        try:
            res = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "--node",
                    c.nodes["n1"].addr,
                    "cluster",
                    "leave",
                    "n2",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert res.returncode == 0, res.stderr
            proc = c.nodes["n2"].proc
            assert proc is not None
            assert proc.wait(180) == 0
            reads_at_leave = load.reads
            wait_until(lambda: load.reads > reads_at_leave + 200, 60, what="load to continue")
        finally:
            load.stop.set()
            load.join(60)
        assert not load.errors, load.errors[:10]
        del c.nodes["n2"]
        _check_balanced_and_counts(c, all_keys + load.written, ["n1", "n3", "n4"])
