"""Ownership handoff survives a crash of the receiving node in the middle of a transfer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kvstore.client import AsyncClient
from kvstore.core.ring import Ring, partition_of
from kvstore.testing.processes import LocalCluster, wait_until

KEYS = [f"r{i}" for i in range(20_000)]


def _handoff(c: LocalCluster, name: str) -> dict[str, Any] | None:
    try:
        return c.client(name).call(c.nodes[name].addr, "handoff.status")  # type: ignore[no-any-return]
    except Exception:
        return None


def test_a_joining_node_killed_mid_transfer_resumes_and_completes(tmp_path: Path) -> None:
    # Small batches so the transfer takes long enough to be caught half-way.
    with LocalCluster(tmp_path, nodes=3, extra=["--handoff-batch-keys", "5", "--handoff-drop-delay-s", "1"]) as c:
        c.start_all()

        async def fill() -> None:
            async with AsyncClient(c.addrs()) as kv:
                for i in range(0, len(KEYS), 500):
                    await asyncio.gather(*(kv.put(k, k) for k in KEYS[i : i + 500]))

        asyncio.run(fill())
        c.add("n4")
        c.start("n4")

        def half_way() -> bool:
            st = _handoff(c, "n4")
            return st is not None and st["needed"] > 0 and st["keys_moved"] > 0 and not st["complete"]

        wait_until(half_way, 60, 0.02, "n4 to be part-way through its transfers")
        moved_before = _handoff(c, "n4")["keys_moved"]  # type: ignore[index]
        c.kill("n4")
        c.start("n4")

        def transfer_reported() -> dict[str, Any] | None:
            # Right after a start the pending change may not have its transfer yet (needed
            # -1): that is "not loaded yet", not "started over".
            st = _handoff(c, "n4")
            return st if st is not None and (st["needed"] >= 0 or not st["pending"]) else None

        st = wait_until(transfer_reported, 60, 0.05, "n4 to report its resumed transfer")
        if st["pending"]:
            # Resumed from its persisted cursors, not from the start.
            assert st["keys_moved"] >= moved_before
        c.wait_ring(4, timeout=180)
        doc = c.client("n1").call(c.nodes["n1"].addr, "cluster.ring")
        ring = Ring.from_wire(doc["ring"])
        expected = sum(1 for k in KEYS if "n4" in ring.preference_list(partition_of(k.encode(), ring.partitions), 3))

        def n4_holds_its_keys() -> bool:
            s = c.status("n4")
            return s is not None and s["keys"] == expected

        wait_until(n4_holds_its_keys, 120, 0.5, "n4 to hold exactly the keys it replicates")
        with c.client("n4", route=False) as alone:
            for k in KEYS[:: 97]:
                if "n4" in ring.preference_list(partition_of(k.encode(), ring.partitions), 3):
                    assert alone.get(k, r=1).value == k.encode()
