"""The asyncio gossip driver in one event loop: real UDP sockets and RPC push-pull on loopback."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kvstore.core.membership import MemberEvent, MemberState, SwimConfig
from kvstore.errors import InvalidRequest, ProtocolError
from kvstore.runtime.gossip import PUSH_PULL_METHOD, Gossip, push_pull_via, rpc_handlers
from kvstore.runtime.rpc import RpcClient, RpcServer
from kvstore.testing.processes import free_port

CFG = SwimConfig(
    probe_interval_s=0.1, probe_timeout_s=0.05, gossip_interval_s=0.05, push_pull_interval_s=1.0
)


class Node:
    def __init__(self, name: str, on_change: Callable[[MemberEvent], None] | None = None) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.client = RpcClient(connect_timeout_s=0.5)
        self.events: list[MemberEvent] = []

        def record(ev: MemberEvent) -> None:
            self.events.append(ev)
            if on_change is not None:
                on_change(ev)

        self.gossip = Gossip(
            CFG,
            name,
            self.addr,
            self.addr,
            random.Random(),
            push_pull_via(self.client, 1.0),
            record,
        )
        self.server = RpcServer(rpc_handlers(self.gossip))

    async def start(self) -> Node:
        await self.server.start("127.0.0.1", self.port)
        await self.gossip.start()
        return self

    async def close(self) -> None:
        await self.gossip.stop()
        await self.server.close()
        await self.client.close()

    def state_of(self, name: str) -> MemberState | None:
        m = self.gossip.member(name)
        return None if m is None else m.state


async def eventually(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[..., Any]]:
    made: list[Node] = []

    async def make(name: str, on_change: Callable[[MemberEvent], None] | None = None) -> Node:
        n = Node(name, on_change)
        made.append(n)
        return await n.start()

    try:
        yield make
    finally:
        for n in made:
            await n.close()


async def test_join_meta_leave_over_real_sockets(nodes: Callable[..., Any]) -> None:
    a, b, c = [await nodes(x) for x in ("a", "b", "c")]
    assert await b.gossip.join([a.addr, b.addr]) == 1  # itself skipped
    assert await c.gossip.join([a.addr, "127.0.0.1:1"]) == 1  # a dead seed costs nothing more
    everyone = ("a", "b", "c")
    await eventually(
        lambda: all(n.state_of(x) is MemberState.ALIVE for n in (a, b, c) for x in everyone)
    )
    assert any(ev.member.name == "c" and ev.old_state is None for ev in a.events)

    b.gossip.set_meta({"ring_version": 9})
    await eventually(
        lambda: all(n.gossip.member("b").meta.get("ring_version") == 9 for n in (a, c))
    )  # type: ignore[union-attr]

    await c.gossip.leave()
    await eventually(
        lambda: a.state_of("c") is MemberState.LEFT and b.state_of("c") is MemberState.LEFT
    )
    infos = {m.name: m for m in a.gossip.members()}
    assert infos["a"].awareness is not None and infos["b"].awareness is None
    assert a.gossip.stats["datagrams_in"] > 0 and a.gossip.stats["push_pulls_served"] >= 1


async def test_announce_restart_makes_a_member_unroutable(nodes: Callable[..., Any]) -> None:
    a, b = await nodes("a"), await nodes("b")
    await b.gossip.join([a.addr])
    await eventually(lambda: a.state_of("b") is MemberState.ALIVE)
    await b.gossip.announce_restart(linger_s=0)
    await eventually(lambda: a.gossip.member("b").restarting)  # type: ignore[union-attr]
    assert not a.gossip.member("b").routable  # type: ignore[union-attr]


async def test_garbage_datagrams_and_bad_push_pull_do_not_hurt(nodes: Callable[..., Any]) -> None:
    def explode(ev: MemberEvent) -> None:
        raise RuntimeError("a broken listener")

    a, b = await nodes("a", explode), await nodes("b")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (
            b"",
            b"\xc1\xc1",
            os.urandom(1000),
            b"\x9f" + b"\x01" * 15,
            b"\x93\x01\x05\x90" * 3,
        ):
            s.sendto(junk, ("127.0.0.1", a.port))
    await eventually(lambda: a.gossip.stats.get("bad_packets", 0) >= 4)
    # bytes that are not a state: an error reply, not a crash
    with pytest.raises(ProtocolError):
        await b.client.call(a.addr, PUSH_PULL_METHOD, [b"\x00junk"], 2.0)
    with pytest.raises(InvalidRequest):
        await b.client.call(a.addr, PUSH_PULL_METHOD, [12], 2.0)
    # and the node still works, with its failing listener counted, not fatal
    assert await b.gossip.join([a.addr]) == 1
    await eventually(
        lambda: a.state_of("b") is MemberState.ALIVE and b.state_of("a") is MemberState.ALIVE
    )
    assert a.gossip.stats["handler_errors"] >= 1


async def test_stop_is_idempotent_and_refuses_restart() -> None:
    n = Node("solo")
    await n.start()
    with pytest.raises(RuntimeError):
        await n.gossip.start()
    await n.gossip.stop()
    await n.gossip.stop()
    await n.server.close()
    await n.client.close()
    with pytest.raises(RuntimeError):
        Gossip(CFG, "x", "127.0.0.1:1", "127.0.0.1:1", random.Random(), None).members()


async def test_ephemeral_port_is_advertised() -> None:
    g = Gossip(CFG, "eph", "127.0.0.1:0", "127.0.0.1:0", random.Random(), None)
    await g.start()
    try:
        port = int(g.advertise.rsplit(":", 1)[1])
        assert port > 0 and g.member("eph").addr == g.advertise  # type: ignore[union-attr]
        assert await g.join(["127.0.0.1:9"]) == 0  # no push-pull function: nothing to join with
    finally:
        await g.stop()
