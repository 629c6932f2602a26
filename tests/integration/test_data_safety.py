"""Regression tests of the correctness review ("Data safety"), each with real node processes.

Every test here reproduces a sequence that lost an acknowledged write or brought a deleted key
back on the code before the fix; the comment above each says what it did then.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvstore.client import Client
from kvstore.core import vclock
from kvstore.core.ring import Ring, partition_of
from kvstore.errors import KVError, NotOwner
from kvstore.testing.processes import LocalCluster, wait_until

Q = 64
BASE = ["--partitions", str(Q)]
AAE = ["--aae-interval-s", "0.3", "--aae-exchanges-per-min", "6000", "--aae-max-repairs-per-s", "5000"]
# Hints must expire before a tombstone may be collected (config.py refuses otherwise).
GRACE = ["--tombstone-grace-s", "1", "--hint-max-age-s", "0.5", "--max-clock-skew-s", "0.25"]
NO_AAE = ["--aae-interval-s", "3600"]


class Admin:
    """One direct (unrouted) client per node, for replica-level calls."""

    def __init__(self, c: LocalCluster) -> None:
        self.c = c
        self._clients: dict[str, Client] = {}

    def kv(self, name: str) -> Client:
        if name not in self._clients:
            self._clients[name] = self.c.client(name, route=False, timeout_s=5.0)
        return self._clients[name]

    def call(self, name: str, method: str, *params: Any) -> Any:
        return self.kv(name).call(self.c.nodes[name].addr, method, *params)

    def raw(self, name: str, key: bytes) -> bytes | None:
        rec = self.call(name, "replica.get", partition_of(key, Q), key)
        return None if rec is None else bytes(rec)

    def ring(self, name: str) -> Ring:
        doc = self.call(name, "cluster.ring")
        assert doc["next"] is None
        return Ring.from_wire(doc["ring"])

    def forget_clients(self, name: str) -> None:
        # A restarted node is reached through a fresh client (no stale fail-fast state).
        kv = self._clients.pop(name, None)
        if kv is not None:
            kv.close()


def _values(kv: Client, key: bytes, r: int = 3) -> set[bytes]:
    return set(kv.get(key, r=r).values)


def _reads_everywhere(a: Admin, key: bytes, want: set[bytes]) -> None:
    """Every node, as coordinator at R=3, reads ``want``. A node just restarted may not be
    reachable from a peer's first call (its pool reconnects), so errors are retried; a wrong
    answer fails at once."""

    def ok() -> bool:
        for n in a.c.nodes:
            try:
                got = _values(a.kv(n), key)
            except KVError:
                return False
            assert got == want, f"{key!r} through {n}: {got}"
        return True

    wait_until(ok, 30, 0.2, f"reads of {key!r}")


# ---------------------------------------------------------------------- 1. doomstone (KV679)
def test_blind_put_after_tombstone_collection_survives_a_surviving_tombstone(tmp_path: Path) -> None:
    """Before: the coordinator, holding nothing for the key after the collection, minted the
    dot (n1, 1) again; the surviving tombstone's vector covered it and the acknowledged put
    vanished on every replica (reads returned nothing)."""
    with LocalCluster(tmp_path, nodes=3, extra=[*BASE, *AAE, *GRACE]) as c:
        c.start_all()
        a = Admin(c)
        n1 = a.kv("n1")
        keys = [b"doom-%d" % i for i in range(20)]
        for k in keys:
            n1.put(k, b"v1", w=3)
            n1.delete(k, context=n1.get(k, r=3).context, w=3)
        tombs = {k: a.raw("n2", k) for k in keys}
        assert all(t is not None and vclock.is_deleted(vclock.decode(t)) for t in tombs.values())
        wait_until(
            lambda: all(a.raw(n, k) is None for n in c.nodes for k in keys), 60, 0.2,
            "every tombstone to be collected",
        )
        # A forget lost on the way to n2 and n3, and anti-entropy copying the tombstone back:
        # the old tombstone is again on two replicas when the next blind put comes.
        for k, t in tombs.items():
            for n in ("n2", "n3"):
                a.call(n, "replica.put", partition_of(k, Q), k, t)
            n1.put(k, b"v2", w=2)
        for k in keys:
            _reads_everywhere(a, k, {b"v2"})


# ---------------------------------------------------------------------- 2. amnesia
def _try(f: Any) -> bool:
    try:
        f()
    except KVError:
        return False
    return True


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def _fill_disk(path: Path) -> Path:
    filler = path / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 16))
                fh.flush()
        except OSError:
            pass
    return filler


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a small tmpfs")
def test_coordinator_that_lost_its_own_write_keeps_both_versions(tmp_path: Path) -> None:
    """Before: n1's local write failed (disk full) while n2 and n3 stored and acknowledged it;
    after a restart n1 minted the same dot for the next blind put, and the merge silently
    kept one of the two acknowledged values."""
    c = LocalCluster(tmp_path, nodes=3, extra=[*BASE, *NO_AAE])
    disk = c.nodes["n1"].data_dir
    _mount_tmpfs(disk, "24m")
    try:
        with c:
            c.start_all()
            a = Admin(c)
            key = b"amnesia"
            filler = _fill_disk(disk)
            # Larger than the free tail of the log's last page: the append needs new space.
            v1 = b"1" * 600_000
            a.kv("n1").put(key, v1, w=2)  # acknowledged by n2 and n3
            assert a.raw("n2", key) is not None and a.raw("n3", key) is not None
            assert a.raw("n1", key) is None  # n1's own write failed and was rolled back
            c.stop("n1")
            filler.unlink()
            a.forget_clients("n1")
            c.start("n1")
            wait_until(lambda: _try(lambda: a.kv("n1").put(key, b"v2", w=3)), 30, 0.2, "the put of v2")
            _reads_everywhere(a, key, {v1, b"v2"})
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a small tmpfs")
def test_a_start_after_a_crash_takes_a_new_actor_and_a_clean_stop_resumes_it(tmp_path: Path) -> None:
    """The actor a node writes under survives a clean stop and is replaced after a kill."""
    with LocalCluster(tmp_path, nodes=1, n=1, r=1, w=1, extra=BASE) as c:
        c.start_all()
        a = Admin(c)

        def actors(key: bytes) -> set[str]:
            rec = a.raw("n1", key)
            assert rec is not None
            return set(vclock.decode(rec).vv)

        a.kv("n1").put(b"k1", b"x")
        first = actors(b"k1")
        c.stop("n1")
        a.forget_clients("n1")
        c.start("n1")
        a.kv("n1").put(b"k2", b"x")
        assert actors(b"k2") == first  # clean stop: same actor
        c.kill("n1")
        a.forget_clients("n1")
        c.start("n1")
        a.kv("n1").put(b"k3", b"x")
        assert actors(b"k3").isdisjoint(first)  # crash: a new epoch


def test_a_coordinator_that_lost_its_unsynced_tail_keeps_both_versions(tmp_path: Path) -> None:
    """Power loss modelled by the engine's test mode: n1 (fsync=no, nothing synced until a
    flush) coordinates v1, n2 and n3 store it, n1 is killed and comes back without it.
    Before: it minted the same dot for the next blind put and one value was silently lost."""
    with LocalCluster(tmp_path, nodes=3, extra=[*BASE, *NO_AAE]) as c:
        c.nodes["n1"].args += ["--fsync", "no"]
        os.environ["KV_TEST_LOSE_UNSYNCED"] = "1"
        try:
            c.start("n1")
        finally:
            del os.environ["KV_TEST_LOSE_UNSYNCED"]
        c.start("n2")
        c.start("n3")
        c.wait_ring(3)
        a = Admin(c)
        key = b"power-loss"
        a.kv("n1").put(key, b"v1", w=3)
        c.kill("n1")  # the un-synced tail, v1 included, is gone with it
        a.forget_clients("n1")
        c.start("n1")
        c.wait_ring(3)
        assert a.raw("n1", key) is None
        wait_until(lambda: _try(lambda: a.kv("n1").put(key, b"v2", w=3)), 30, 0.2, "the put of v2")
        _reads_everywhere(a, key, {b"v1", b"v2"})


# ---------------------------------------------------------------------- 3. stale partitions
def test_partitions_kept_past_a_restart_do_not_bring_deleted_keys_back(tmp_path: Path) -> None:
    """Before: nodes restarted after n4 joined kept the partitions they handed to n4 (the drop
    timer lived in memory); when n4 left, handoff merged into those stale copies and every key
    deleted (and collected) meanwhile came back."""
    extra = [*BASE, *AAE, *GRACE, "--handoff-drop-delay-s", "600"]
    with LocalCluster(tmp_path, nodes=3, extra=extra) as c:
        c.start_all()
        a = Admin(c)
        keys = [b"stale-%d" % i for i in range(300)]
        kv = c.client("n1", "n2", "n3", timeout_s=10.0)
        for k in keys:
            kv.put(k, b"old", w=3)
        c.add("n4")
        c.start("n4")
        c.wait_ring(4, timeout=120)
        ring = a.ring("n1")
        moved = [k for k in keys if "n4" in ring.preference_list(partition_of(k, Q), 3)]
        assert moved
        for n in ("n1", "n2", "n3"):
            c.kill(n)
            a.forget_clients(n)
            c.start(n)
        c.wait_ring(4, timeout=60)
        kv4 = c.client("n1", "n2", "n3", "n4", timeout_s=10.0, ring_refresh_s=0.5)
        for k in moved:
            got = kv4.get(k, r=3)
            kv4.delete(k, context=got.context, w=3)

        def collected() -> bool:
            for k in moved:
                for n in ring.preference_list(partition_of(k, Q), 3):
                    if a.raw(n, k) is not None:
                        return False
            return True

        wait_until(collected, 90, 0.3, "the deleted keys' tombstones to be collected")
        a.call("n1", "cluster.leave", "n4")
        wait_until(lambda: not c.nodes["n4"].running, 120, 0.3, "n4 to leave")
        c.wait_ring(3, timeout=120)
        back = [k for k in moved if kv.get(k, r=3).values]
        assert back == [], f"{len(back)} of {len(moved)} deleted keys came back"


# ---------------------------------------------------------------------- 7. delete = delete
def test_delete_without_context_deletes_what_it_reads(tmp_path: Path) -> None:
    """Before: a delete without a context added a tombstone beside the value; get still
    returned the value. The CLI's `kv put a 1 && kv delete a && kv get a` now exits 1."""
    with LocalCluster(tmp_path, nodes=3, extra=BASE) as c:
        c.start_all()
        kv = c.client("n1", "n2", "n3")
        kv.put(b"a", b"1")
        kv.put(b"a", b"2")  # a sibling: both go
        kv.delete(b"a")
        assert kv.get(b"a", r=3).values == []
        kv.delete(b"never-written")  # nothing to delete: fine, stores nothing
        assert Admin(c).raw("n1", b"never-written") is None

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        node = ["--node", c.nodes["n1"].addr]

        def kvcli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "cli", *node, *args], env=env, capture_output=True, text=True, timeout=60)

        assert kvcli("put", "b", "1").returncode == 0
        assert kvcli("delete", "b").returncode == 0
        got = kvcli("get", "b")
        assert got.returncode == 1, got.stdout + got.stderr


# ---------------------------------------------------------------------- 9. handoff sources
def test_handoff_pulls_from_every_old_replica(tmp_path: Path) -> None:
    """Before: a joining node pulled a partition from the first old replica only; a write that
    two old replicas held but not that one reached the new node only through anti-entropy,
    and the old replica that lost the partition dropped its copy: one copy left of a write
    acknowledged by two."""
    extra = [*BASE, *NO_AAE, "--handoff-drop-delay-s", "0.5"]
    with LocalCluster(tmp_path, nodes=3, extra=extra) as c:
        c.start_all()
        a = Admin(c)
        old = a.ring("n1")
        # Written as a W=2 coordinator would while old[0] of its partition missed it.
        keys = [b"pull-%d" % i for i in range(400)]
        for k in keys:
            p = partition_of(k, Q)
            pref = old.preference_list(p, 3)
            rec = vclock.encode(vclock.update(None, {}, b"acked", "writer~1", 1))
            for n in pref[1:]:
                a.call(n, "replica.put", p, k, rec)
        c.add("n4")
        c.start("n4")
        c.wait_ring(4, timeout=120)
        new = a.ring("n1")

        def holders(k: bytes) -> int:
            pref = new.preference_list(partition_of(k, Q), 3)
            return sum(1 for n in pref if a.raw(n, k) is not None)

        gained = [k for k in keys if "n4" in new.preference_list(partition_of(k, Q), 3)]
        assert gained
        short = [k for k in gained if holders(k) < 2]
        assert short == [], f"{len(short)} of {len(gained)} writes held by fewer than 2 replicas"


# ---------------------------------------------------------------------- 10. failed stand-in
def test_a_stand_in_that_fails_does_not_lose_the_hint(tmp_path: Path) -> None:
    """Before: only a failed primary was covered again; a stand-in that refused the hint (its
    hint store full) left the down primary without the write until anti-entropy."""
    extra = [*BASE, *NO_AAE, "--hint-interval-s", "0.2"]
    with LocalCluster(tmp_path, nodes=5, extra=extra) as c:
        c.start_all()
        a = Admin(c)
        ring = a.ring("n1")
        # A key whose primaries start with n1, whose first stand-in refuses every hint.
        for i in range(10_000):
            key = b"standin-%d" % i
            p = partition_of(key, Q)
            pref = ring.preference_list(p, 3)
            if pref[0] == "n1":
                break
        down = pref[2]
        first_stand_in = ring.fallbacks(p, 3)[0]
        c.stop(first_stand_in)
        c.nodes[first_stand_in].args += ["--max-hints", "0"]
        a.forget_clients(first_stand_in)
        c.start(first_stand_in)

        def seen_up(name: str) -> bool:
            return bool(next(m for m in a.call("n1", "cluster.status")["members"] if m["name"] == name)["up"])

        wait_until(lambda: seen_up(first_stand_in), 30, 0.1, f"n1 to see {first_stand_in} up")
        c.kill(down)
        wait_until(lambda: not seen_up(down), 30, 0.1, f"n1 to see {down} down")
        a.kv("n1").put(key, b"v", w=2)
        a.forget_clients(down)
        c.start(down)
        wait_until(lambda: a.raw(down, key) is not None, 60, 0.2, f"the hint for {down} to be delivered")


# ---------------------------------------------------------------------- 11. ownership
def test_a_replica_refuses_partitions_it_does_not_replicate(tmp_path: Path) -> None:
    """Before: replica.put stored any partition, where the data would never be served, handed
    off or dropped."""
    with LocalCluster(tmp_path, nodes=4, extra=BASE) as c:
        c.start_all()
        a = Admin(c)
        ring = a.ring("n1")
        p = next(p for p in range(Q) if "n4" not in ring.preference_list(p, 3))
        key = next(b"own-%d" % i for i in range(100_000) if partition_of(b"own-%d" % i, Q) == p)
        rec = vclock.encode(vclock.update(None, {}, b"x", "w~1", 1))
        with pytest.raises(NotOwner):
            a.call("n4", "replica.put", p, key, rec)
        with pytest.raises(NotOwner):
            a.call("n4", "replica.get", p, key)
        with pytest.raises(KVError):
            a.call("n4", "replica.put_batch", [[p, key, rec]])
        assert a.call("n4", "cluster.status")["keys"] == 0
