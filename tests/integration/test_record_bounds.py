"""Records are bounded (siblings, bytes): a write past a bound is refused before anything is
stored anywhere, and a key at its bound can still be replicated. Real node processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvstore.core import vclock
from kvstore.core.ring import Ring, partition_of
from kvstore.errors import TooLarge, Unavailable
from kvstore.testing.processes import LocalCluster, wait_until

MIB = 1024 * 1024


class Replicas:
    """Raw records of one key on each node, read without a coordinator."""

    def __init__(self, c: LocalCluster, key: bytes) -> None:
        self.c = c
        self.key = key
        doc = c.client("n1", route=False).call(c.nodes["n1"].addr, "cluster.ring")
        self.p = partition_of(key, Ring.from_wire(doc["ring"]).partitions)

    def raw(self, name: str) -> bytes | None:
        kv = self.c.client(name, route=False)
        rec = kv.call(self.c.nodes[name].addr, "replica.get", self.p, self.key)
        return None if rec is None else bytes(rec)

    def all(self) -> dict[str, bytes | None]:
        return {n: self.raw(n) for n in self.c.nodes if self.c.nodes[n].running}

    def siblings(self, name: str) -> int:
        rec = self.raw(name)
        return 0 if rec is None else len(vclock.decode(rec).siblings)


def _blind_puts_until_refused(kv: Any, key: bytes, value: bytes, most: int, **kw: Any) -> tuple[int, TooLarge]:
    for i in range(most):
        try:
            kv.put(key, value, **kw)
        except TooLarge as e:
            return i, e
    raise AssertionError(f"{most} blind puts of {len(value)} bytes were all accepted")


def test_blind_puts_past_max_record_bytes_are_refused_and_the_key_still_replicates(tmp_path: Path) -> None:
    # No hints: what reaches n3 after it is back is read repair's doing.
    with LocalCluster(tmp_path, nodes=3, extra=["--max-hints", "0"]) as c:
        c.start_all()
        key = b"big"
        reps = Replicas(c, key)
        kv = c.client("n1", route=False)  # n1 is in every preference list of a 3-node ring
        value = b"x" * MIB
        kv.put(key, value, w=3)
        kv.put(key, value, w=3)
        c.kill("n3")
        kv.put(key, value, w=2)  # n3 misses the third sibling
        before = reps.all()
        assert {n: reps.siblings(n) for n in before} == {"n1": 3, "n2": 3}

        with pytest.raises(TooLarge) as ei:
            kv.put(key, value, w=2)
        msg = str(ei.value)
        assert "max_record_bytes" in msg and "4 siblings" in msg and str(4 * MIB) in msg, msg
        assert ei.value.code == "too_large"
        # Refused before anything was stored: every replica still has exactly what it had.
        assert reps.all() == before
        got = kv.get(key, r=2)
        assert got.values == [value] * 3

        # The key is still replicable: n3 comes back and a read at r=3 repairs it.
        c.start("n3")

        def repaired() -> bool:
            try:
                assert len(kv.get(key, r=3).values) == 3
            except Unavailable:  # n1's connection to the restarted n3 may not be back yet
                return False
            return reps.raw("n3") == before["n1"]

        wait_until(repaired, 60, 0.2, "read repair to bring n3 the key")
        # And a write with the read's context resolves the siblings.
        kv.put(key, b"resolved", context=kv.get(key, r=3).context, w=3)
        assert all(reps.siblings(n) == 1 for n in c.nodes)


def test_blind_puts_past_max_siblings_are_refused(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=3, extra=["--max-siblings", "10", "--warn-siblings", "5"]) as c:
        c.start_all()
        key = b"many"
        reps = Replicas(c, key)
        kv = c.client("n1", route=False)
        accepted, err = _blind_puts_until_refused(kv, key, b"v", 50, w=3)
        assert accepted == 10
        assert "11 siblings" in str(err) and "max_siblings" in str(err) and "10" in str(err), str(err)
        before = reps.all()
        assert all(reps.siblings(n) == 10 for n in c.nodes)
        # A delete whose context covers none of them would add a tombstone sibling: refused,
        # nothing stored. (Without a context a delete removes what it reads, and would pass.)
        with pytest.raises(TooLarge):
            kv.delete(key, context=vclock.encode_context({"elsewhere~0": 1}), w=3)
        assert reps.all() == before
        assert kv.get(key, r=3).values == [b"v"] * 10
        assert "siblings" in c.nodes["n1"].log() and "WARNING" in c.nodes["n1"].log()
        # Writing back with the context of a read is the way out.
        kv.put(key, b"one", context=kv.get(key, r=3).context, w=3)
        assert kv.get(key, r=3).values == [b"one"]
