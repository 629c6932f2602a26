"""Ownership handoff's serving side with a real Engine: fetch batches fit a frame."""

from __future__ import annotations

from pathlib import Path

from kvstore.config import Settings
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.handoff import Handoff
from kvstore.runtime.replica import Replica
from kvstore.runtime.rpc import RpcClient
from storage.engine import Engine

MIB = 1024 * 1024


async def test_fetch_is_bounded_by_bytes_and_a_large_record_goes_alone(tmp_path: Path) -> None:
    engine = Engine.open(str(tmp_path / "db"))
    rpc = RpcClient()
    try:
        s = Settings(node_id="a")
        view = ClusterView("a", "127.0.0.1:1", engine, s.n_replicas)
        h = Handoff(s, view, Replica(engine, "a"), engine, rpc)
        sizes = {b"k%02d" % i: (3 * MIB if i == 4 else MIB // 2) for i in range(20)}
        for k, n in sizes.items():
            await engine.put(0, k, b"r" * n)
        got: list[bytes] = []
        after = None
        while True:
            records, more = h.fetch(0, after, s.handoff_batch_keys)
            assert records
            size = sum(len(k) + len(r) for k, r in records)
            assert size <= s.handoff_batch_bytes or len(records) == 1
            assert size < s.max_frame_bytes - s.max_key_bytes
            got += [k for k, _ in records]
            after = records[-1][0]
            if not more:
                break
        assert got == sorted(sizes)
    finally:
        await rpc.close()
        await engine.close()
