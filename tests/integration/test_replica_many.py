"""replica.many (one frame per peer and loop turn) and the coordinator's Outbox, over real
sockets on 127.0.0.1 with a real LevelDB replica behind the server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kvstore.core import messages as m
from kvstore.core import vclock
from kvstore.core.ring import claim, partition_of
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.outbox import Outbox
from kvstore.runtime.replica import Replica, ReplicaServer
from kvstore.runtime.rpc import RpcClient, RpcServer
from storage.engine import Engine

Q = 8


def _record(value: bytes, counter: int) -> bytes:
    return vclock.encode(vclock.update(None, {}, value, "c~1", 1, counter - 1))


async def _replica_server(tmp_path: Path, *, legacy: bool = False) -> tuple[RpcServer, Engine, ClusterView]:
    eng = Engine.open(str(tmp_path / "db"), fsync="no")
    view = ClusterView("a", "127.0.0.1:1", eng, 1)
    # "a" owns every partition but the last: the last is refused with not_owner.
    view.ring = claim(["a", "b"], Q, target_n=1)
    rep = Replica(eng, "a")
    rep.new_epoch()
    handlers = ReplicaServer(rep, view, None).handlers()
    if legacy:  # a node of the version before replica.many
        handlers = {k: v for k, v in handlers.items() if k != m.REPLICA_MANY}
    server = RpcServer(handlers)
    await server.start("127.0.0.1", 0)
    return server, eng, view


def _owned_and_not(view: ClusterView) -> tuple[bytes, int, bytes, int]:
    mine = other = None
    for i in range(1000):
        k = b"k%d" % i
        p = partition_of(k, Q)
        if view.replicates(p) and mine is None:
            mine = (k, p)
        if not view.replicates(p) and other is None:
            other = (k, p)
    assert mine is not None and other is not None
    return mine[0], mine[1], other[0], other[1]


async def test_each_op_of_a_batch_has_its_own_outcome(tmp_path: Path) -> None:
    server, eng, view = await _replica_server(tmp_path)
    rpc = RpcClient()
    try:
        k, p, k2, p2 = _owned_and_not(view)
        rec = _record(b"v1", 1)
        ops: list[Any] = [
            [m.MANY_PUT, p, k, rec, None],
            [m.MANY_GET, p, k],  # after the put in the same batch: sees it
            [m.MANY_PUT, p2, k2, rec, None],  # not a partition of this node: refused alone
            [7, p, k],  # malformed: refused alone
            [m.MANY_PUT, p, k + b"x", b"not a record", None],
        ]
        out = await rpc.call(f"127.0.0.1:{server.port}", m.REPLICA_MANY, [ops], 10.0)
        assert [r[0] for r in out] == [0, 0, 1, 1, 1]
        assert out[1][1] == rec
        assert out[2][1]["code"] == "not_owner"
        assert out[3][1]["code"] == "invalid_request"
        assert out[4][1]["code"] == "invalid_request"
        # Only the good put was stored; the refused ones changed nothing.
        assert eng.get(p, k) == rec
        assert eng.get(p2, k2) is None and eng.get(p, k + b"x") is None
    finally:
        await rpc.close()
        await server.close()
        await eng.close()


async def test_a_batch_over_the_op_limit_is_refused_whole(tmp_path: Path) -> None:
    server, eng, view = await _replica_server(tmp_path)
    rpc = RpcClient()
    try:
        k, p, _, _ = _owned_and_not(view)
        ops = [[m.MANY_GET, p, k]] * (m.MAX_MANY_OPS + 1)
        with pytest.raises(Exception, match="at most"):
            await rpc.call(f"127.0.0.1:{server.port}", m.REPLICA_MANY, [ops], 10.0)
    finally:
        await rpc.close()
        await server.close()
        await eng.close()


@pytest.mark.parametrize("legacy", [False, True], ids=["many", "older-peer"])
async def test_outbox_sends_a_turn_as_one_call_and_answers_each_op(tmp_path: Path, legacy: bool) -> None:
    """The ops of one turn to one peer go as one call (or, to a peer without replica.many,
    one call each) and every op gets its own answer."""
    server, eng, view = await _replica_server(tmp_path, legacy=legacy)
    rpc = RpcClient()
    addr = f"127.0.0.1:{server.port}"
    outbox = Outbox(rpc, lambda node: addr)
    try:
        k, p, k2, p2 = _owned_and_not(view)
        answers: dict[str, tuple[str | None, Any]] = {}
        done = asyncio.Event()

        def answer(name: str) -> Any:
            def got(reason: str | None, result: Any) -> None:
                answers[name] = (reason, result)
                if len(answers) == 3:
                    done.set()

            return got

        rec = _record(b"v", 1)
        outbox.put("a", p, k, rec, None, 10.0, answer("put"))
        outbox.put("a", p2, k2, rec, None, 10.0, answer("refused"))
        outbox.get("a", p, k, 10.0, answer("get"))
        await asyncio.wait_for(done.wait(), 30)
        assert answers["put"][0] is None
        assert answers["refused"][0] == "not_owner"
        assert answers["get"] == (None, rec)
        assert outbox.calls == 1 and outbox.ops == 3
        # An older peer is remembered: later turns go one call per op straight away.
        done.clear()
        answers.clear()
        for name in ("put", "refused", "get"):
            outbox.get("a", p, k, 10.0, answer(name))
        await asyncio.wait_for(done.wait(), 30)
        assert all(r == (None, rec) for r in answers.values())
        assert outbox.calls == (1 if legacy else 2)
    finally:
        await rpc.close()
        await server.close()
        await eng.close()


async def test_outbox_splits_a_peers_batch_where_the_timeout_changes(tmp_path: Path) -> None:
    """A call carries one timeout: ops to one peer with another timeout go in a call of their
    own (the open batch is sent first), and every op still gets its own answer."""
    server, eng, view = await _replica_server(tmp_path)
    rpc = RpcClient()
    addr = f"127.0.0.1:{server.port}"
    outbox = Outbox(rpc, lambda node: addr)
    try:
        k, p, _, _ = _owned_and_not(view)
        rec = _record(b"v", 1)
        got: dict[str, tuple[str | None, Any]] = {}
        done = asyncio.Event()

        def answer(name: str) -> Any:
            def on(reason: str | None, result: Any) -> None:
                got[name] = (reason, result)
                if len(got) == 4:
                    done.set()

            return on

        outbox.put("a", p, k, rec, None, 10.0, answer("put"))
        outbox.get("a", p, k, 10.0, answer("get-10"))
        assert outbox.queued == 2
        outbox.get("a", p, k, 5.0, answer("get-5"))
        assert outbox.queued == 1  # the first two went out with their own call
        outbox.get("a", p, k, 10.0, answer("get-10-again"))
        assert outbox.queued == 1
        outbox.flush()
        assert outbox.queued == 0
        await asyncio.wait_for(done.wait(), 30)
        assert got["put"][0] is None
        assert got["get-10"] == got["get-5"] == got["get-10-again"] == (None, rec)
        assert outbox.calls == 3 and outbox.ops == 4
    finally:
        await rpc.close()
        await server.close()
        await eng.close()


async def test_outbox_fails_every_op_of_a_call_that_cannot_be_made() -> None:
    rpc = RpcClient()
    outbox = Outbox(rpc, lambda node: "127.0.0.1:1")  # nothing listens on port 1
    got: list[str | None] = []
    done = asyncio.Event()

    def answer(reason: str | None, result: Any) -> None:
        got.append(reason)
        if len(got) == 2:
            done.set()

    try:
        outbox.put("x", 0, b"k", _record(b"v", 1), None, 5.0, answer)
        outbox.get("x", 0, b"k", 5.0, answer)
        await asyncio.wait_for(done.wait(), 30)
        assert len(got) == 2 and all(r is not None for r in got)
    finally:
        await rpc.close()


async def test_flush_if_grown_counts_what_was_queued_since_it_last_looked() -> None:
    """A chunk of client requests sends its replica calls at once only if it made enough of
    them itself: what earlier chunks of the turn queued does not count towards the bar."""
    rpc = RpcClient()
    outbox = Outbox(rpc, lambda node: "127.0.0.1:1")  # nothing listens: the calls just fail

    def ignore(reason: str | None, result: Any) -> None:
        pass

    try:
        for _ in range(3):
            outbox.get("x", 0, b"k", 5.0, ignore)
        outbox.flush_if_grown(4, 1 << 20)
        assert outbox.queued == 3  # three since the start: under the bar
        outbox.get("x", 0, b"k", 5.0, ignore)
        outbox.flush_if_grown(4, 1 << 20)
        assert outbox.queued == 4  # one since the last look, though four are queued
        for _ in range(4):
            outbox.get("x", 0, b"k", 5.0, ignore)
        outbox.flush_if_grown(4, 1 << 20)
        assert outbox.queued == 0 and outbox.calls == 1 and outbox.ops == 8
    finally:
        await rpc.close()


async def test_flush_if_grown_sends_what_the_turn_queued_once_it_carries_enough_bytes() -> None:
    """One request per chunk never reaches the ops bar, but the turn's writes go out once
    what is queued carries ``min_bytes`` (keys and records), so the peers start on them
    while the coordinator reads on; reads, which carry only keys, stay queued."""
    rpc = RpcClient()
    outbox = Outbox(rpc, lambda node: "127.0.0.1:1")  # nothing listens: the calls just fail

    def ignore(reason: str | None, result: Any) -> None:
        pass

    record = _record(b"v" * 100, 1)
    per_put = len(b"k") + len(record)
    try:
        for _ in range(40):
            outbox.get("x", 0, b"k", 5.0, ignore)
            outbox.flush_if_grown(4, 4 * per_put)
        assert outbox.queued == 40 and outbox.calls == 0  # 40 keys: under the byte bar
        outbox.flush()
        for i in range(1, 4):
            outbox.put("x", 0, b"k", record, None, 5.0, ignore)
            outbox.flush_if_grown(4, 4 * per_put)
            assert outbox.queued == i  # one op a chunk, under both bars
        outbox.put("y", 0, b"k", record, None, 5.0, ignore)
        outbox.flush_if_grown(4, 4 * per_put)
        assert outbox.queued == 0 and outbox.calls == 3 and outbox.ops == 44  # both peers' batches
        outbox.put("x", 0, b"k", record, None, 5.0, ignore)
        outbox.flush_if_grown(4, 4 * per_put)
        assert outbox.queued == 1  # the count of bytes started again
    finally:
        await rpc.close()
