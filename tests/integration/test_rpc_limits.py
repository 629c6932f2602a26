"""Limits of the RPC server under abuse, over real sockets on 127.0.0.1.

Frames over the byte, depth or element limits are refused while they arrive (however they
are cut), replies are bounded per connection (back pressure instead of buffering), and
connections are capped, and closed when idle, slow, or holding a partial frame.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import msgpack
import pytest

from kvstore.runtime.framing import FrameLimits, FrameScanner
from kvstore.runtime.rpc import BYE, RpcServer
from tests.integration.test_rpc import (
    WAIT_S,
    Raw,
    call_raw,
    client,
    kv_handlers,
    serving,
    wait_until,
)

MIB = 1024 * 1024


def test_a_frame_sent_in_pieces_is_refused_before_it_is_buffered(arun: Any) -> None:
    """The report: 15.7 MB in 1 MB strings, to a node with the default 8 MiB limit, was parsed
    and answered. Now the connection is closed once the frame passes 8 MiB, while most of
    it is still unsent, and nothing of it reaches a handler."""

    async def body() -> None:
        calls: list[int] = []

        def echo(*args: Any) -> int:
            calls.append(len(args))
            return len(args)

        async with serving({"echo": echo}) as server:
            assert server.max_frame_bytes == 8 * MIB
            raw = await Raw.open(server.port)
            piece = msgpack.packb(b"p" * (MIB - 16))
            await raw.send_bytes(b"\x94\x00\x01\xa4echo\xdc\x00\x10")  # 16 params to come
            sent, refused = 0, False
            for _ in range(16):
                try:
                    await raw.send_bytes(piece)
                    sent += 1
                except (ConnectionResetError, BrokenPipeError, RuntimeError):
                    refused = True
                    break
                await asyncio.sleep(0.01)  # one piece at a time, as a slow client would
            assert refused or await raw.closed_by_server()
            assert sent < 12, f"{sent} MB were taken before the connection was closed"
            assert calls == []
            await raw.close()
            other = await Raw.open(server.port)
            assert await call_raw(other, 1, "echo", [1]) == [1, 1, None, 1]
            await other.close()

    arun(body)


@pytest.mark.parametrize(
    "frame, why",
    [
        # One array header announcing 8M elements: refused at the header, never allocated.
        (b"\x94\x00\x01\xa4echo\xdd\x00\x80\x00\x00" + b"\x90" * 1000, "elements"),
        # Many small arrays: 1 byte of msgpack each, 56 bytes of Python each.
        (b"\x94\x00\x01\xa4echo\xdc\xff\xff" + b"\x90" * 65535, "elements"),
        (b"\x94\x00\x01\xa4echo\x91" + b"\x91" * 40 + b"\xc0", "deeper"),
        (b"\x94\x00\x01\xa4echo\x91\xc6\x7f\xff\xff\xff", "bytes"),  # a 2 GiB bin announced
    ],
)
def test_frames_past_a_limit_close_the_connection(arun: Any, frame: bytes, why: str, caplog: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers(), max_frame_elements=50_000, max_frame_depth=32) as server:
            raw = await Raw.open(server.port)
            await raw.send([0, 7, "echo", ["before"]])
            await raw.send_bytes(frame)
            assert await raw.recv() == [1, 7, None, ["before"]]
            assert await raw.closed_by_server()
            await raw.close()
            other = await Raw.open(server.port)
            assert await call_raw(other, 1, "echo", []) == [1, 1, None, []]
            await other.close()

    with caplog.at_level("DEBUG", logger="kvstore.rpc"):  # past the log rate limit: debug
        arun(body)
    assert any(why in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_scanner_finds_every_frame_however_it_is_cut() -> None:
    frames = [
        [0, 1, "put", [b"k" * 300, b"v" * 70_000, {"w": 2}]],
        [2, "note", [1.5, -1, 2**40, None, True]],
        [0, 2, "get", [msgpack.ExtType(3, b"x" * 20), {"a": [1, 2, {"b": b""}]}]],
    ]
    data = b"".join(msgpack.packb(f) for f in frames) * 3
    for cut in (1, 2, 3, 5, 64, 4096, len(data)):
        sc = FrameScanner(FrameLimits(1 * MIB))
        for i in range(0, len(data), cut):
            assert sc.feed(data[i : i + cut]) is None
        assert sc.frames == 9 and not sc.in_frame
    sc = FrameScanner(FrameLimits(1000))
    big = msgpack.packb([0, 1, "x", [b"y" * 2000]])
    assert sc.feed(big[:20]) is not None  # the bin header says 2000: refused before the body


def test_replies_are_bounded_per_connection(arun: Any) -> None:
    """A client that pipelines large reads and does not read the replies: the server stops
    reading it once its replies reach max_reply_buffer_bytes, and serves it all in the end."""

    async def body() -> None:
        blob = b"r" * (256 * 1024)
        async with serving({"blob": lambda: blob, "echo": lambda x: x}, max_reply_buffer_bytes=MIB) as server:
            raw = await Raw.open(server.port)
            n = 400  # 100 MB of replies asked for in one go
            request = b"".join(msgpack.packb([0, i, "blob", []]) for i in range(n))
            raw.writer.write(request)
            other = await Raw.open(server.port)
            assert await call_raw(other, 1, "echo", ["served meanwhile"]) == [1, 1, None, "served meanwhile"]
            conn = next(c for c in server._conns if c._transport.get_write_buffer_size() or c._paused_reply)
            # Never much more than the budget is held: the rest waits in the socket buffers.
            for _ in range(20):
                await asyncio.sleep(0.01)
                assert conn._transport.get_write_buffer_size() <= 2 * MIB
            got = [await raw.recv() for _ in range(n)]
            assert [m[1] for m in got] == list(range(n)) and all(m[3] == blob for m in got)
            await raw.close()
            await other.close()

    arun(body)


def test_connections_past_the_cap_are_closed_at_once(arun: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers(), max_connections=5) as server:
            raws = [await Raw.open(server.port) for _ in range(5)]
            for i, r in enumerate(raws):
                assert await call_raw(r, i, "echo", [i]) == [1, i, None, [i]]
            extra = await Raw.open(server.port)
            assert await extra.closed_by_server()
            await extra.close()
            assert server.stats["conns_refused"] >= 1
            await raws[0].close()
            await wait_until(lambda: server.connections == 4, "a slot to free up")
            again = await Raw.open(server.port)
            assert await call_raw(again, 9, "echo", []) == [1, 9, None, []]
            for r in [*raws[1:], again]:
                await r.close()

    arun(body)


def test_idle_connections_get_a_bye_and_are_closed(arun: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers(), idle_timeout_s=0.2) as server:
            raw = await Raw.open(server.port)
            assert await call_raw(raw, 1, "echo", []) == [1, 1, None, []]
            assert await raw.recv() == [2, BYE, []]
            assert await raw.closed_by_server()
            await raw.close()
            assert server.stats["idle_closed"] == 1
            # The pooled client moves to a new connection on bye: no call fails meanwhile.
            async with client() as c:
                addr = f"127.0.0.1:{server.port}"
                for i in range(8):
                    assert await c.call(addr, "echo", [i], WAIT_S) == [i]
                    await asyncio.sleep(0.1)

    arun(body)


def test_a_slow_sender_is_closed_and_others_are_served(arun: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers(), frame_timeout_s=0.3) as server:
            slow = await Raw.open(server.port)
            frame = msgpack.packb([0, 1, "echo", ["x" * 100]])
            closed = False
            for b in frame:  # one byte every 50 ms: the frame would take 5 s
                try:
                    await slow.send_bytes(bytes([b]))
                except (ConnectionResetError, BrokenPipeError, RuntimeError):
                    closed = True
                    break
                await asyncio.sleep(0.05)
                if slow.reader.at_eof():
                    closed = True
                    break
            assert closed or await slow.closed_by_server()
            assert server.stats["slow_closed"] == 1
            await slow.close()

    arun(body)


def test_a_thousand_half_open_connections_do_not_stop_others(arun: Any) -> None:
    """Slowloris: 1,000 connections each holding a partial frame. Another client is served
    throughout, and the holders are closed once frame_timeout_s has passed."""

    async def body() -> None:
        async with serving(kv_handlers(), frame_timeout_s=2.0) as server:
            holders: list[socket.socket] = []
            try:
                for _ in range(1000):
                    s = socket.socket()
                    s.setblocking(False)
                    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", server.port))
                    s.send(b"\x94\x00\x01\xa4ec")  # a frame begun, never finished
                    holders.append(s)
                await wait_until(lambda: server.connections >= 1000, "the holders to be accepted")
                async with client() as c:
                    addr = f"127.0.0.1:{server.port}"
                    for i in range(20):
                        assert await c.call(addr, "echo", [i], WAIT_S) == [i]
                    await wait_until(
                        lambda: server.stats["slow_closed"] >= 1000, "the holders to be closed", 60
                    )
                    assert await c.call(addr, "echo", ["after"], WAIT_S) == ["after"]
                    assert server.connections == 1
            finally:
                for s in holders:
                    s.close()

    arun(body)


def test_server_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        RpcServer({}, max_connections=0)
    with pytest.raises(ValueError):
        RpcServer({}, idle_timeout_s=0)
