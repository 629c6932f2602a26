"""Two clusters on one network: a node of one that takes an address a node of the other had
takes nothing of the other's membership, and gives it nothing (each cluster has an id).

Before: cluster A's surviving nodes pulled the ring view from the new node at their dead
member's address and merged its addresses, and push-pulled SWIM state with it: A's n3
ended up sending n1's traffic to cluster B's n1 (seen within four seconds)."""

from __future__ import annotations

import time
from pathlib import Path

from kvstore.testing.processes import LocalCluster, wait_until

BASE = ["--partitions", "16"]
WATCH_S = 8.0  # four push-pull and ring-pull rounds of the test timings


def _addrs(c: LocalCluster, name: str) -> set[str]:
    st = c.status(name)
    assert st is not None, f"{name} does not answer"
    return {m["addr"] for m in st["members"]}


def test_a_node_on_another_clusters_old_address_takes_and_gives_nothing(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with LocalCluster(tmp_path / "a", nodes=3, extra=BASE) as a:
        a.start_all()
        a.kill("n2")
        # Once A's SWIM has declared n2 dead. Before that, n2 is suspect and still tried, and
        # replica calls carry no cluster id: A's writes and reads to n2's address would reach
        # whatever listens there (docs/design.md, the cluster id's limits; a stress run saw
        # A read B's value that way).
        wait_until(
            lambda: all(m["state"] == "dead" for n in ("n1", "n3") for m in a.status(n)["members"] if m["name"] == "n2"),  # type: ignore[index]
            60, what="A's n1 and n3 to declare n2 dead",
        )  # fmt: skip
        reused = a.nodes["n2"].addr
        b = LocalCluster(tmp_path / "b", nodes=0, extra=BASE)
        b.add("n1", port=int(reused.rsplit(":", 1)[1]))
        b.add("n2")
        b.add("n3")
        with b:
            b.start_all()
            ids = {c.status(n)["cluster"] for c, n in ((a, "n1"), (a, "n3"), (b, "n1"))}  # type: ignore[index]
            assert len(ids) == 2 and "" not in ids
            a_own, b_own = set(a.addrs()), set(b.addrs())
            deadline = time.monotonic() + WATCH_S

            def watched() -> bool:
                for name in ("n1", "n3"):
                    got = _addrs(a, name)
                    assert got == a_own, f"cluster A's {name} sees {sorted(got)}, not {sorted(a_own)}"
                for name in b.nodes:
                    got = _addrs(b, name)
                    assert got == b_own, f"cluster B's {name} sees {sorted(got)}, not {sorted(b_own)}"
                return time.monotonic() > deadline

            wait_until(watched, WATCH_S + 30, 0.25, "both clusters to keep to themselves")
            # Each cluster still serves its own data. A's client does not route by the ring: the
            # ring names n2 at its old address, and a client call carries no cluster id either
            # (a stress run saw a routing client send A's get to B's n1; docs/design.md).
            a.client("n1", "n3", route=False).put(b"k", b"a", w=2)
            b.client().put(b"k", b"b", w=2)
            assert set(a.client("n1", "n3", route=False).get(b"k", r=2).values) == {b"a"}
            assert set(b.client().get(b"k", r=3).values) == {b"b"}
