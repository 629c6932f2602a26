"""A new node without seeds founds its cluster before its RPC server answers anyone.

Were it to answer first, a joiner seeded with it would hear "this node has not joined a ring
yet" from its only seed and, with the lower address, found a second cluster beside it (seen
when the first node of a 3-node cluster started slowly under valgrind: two clusters that
never merged). Here the node's gossip start is held for a second, an await in the middle of
its start-up, and the test asks it for its status the moment its port accepts connections."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kvstore.config import Settings
from kvstore.core import messages as m
from kvstore.runtime.gossip import Gossip
from kvstore.runtime.node import Node
from kvstore.runtime.rpc import RpcClient
from kvstore.testing.processes import free_port


async def test_a_seedless_node_has_its_ring_before_its_port_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start = Gossip.start

    async def slow_start(self: Gossip, *args: Any, **kw: Any) -> Any:
        await asyncio.sleep(1.0)
        return await start(self, *args, **kw)

    monkeypatch.setattr(Gossip, "start", slow_start)
    port = free_port()
    node = Node(Settings(node_id="n1", listen=f"127.0.0.1:{port}", data_dir=str(tmp_path / "n1"), snapshot_dir=str(tmp_path / "shm")))
    starting = asyncio.ensure_future(node.start())
    rpc = RpcClient(connect_timeout_s=0.5, reconnect_min_s=0.01, reconnect_max_s=0.01)
    try:
        while True:
            assert not starting.done() or starting.exception() is None
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.005)
                continue
            writer.close()
            break
        status = await rpc.call(f"127.0.0.1:{port}", m.STATUS, [], 5.0)
        assert status["ring_version"] > 0, "the node answered before it had founded its cluster"
        await starting
    finally:
        await rpc.close()
        if not starting.done():
            await starting
        await node.stop()
