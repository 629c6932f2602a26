"""Tombstone collection without resurrection, with real node processes.

A key deleted while one replica is down must not be collected while that replica could
still hold the old value (it would bring the value back through anti-entropy, read repair
or handoff). Once every replica holds the identical tombstone and the grace period has
passed, it is removed everywhere.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from kvstore.core import vclock
from kvstore.core.ring import Ring, partition_of
from kvstore.errors import Unavailable
from kvstore.testing.processes import LocalCluster, wait_until

Q = 256
AAE_FLAGS = [
    "--aae-interval-s", "0.3",
    "--aae-exchanges-per-min", "6000",
    "--aae-max-repairs-per-s", "5000",
]
# Hints must expire before tombstones may be collected (config.py refuses otherwise), so a
# short grace needs a shorter hint age: hints for a node away longer than that are dropped
# and anti-entropy alone brings it the tombstones.
GRACE = ["--tombstone-grace-s", "1", "--hint-max-age-s", "0.5", "--max-clock-skew-s", "0.25"]


class Nodes:
    """One admin client per node (the same helper as in test_antientropy.py)."""

    def __init__(self, c: LocalCluster) -> None:
        self.c = c
        self.clients = {name: c.client(name, route=False) for name in c.nodes}

    def call(self, name: str, method: str, *params: Any) -> Any:
        return self.clients[name].call(self.c.nodes[name].addr, method, *params)

    def status(self, name: str) -> dict[str, Any]:
        return self.call(name, "aae.status")  # type: ignore[no-any-return]

    def raw(self, name: str, key: bytes) -> bytes | None:
        rec = self.call(name, "replica.get", partition_of(key, Q), key)
        return None if rec is None else bytes(rec)

    def agree(self) -> bool:
        rs = [self.call(n, "aae.roots", list(range(Q))) for n in self.c.nodes]
        return all(None not in r for r in rs) and all(r == rs[0] for r in rs)


def _reads_empty(c: LocalCluster, names: list[str], keys: list[bytes]) -> bool:
    """Every key reads as absent at R=1 through each of ``names`` as coordinator."""
    for name in names:
        kv = c.client(name, route=False)
        for k in keys:
            assert kv.get(k, r=1).values == [], f"{k!r} reappeared on a read through {name}"
    return True


@pytest.mark.parametrize("hints", [True, False], ids=["with-hints", "aae-only"])
def test_delete_while_a_replica_is_down_never_resurrects(tmp_path: Path, hints: bool) -> None:
    extra = [*AAE_FLAGS, *GRACE, *([] if hints else ["--max-hints", "0"])]
    with LocalCluster(tmp_path, nodes=3, extra=extra) as c:
        c.start_all()
        nodes = Nodes(c)
        kv = c.client("n1", "n2")
        keys = [f"tomb-{i}".encode() for i in range(20)]
        for k in keys:
            kv.put(k, b"alive", w=3)
        ctx = {k: kv.get(k, r=3).context for k in keys}
        wait_until(nodes.agree, 30, 0.2, "the trees to agree")

        c.kill("n3")
        for k in keys:
            kv.delete(k, context=ctx[k], w=2)
        # Well past the grace period, with anti-entropy rounds running: n3 still holds the
        # live value, so n1 and n2 must keep their tombstones.
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:
            _reads_empty(c, ["n1", "n2"], keys)
            time.sleep(0.3)
        for name in ("n1", "n2"):
            for k in keys:
                rec = nodes.raw(name, k)
                assert rec is not None and vclock.is_deleted(vclock.decode(rec)), (name, k)
            assert nodes.status(name)["tombstones_collected"] == 0

        c.start("n3")
        nodes = Nodes(c)
        # Anti-entropy brings n3 the tombstone (n3 was away longer than the hints live).
        wait_until(
            lambda: all(vclock.is_deleted(vclock.decode(r)) if (r := nodes.raw("n3", k)) else True for k in keys),
            30, 0.2, "n3 to receive the tombstones",
        )

        def collected() -> bool:
            _reads_empty(c, ["n1", "n2", "n3"], keys)
            return all(nodes.raw(n, k) is None for n in c.nodes for k in keys)

        wait_until(collected, 30, 0.3, "the tombstones to be collected on every replica")
        assert sum(nodes.status(n)["tombstones_collected"] for n in c.nodes) >= len(keys)
        # Keep polling while anti-entropy runs on: nothing comes back.
        for _ in range(5):
            _reads_empty(c, ["n1", "n2", "n3"], keys)
            time.sleep(0.3)
        assert nodes.agree()
        # The key is usable again: a new write after collection reads back.
        kv.put(keys[0], b"reborn", w=3)
        assert kv.get(keys[0], r=3).value == b"reborn"


def test_live_keys_and_siblings_with_a_tombstone_are_kept(tmp_path: Path) -> None:
    """Only tombstone-only keys are collected: a blind delete concurrent with a write leaves
    a value sibling, and that key stays."""
    with LocalCluster(tmp_path, nodes=3, extra=[*AAE_FLAGS, *GRACE]) as c:
        c.start_all()
        nodes = Nodes(c)
        kv = c.client()
        kv.put("keep", b"v", w=3)
        kv.put("both", b"old", w=3)
        seen = kv.get("both", r=3).context
        kv.put("both", b"v", w=3)  # blind: a sibling the delete below has not seen
        kv.delete("both", context=seen, w=3)  # leaves a tombstone sibling beside b"v"
        kv.put("gone", b"v", w=3)
        kv.delete("gone", context=kv.get("gone", r=3).context, w=3)
        wait_until(lambda: all(nodes.raw(n, b"gone") is None for n in c.nodes), 30, 0.2, "'gone' to be collected")
        assert kv.get("keep", r=3).value == b"v"
        assert kv.get("both", r=3).values == [b"v"]
        for n in c.nodes:
            assert nodes.raw(n, b"both") is not None


def test_a_hint_held_past_its_age_is_dropped_so_a_collected_delete_stays(tmp_path: Path) -> None:
    """A fallback holds a hint with a value for a primary, then is away while the key is
    deleted everywhere and the tombstone collected. When it returns, the hint is older than
    hint_max_age_s (which the tombstone grace must exceed): dropped, not delivered. With a
    hint age past the grace (the old defaults: 7 days vs 1 hour) the value came back."""
    grace = ["--tombstone-grace-s", "4", "--hint-max-age-s", "2", "--max-clock-skew-s", "0.5"]
    with LocalCluster(tmp_path, nodes=5, extra=[*AAE_FLAGS, *grace, "--hint-interval-s", "0.2"]) as c:
        c.start_all()
        nodes = Nodes(c)
        ring_doc = nodes.call("n1", "cluster.ring")
        ring = Ring.from_wire(ring_doc["ring"])
        key = b"zombie"
        p = partition_of(key, ring.partitions)
        a, b, c3 = ring.preference_list(p, 3)
        fallback = ring.fallbacks(p, 3)[0]

        def raw(name: str) -> bytes | None:
            rec = nodes.call(name, "replica.get", p, key)
            return None if rec is None else bytes(rec)

        c.kill(b)
        nodes.clients[a].put(key, b"V", w=2)  # b's copy goes to the fallback, with a hint
        wait_until(lambda: nodes.call(fallback, "cluster.hints")["pending"].get(b, 0) >= 1, 30, 0.2, "the fallback's hint")
        c.kill(fallback)  # away, hint and all
        c.start(b)
        nodes = Nodes(c)

        def delete_everywhere() -> bool:
            # b was just restarted: a's connection to it may not be back for the first try.
            try:
                nodes.clients[a].delete(key, context=nodes.clients[a].get(key, r=2).context, w=3)
            except Unavailable:
                return False
            return True

        wait_until(delete_everywhere, 30, 0.2, "a delete acknowledged by all three replicas")
        wait_until(lambda: all(raw(n) is None for n in (a, b, c3)), 60, 0.2, "the tombstone to be collected")

        c.start(fallback)
        nodes = Nodes(c)
        wait_until(lambda: not nodes.call(fallback, "cluster.hints")["pending"], 60, 0.2, "the fallback's hint to go")
        st = nodes.call(fallback, "cluster.hints")
        assert st["expired"] >= 1 and st["delivered"] == 0, st
        # Nothing comes back, on any replica, while anti-entropy keeps running.
        for _ in range(5):
            assert all(raw(n) is None for n in (a, b, c3))
            assert nodes.clients[a].get(key, r=3).values == []
            time.sleep(0.3)
