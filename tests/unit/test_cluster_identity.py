"""A cluster's id keeps views of another cluster out: a node that belongs to one takes
neither the ring nor the addresses of another (an address reused by a node of another
cluster once handed a whole foreign membership to a live cluster)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.core.ring import claim
from kvstore.errors import ForeignCluster, from_wire, to_wire
from kvstore.runtime.cluster import ClusterView
from storage.engine import LOSE_UNSYNCED_ENV, Engine

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = Engine.open(str(tmp_path / "db"))
    try:
        yield e
    finally:
        e.close_sync()


def test_a_view_of_another_cluster_changes_nothing(engine: Engine) -> None:
    view = ClusterView("n1", "127.0.0.1:1", engine, 3)
    view.found(claim(["n1", "n2"], 16))
    ring, ours = view.ring, view.cluster
    assert len(ours) == 16
    foreign = claim(["n1", "n2", "n3"], 16, ring)
    with pytest.raises(ForeignCluster):
        view.accept(foreign, None, {"n2": "127.0.0.1:9"}, "0123456789abcdef")
    assert view.ring is ring and view.next is None and view.cluster == ours
    assert "n2" not in view.addrs
    # The same view from the node's own cluster (or from a node with no id) is taken.
    assert view.accept(foreign, None, {"n2": "127.0.0.1:9"}, ours)
    assert view.ring is foreign and view.addrs["n2"] == "127.0.0.1:9"


def test_a_node_without_an_id_takes_the_first_it_sees_and_keeps_it(engine: Engine) -> None:
    view = ClusterView("n3", "127.0.0.1:3", engine, 3)
    seen: list[str] = []
    view.listeners = (lambda: seen.append(view.cluster),)
    ring = claim(["n1", "n2", "n3"], 16)
    assert view.accept(ring, None, {}, "aaaa")
    assert view.cluster == "aaaa" and seen == ["aaaa"]
    # An id alone (the ring no newer) is still news to save and publish.
    fresh = ClusterView("n4", "127.0.0.1:4", engine, 3)
    fresh.ring = ring
    fresh.listeners = (lambda: seen.append("n4:" + fresh.cluster),)
    assert fresh.accept(ring, None, {}, "aaaa") and seen[-1] == "n4:aaaa"
    asyncio.run(view.save())
    again = ClusterView("n3", "127.0.0.1:3", engine, 3)
    assert again.load() and again.cluster == "aaaa"
    with pytest.raises(ForeignCluster):
        again.accept(ring, None, {}, "bbbb")


def test_a_cluster_saved_before_ids_gets_one_once(engine: Engine) -> None:
    view = ClusterView("n1", "127.0.0.1:1", engine, 3)
    assert not view.mint()  # no ring: nothing to name
    view.ring = claim(["n1"], 8)
    assert view.mint() and len(view.cluster) == 16
    first = view.cluster
    assert not view.mint() and view.cluster == first


def test_the_refusal_crosses_the_wire_as_itself() -> None:
    err = from_wire(to_wire(ForeignCluster("n1 belongs to cluster a", cluster="b")))
    assert isinstance(err, ForeignCluster) and err.extra["cluster"] == "b"


FOUND_AND_DIE = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from kvstore.core.ring import claim
    from kvstore.runtime.cluster import ClusterView
    from storage.engine import Engine

    async def main() -> None:
        e = Engine.open(sys.argv[1], fsync="no")
        assert e.lose_unsynced
        view = ClusterView("n1", "127.0.0.1:1", e, 3)
        view.found(claim(["n1"], 8))
        await view.save()
        print(view.cluster, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # a power loss right after the save returned

    asyncio.run(main())
    """
)


def test_a_saved_view_survives_a_power_loss_under_fsync_no(tmp_path: Path) -> None:
    """Before: the view went into the un-synced tail, so a founder that lost power came back
    without it and founded a second cluster, with an id its own peers refuse."""
    path = str(tmp_path / "db")
    env = {**os.environ, "PYTHONPATH": str(REPO), LOSE_UNSYNCED_ENV: "1"}
    res = subprocess.run([sys.executable, "-c", FOUND_AND_DIE, path], env=env, capture_output=True, text=True,
                         timeout=120, cwd=str(REPO))  # fmt: skip
    assert res.returncode == -signal.SIGKILL, f"exit {res.returncode}: {res.stderr[-2000:]}"
    founded = res.stdout.strip()
    e = Engine.open(path, lose_unsynced=False)
    try:
        view = ClusterView("n1", "127.0.0.1:1", e, 3)
        assert view.load(), "the view saved before the power loss is gone"
        assert view.cluster == founded and view.ring is not None and view.ring.members == ("n1",)
    finally:
        e.close_sync()
