"""The replica's actor epochs (kvstore.runtime.replica): short opaque actors, resumed only
by the node that recorded the clean stop, on a real LevelDB store."""

from __future__ import annotations

from pathlib import Path

import msgpack

from kvstore.runtime.replica import CLEAN_STOP_KEY, Replica
from storage.engine import Engine


async def test_a_clean_stop_is_resumed_by_its_own_node_only(tmp_path: Path) -> None:
    eng = Engine.open(str(tmp_path / "db"), fsync="no")
    try:
        a = Replica(eng, "n1")
        assert not await a.start()  # no marker: a fresh epoch
        assert a.actor.startswith("~") and len(a.actor) == 12
        a.counter = 41
        await a.record_clean_stop()
        again = Replica(eng, "n1")
        assert await again.start()
        assert (again.actor, again.counter) == (a.actor, 41)
        # The marker is gone once read: a crash now must not pass for a clean stop.
        assert eng.meta_get(CLEAN_STOP_KEY) is None
        await again.record_clean_stop()
        # The same data dir under another node's name: never the first node's actor.
        other = Replica(eng, "n2")
        assert not await other.start()
        assert other.actor != a.actor
    finally:
        await eng.close()


async def test_the_marker_of_the_previous_actor_format_still_resumes(tmp_path: Path) -> None:
    eng = Engine.open(str(tmp_path / "db"), fsync="no")
    try:
        await eng.meta_put(CLEAN_STOP_KEY, msgpack.packb(["n1~00112233aabbccdd", 7]))
        r = Replica(eng, "n1")
        assert await r.start()
        assert (r.actor, r.counter) == ("n1~00112233aabbccdd", 7)
        await eng.meta_put(CLEAN_STOP_KEY, msgpack.packb(["n1~00112233aabbccdd", 7]))
        assert not await Replica(eng, "n10").start()  # a prefix of another name is not it
    finally:
        await eng.close()
