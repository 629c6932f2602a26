"""msgpack-RPC server and client over real sockets on 127.0.0.1, on uvloop and asyncio.

Each test runs its own event loop of the parametrized kind (``arun``), which also checks
that the test left no task running behind it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest

from kvstore.errors import (
    InternalError,
    InvalidRequest,
    KVError,
    Timeout,
    TooLarge,
    Unavailable,
    UnknownMethod,
    Unreachable,
)
from kvstore.runtime.rpc import (
    RpcClient,
    RpcServer,
    as_bytes,
    as_str,
    was_sent,
)
from kvstore.runtime.rpc.later import LATER, Reply, replies_later

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 10.0  # generous: the box is shared and busy


# --------------------------------------------------------------------------- helpers


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@asynccontextmanager
async def serving(
    handlers: Mapping[str, Callable[..., Any]], **kw: Any
) -> AsyncIterator[RpcServer]:
    server = RpcServer(handlers, **kw)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


@asynccontextmanager
async def client(**kw: Any) -> AsyncIterator[RpcClient]:
    c = RpcClient(**kw)
    try:
        yield c
    finally:
        await c.close()


class Raw:
    """A bare socket speaking msgpack by hand, as a foreign client would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.unp = msgpack.Unpacker(raw=False, strict_map_key=False)

    @classmethod
    async def open(cls, port: int) -> Raw:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    async def send(self, obj: Any, *, use_bin_type: bool = True) -> None:
        self.writer.write(msgpack.packb(obj, use_bin_type=use_bin_type))
        await self.writer.drain()

    async def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, timeout: float = WAIT_S) -> Any:
        """The next message; AssertionError if the server closes first."""
        async with asyncio.timeout(timeout):
            while True:
                for msg in self.unp:
                    return msg
                data = await self.reader.read(65536)
                if not data:
                    raise AssertionError("server closed the connection")
                self.unp.feed(data)

    async def closed_by_server(self, timeout: float = WAIT_S) -> bool:
        """Read until EOF; True if the server closed without sending another message."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        data = await self.reader.read(65536)
                    except ConnectionResetError:
                        return True
                    if not data:
                        return next(self.unp, None) is None
                    self.unp.feed(data)
        except TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def call_raw(raw: Raw, msgid: int, method: Any, params: Any) -> Any:
    await raw.send([0, msgid, method, params])
    return await raw.recv()


def kv_handlers() -> dict[str, Callable[..., Any]]:
    store: dict[bytes, bytes] = {}

    def put(key: Any, value: Any) -> bool:
        store[as_bytes(key, "key")] = as_bytes(value, "value")
        return True

    def get(key: Any) -> bytes | None:
        return store.get(as_bytes(key, "key"))

    def echo(*args: Any) -> list[Any]:
        return list(args)

    def name(x: Any) -> str:
        return as_str(x, "name")

    return {"put": put, "get": get, "echo": echo, "name": name}


SERVER_SCRIPT = """
import asyncio, sys
from kvstore.runtime.rpc import RpcServer, run

async def hang():
    await asyncio.Event().wait()

def echo(*a):
    return list(a)

async def main():
    server = RpcServer({"hang": hang, "echo": echo})
    await server.start("127.0.0.1", int(sys.argv[1]))
    print(server.port, flush=True)
    await asyncio.Event().wait()

run(main(), loop=sys.argv[2])
"""


@asynccontextmanager
async def server_process(
    port: int = 0, loop: str = "auto"
) -> AsyncIterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, str(port), loop],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line.strip(), "server process did not start"
        yield proc, int(line)
    finally:
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.wait)
        if proc.stdout is not None:
            proc.stdout.close()


# --------------------------------------------------------------------------- calls


def test_call_returns_result(arun: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers()) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            assert await c.call(addr, "put", [b"k", b"v"], 5) is True
            assert await c.call(addr, "get", [b"k"], 5) == b"v"
            assert await c.call(addr, "get", (b"missing",), 5) is None
            value = [
                None,
                True,
                False,
                0,
                -1,
                2**64 - 1,
                1.5,
                "é",
                b"\x00\xff",
                [1, [2]],
                {"a": {"b": b"c"}},
            ]
            assert await c.call(addr, "echo", value, 5) == value
            assert c.connected(addr) == 1
            assert server.connections == 1

    arun(body)


def test_many_in_flight_complete_out_of_order(arun: Any) -> None:
    async def body() -> None:
        n = 40
        gates = [asyncio.Event() for _ in range(n)]
        entered: list[int] = []

        async def wait_for(i: int) -> int:
            entered.append(i)
            await gates[i].wait()
            return i * 10

        async with serving({"wait_for": wait_for}) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            done_order: list[int] = []

            async def one(i: int) -> int:
                r = await c.call(addr, "wait_for", [i], WAIT_S)
                done_order.append(i)
                return int(r)

            calls = [asyncio.create_task(one(i)) for i in range(n)]
            await wait_until(lambda: len(entered) == n, "all requests to reach the server")
            for i in reversed(range(n)):  # released last-first: replies come back in reverse
                gates[i].set()
                await wait_until(lambda: i in done_order, f"reply {i}")  # noqa: B023
            assert await asyncio.gather(*calls) == [i * 10 for i in range(n)]
            assert done_order == list(reversed(range(n)))
            assert c.connected(addr) == 1 and server.connections == 1  # all on one connection

    arun(body)


def test_sync_and_async_handlers_side_by_side(arun: Any) -> None:
    async def body() -> None:
        async def slow_add(a: int, b: int) -> int:
            await asyncio.sleep(0.001)
            return a + b

        def add(a: int, b: int) -> int:
            return a + b

        async with serving({"add": add, "slow_add": slow_add}) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            calls = [
                c.call(addr, "slow_add" if i % 2 else "add", [i, 1], WAIT_S) for i in range(200)
            ]
            assert await asyncio.gather(*calls) == [i + 1 for i in range(200)]
            await wait_until(lambda: server.running_handlers == 0, "handler tasks to finish")

    arun(body)


def test_handlers_may_return_a_future(arun: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()

        def later(x: int) -> asyncio.Future[int]:
            f: asyncio.Future[int] = loop.create_future()
            loop.call_soon(f.set_result, x * 2)
            return f

        def fails() -> asyncio.Future[None]:
            f: asyncio.Future[None] = loop.create_future()
            f.set_exception(Unavailable("2 needed", answered=1, required=2))
            return f

        def cancelled() -> asyncio.Future[None]:
            f: asyncio.Future[None] = loop.create_future()
            f.cancel()
            return f

        handlers: dict[str, Callable[..., Any]] = {
            "later": later,
            "fails": fails,
            "cancelled": cancelled,
        }
        async with serving(handlers) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            assert await asyncio.gather(
                *(c.call(addr, "later", [i], WAIT_S) for i in range(50))
            ) == [i * 2 for i in range(50)]
            with pytest.raises(Unavailable) as ei:
                await c.call(addr, "fails", [], WAIT_S)
            assert ei.value.answered == 1
            with pytest.raises(InternalError, match="cancelled"):
                await c.call(addr, "cancelled", [], WAIT_S)
            await wait_until(lambda: server.running_handlers == 0, "handlers to settle")

    arun(body)


def test_handlers_may_answer_through_a_reply_callback(arun: Any) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()

        @replies_later
        def later(x: int, *, reply: Reply | None = None) -> Any:
            if x % 3 == 0:
                return x * 2  # known at once: returned, the callback is not used
            assert reply is not None
            if x % 3 == 1:
                loop.call_soon(reply, x * 2, None)
            else:
                loop.call_soon(reply, None, Unavailable("2 needed", answered=1, required=2))
            return LATER

        async with serving({"later": later}) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            got = await asyncio.gather(
                *(c.call(addr, "later", [i], WAIT_S) for i in range(60)), return_exceptions=True
            )
            for i, r in enumerate(got):
                if i % 3 == 2:
                    assert isinstance(r, Unavailable) and r.answered == 1
                else:
                    assert r == i * 2
            # Every request held for a callback was released exactly once.
            await wait_until(lambda: server.running_handlers == 0, "callbacks to answer")
            assert server.running_handlers == 0

    arun(body)


def test_after_chunk_runs_after_the_requests_of_each_chunk(arun: Any) -> None:
    async def body() -> None:
        handled: list[int] = []
        seen_at_hook: list[int] = []

        def put(x: int) -> int:
            handled.append(x)
            return x

        async with serving({"put": put}, after_chunk=lambda: seen_at_hook.append(len(handled))) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            assert await asyncio.gather(*(c.call(addr, "put", [i], WAIT_S) for i in range(40))) == list(range(40))
            # Called once per chunk read, after that chunk's requests were handled.
            assert seen_at_hook and seen_at_hook[-1] == 40
            assert seen_at_hook == sorted(seen_at_hook) and len(seen_at_hook) <= 40

    arun(body)


def test_request_returns_a_future(arun: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers()) as a, serving(kv_handlers()) as b, client() as c:
            addrs = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
            # not connected yet: the future covers the connect too
            futs = [c.request(addr, "echo", [i], WAIT_S) for i, addr in enumerate(addrs)]
            assert await asyncio.gather(*futs) == [[0], [1]]
            # connected: fan out, take the first answer, let the other finish on its own
            futs = [c.request(addr, "echo", ["x"], WAIT_S) for addr in addrs]
            done, _ = await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
            assert next(iter(done)).result() == ["x"]
            assert await asyncio.gather(*futs) == [["x"], ["x"]]
            with pytest.raises(InvalidRequest, match="cannot be sent"):
                c.request(addrs[0], "echo", [object()], WAIT_S)
            down = f"127.0.0.1:{_closed_port()}"
            with pytest.raises(Unreachable, match="refused") as ei:
                await c.request(down, "echo", [], WAIT_S)
            assert not was_sent(ei.value)
            with pytest.raises(Unreachable, match="down"):
                await c.request(down, "echo", [], WAIT_S)

    arun(body)


def test_notification_runs_handler_and_sends_nothing(arun: Any) -> None:
    async def body() -> None:
        seen: list[Any] = []

        def note(x: Any) -> str:
            seen.append(x)
            return "ignored"

        async def anote(x: Any) -> None:
            seen.append(("async", x))

        async with (
            serving({"note": note, "anote": anote, **kv_handlers()}) as server,
            client() as c,
        ):
            addr = f"127.0.0.1:{server.port}"
            c.notify(addr, "note", [1])  # not connected yet: connects in the background
            await wait_until(lambda: seen == [1], "the notification")
            c.notify(addr, "anote", [2])
            c.notify(addr, "nope", [3])  # unknown: dropped by the server, connection kept
            await wait_until(lambda: ("async", 2) in seen, "the async notification")

            raw = await Raw.open(server.port)
            await raw.send([2, "note", [4]])
            await raw.send([2, "nope", []])
            assert await call_raw(raw, 7, "echo", ["after"]) == [1, 7, None, ["after"]]
            assert seen[-1] == 4
            await raw.close()
            assert await c.call(addr, "echo", [1], WAIT_S) == [1]
            assert c.connected(addr) == 1

    arun(body)


def test_notify_to_a_down_peer_is_dropped(arun: Any) -> None:
    async def body() -> None:
        async with client(reconnect_min_s=60, reconnect_max_s=60) as c:
            addr = f"127.0.0.1:{_closed_port()}"
            with pytest.raises(Unreachable):
                await c.call(addr, "echo", [], WAIT_S)
            assert c.is_down(addr)
            c.notify(addr, "echo", [])  # no exception, nothing queued

    arun(body)


# --------------------------------------------------------------------------- errors


def test_handler_errors_arrive_as_the_same_class(arun: Any) -> None:
    async def body() -> None:
        def unavailable() -> None:
            raise Unavailable("only 1 of 2 replicas answered", answered=1, required=2)

        async def too_large() -> None:
            raise TooLarge("value of 2000000 bytes is over max_value_bytes")

        def bug() -> None:
            raise ValueError("oops")

        def inner_type_error(x: Any) -> Any:
            return x + "s"  # a bug in the handler, not a wrong call

        handlers: dict[str, Callable[..., Any]] = {
            "unavailable": unavailable,
            "too_large": too_large,
            "bug": bug,
            "inner": inner_type_error,
        }
        async with serving({**handlers, **kv_handlers()}) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            with pytest.raises(Unavailable) as ei:
                await c.call(addr, "unavailable", [], WAIT_S)
            assert (ei.value.answered, ei.value.required) == (1, 2)
            assert "only 1 of 2" in str(ei.value)
            with pytest.raises(TooLarge, match="max_value_bytes"):
                await c.call(addr, "too_large", [], WAIT_S)
            with pytest.raises(InternalError, match="ValueError: oops"):
                await c.call(addr, "bug", [], WAIT_S)
            with pytest.raises(InternalError, match="TypeError"):
                await c.call(addr, "inner", [1], WAIT_S)
            with pytest.raises(InvalidRequest, match="key must be bytes or str, got int"):
                await c.call(addr, "put", [1, b"v"], WAIT_S)
            with pytest.raises(InvalidRequest, match="put"):
                await c.call(addr, "put", [b"k"], WAIT_S)  # wrong param count
            with pytest.raises(InvalidRequest):
                await c.call(addr, "get", [b"k", b"extra"], WAIT_S)
            with pytest.raises(UnknownMethod, match="'frobnicate'"):
                await c.call(addr, "frobnicate", [], WAIT_S)
            # errors never cost the connection
            assert await c.call(addr, "echo", [1], WAIT_S) == [1]
            assert c.connected(addr) == 1 and server.connections == 1

    arun(body)


def test_unserialisable_result_is_an_internal_error(arun: Any) -> None:
    async def body() -> None:
        async def aobj() -> object:
            return object()

        async with (
            serving({"obj": lambda: object(), "aobj": aobj, "echo": lambda x: x}) as server,
            client() as c,
        ):
            addr = f"127.0.0.1:{server.port}"
            for m in ("obj", "aobj"):
                with pytest.raises(InternalError, match="cannot be sent"):
                    await c.call(addr, m, [], WAIT_S)
            with pytest.raises(InvalidRequest, match="cannot be sent"):
                await c.call(addr, "echo", [object()], WAIT_S)  # refused before sending
            with pytest.raises(InvalidRequest, match="cannot be sent"):
                await c.call(addr, "echo", [2**64], WAIT_S)
            # msgspec packs a set as the array any msgpack reader reads (msgpack's Packer
            # refused it): it arrives as a list.
            assert await c.call(addr, "echo", [{1, 2}], WAIT_S) == [1, 2]
            assert await c.call(addr, "echo", [2], WAIT_S) == 2
            assert server.connections == 1

    arun(body)


def test_timeout_leaves_the_connection_usable(arun: Any) -> None:
    async def body() -> None:
        release = asyncio.Event()

        async def hang() -> str:
            await release.wait()
            return "late"

        async with serving({"hang": hang, "echo": lambda x: x}) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            with pytest.raises(Timeout, match="hang"):
                await c.call(addr, "hang", [], 0.05)
            release.set()  # the late reply finds no caller and is dropped
            await wait_until(lambda: server.running_handlers == 0, "the late handler")
            assert await c.call(addr, "echo", ["x"], WAIT_S) == "x"
            assert c.connected(addr) == 1

    arun(body)


def test_timeouts_hit_only_the_calls_that_are_late(arun: Any) -> None:
    async def body() -> None:
        release = asyncio.Event()

        async def maybe_hang(i: int) -> int:
            if i % 3 == 0:
                await release.wait()
            return i

        async with serving({"f": maybe_hang}) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            # one loop turn: short and long timeouts side by side on one connection
            short = [asyncio.create_task(c.call(addr, "f", [i], 0.1)) for i in range(30)]
            long = [asyncio.create_task(c.call(addr, "f", [i], WAIT_S)) for i in range(30, 60)]
            results = await asyncio.gather(*short, return_exceptions=True)
            for i, r in enumerate(results):
                if i % 3 == 0:
                    assert isinstance(r, Timeout) and "no reply within" in str(r), r
                else:
                    assert r == i
            assert not any(t.done() for i, t in enumerate(long, 30) if i % 3 == 0)
            release.set()
            assert await asyncio.gather(*long) == list(range(30, 60))
            assert c.connected(addr) == 1

    arun(body)


def test_cancelled_call_does_not_break_the_connection(arun: Any) -> None:
    async def body() -> None:
        release = asyncio.Event()

        async def hang() -> str:
            await release.wait()
            return "late"

        async with serving({"hang": hang, "echo": lambda x: x}) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            task = asyncio.create_task(c.call(addr, "hang", [], WAIT_S))
            await wait_until(lambda: server.running_handlers == 1, "the call to arrive")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()
            await wait_until(lambda: server.running_handlers == 0, "the late handler")
            assert await c.call(addr, "echo", ["x"], WAIT_S) == "x"

    arun(body)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        ([9, 1, 2, 3], "protocol"),
        ([0, 1, "echo", 5], "invalid_request"),
        ([0, 1, "echo", {"a": 1}], "invalid_request"),
        ([0, 1, "echo", "ab"], "invalid_request"),
        ([0, 1, 7, []], "invalid_request"),
        ([0, 1, ["echo"], []], "invalid_request"),
        ([0, 1, {"m": 1}, []], "invalid_request"),
        ([0, 1, None, []], "invalid_request"),
        ([0, 1, "nope", []], "unknown_method"),
    ],
)
def test_wrong_shape_with_msgid_gets_an_error_reply(arun: Any, msg: Any, code: str) -> None:
    async def body() -> None:
        async with serving(kv_handlers()) as server:
            raw = await Raw.open(server.port)
            await raw.send(msg)
            reply = await raw.recv()
            assert reply[0] == 1 and reply[1] == 1 and reply[3] is None
            assert reply[2]["code"] == code and reply[2]["message"]
            assert await call_raw(raw, 2, "echo", ["ok"]) == [1, 2, None, ["ok"]]
            await raw.close()

    arun(body)


@pytest.mark.parametrize(
    "msg",
    [
        [0],
        [],
        [0, "x", "echo", []],
        [0, 1.5, "echo", []],
        [0, None, "echo", []],
        [0, 1, "echo"],
        [0, 1, "echo", [], 5],
        42,
        None,
        "abcd",
        b"\x00\x01\x02\x03",
        {"a": 1, "b": 2, "c": 3, "d": 4},
        [2, 5, []],
        [2, "echo", 5],
        [2, "echo"],
    ],
)
def test_wrong_shape_without_msgid_closes_the_connection(arun: Any, msg: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers()) as server:
            other = await Raw.open(server.port)
            raw = await Raw.open(server.port)
            await raw.send(msg)
            await raw.send([0, 2, "echo", []])  # never answered: the connection is gone
            assert await raw.closed_by_server()
            await raw.close()
            assert await call_raw(other, 3, "echo", []) == [1, 3, None, []]
            await other.close()
            await wait_until(lambda: server.connections == 0, "connections to close")

    arun(body)


def test_responses_sent_to_the_server_are_ignored(arun: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers()) as server:
            raw = await Raw.open(server.port)
            await raw.send([1, 5, None, "stray"])
            assert await call_raw(raw, 6, "echo", []) == [1, 6, None, []]
            await raw.close()

    arun(body)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc1",  # the one byte msgpack never uses
        b"\x91\xc1",
        b"\x92\x00\xc1garbage",
        b"\xd4\xff\x00",  # timestamp ext with a bad length
        b"\xdf\x00\x00\x00\x01\x01\x02",  # map with an int key
        b"\x91" * 5000 + b"\x00",  # nested deeper than the unpacker allows
    ],
)
def test_garbage_bytes_close_only_that_connection(arun: Any, garbage: bytes) -> None:
    async def body() -> None:
        async with serving(kv_handlers()) as server:
            other = await Raw.open(server.port)
            raw = await Raw.open(server.port)
            await raw.send([0, 1, "echo", ["before"]])
            await raw.send_bytes(garbage)
            assert await raw.recv() == [1, 1, None, ["before"]]  # replies owed are still sent
            assert await raw.closed_by_server()
            await raw.close()
            assert await call_raw(other, 2, "echo", []) == [1, 2, None, []]
            await other.close()

    arun(body)


def test_oversized_frame_closes_only_that_connection(arun: Any) -> None:
    async def body() -> None:
        limit = 64 * 1024
        async with serving(kv_handlers(), max_frame_bytes=limit) as server:
            addr = f"127.0.0.1:{server.port}"
            other = await Raw.open(server.port)
            assert await call_raw(other, 1, "echo", []) == [1, 1, None, []]

            raw = await Raw.open(server.port)
            await raw.send([0, 1, "echo", [b"x" * (limit + 1)]])
            assert await raw.closed_by_server()
            await raw.close()

            # A header announcing a huge bin: the body is not buffered past the limit.
            raw = await Raw.open(server.port)
            await raw.send_bytes(b"\x94\x00\x01\xa4echo\x91\xc6\x40\x00\x00\x00")
            for _ in range(5):
                await raw.send_bytes(b"z" * (limit // 4))
            assert await raw.closed_by_server()
            await raw.close()

            # A frame near the limit is fine, however it is cut into chunks.
            raw = await Raw.open(server.port)
            big = [0, 2, "echo", [b"y" * (limit - 100)]]
            data = msgpack.packb(big) * 2 + msgpack.packb([0, 3, "echo", ["small"]])
            for i in range(0, len(data), 40_000):
                await raw.send_bytes(data[i : i + 40_000])
            for _ in range(2):
                reply = await raw.recv()
                assert reply[1] == 2 and reply[3] == [b"y" * (limit - 100)]
            assert await raw.recv() == [1, 3, None, ["small"]]
            await raw.close()

            assert await call_raw(other, 4, "echo", ["still here"]) == [1, 4, None, ["still here"]]
            await other.close()

            # The client refuses to send what the server would refuse, keeping its connection.
            async with client(max_frame_bytes=limit) as c:
                assert await c.call(addr, "echo", [1], WAIT_S) == [1]
                with pytest.raises(TooLarge, match="max_frame_bytes"):
                    await c.call(addr, "echo", [b"z" * limit], WAIT_S)
                assert await c.call(addr, "echo", [2], WAIT_S) == [2]
                assert c.connected(addr) == 1

    arun(body)


def test_oversized_reply_fails_the_calls_on_that_connection(arun: Any) -> None:
    async def body() -> None:
        async with serving({"big": lambda n: b"x" * n, "echo": lambda x: x}) as server:
            addr = f"127.0.0.1:{server.port}"
            async with client(max_frame_bytes=4096) as c:
                with pytest.raises(Unreachable, match="lost") as ei:
                    await c.call(addr, "big", [10_000], WAIT_S)
                assert was_sent(ei.value)
                assert await c.call(addr, "echo", [1], WAIT_S) == 1  # reconnects

    arun(body)


def test_str_and_bytes_interop_with_an_old_client(arun: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers()) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            old = await Raw.open(server.port)
            # use_bin_type=False: bytes go out as msgpack str, as old clients send everything
            await old.send([0, 1, b"put", [b"key", b"value"]], use_bin_type=False)
            assert await old.recv() == [1, 1, None, True]
            assert await c.call(addr, "get", [b"key"], WAIT_S) == b"value"
            assert await c.call(addr, "get", ["key"], WAIT_S) == b"value"
            # invalid UTF-8 inside a str survives the round trip byte for byte
            await old.send([0, 2, "put", [b"\xff\xfek", b"\xc3\x28"]], use_bin_type=False)
            assert (await old.recv())[2] is None
            assert await c.call(addr, "get", [b"\xff\xfek"], WAIT_S) == b"\xc3\x28"
            # method names as bin are accepted; an invalid UTF-8 one is named in the error
            await old.send([0, 3, b"echo", [1]], use_bin_type=True)
            assert await old.recv() == [1, 3, None, [1]]
            await old.send([0, 4, b"\xffno", []], use_bin_type=False)
            reply = await old.recv()
            assert reply[2]["code"] == "unknown_method" and "no" in reply[2]["message"]
            await old.send([0, 5, "name", [b"bin-name"]])
            assert await old.recv() == [1, 5, None, "bin-name"]
            await old.send([0, 6, "name", [5]])
            assert (await old.recv())[2]["message"] == "name must be a string, got int"
            await old.close()

    arun(body)


def test_a_reader_that_stalls_is_throttled_not_dropped(arun: Any) -> None:
    async def body() -> None:
        blob = b"b" * 32 * 1024
        async with serving({"blob": lambda: blob}) as server:
            raw = await Raw.open(server.port)
            n = 300  # ~10 MB of replies the client does not read while it sends
            await raw.send_bytes(b"".join(msgpack.packb([0, i, "blob", []]) for i in range(n)))
            await asyncio.sleep(0.05)
            got = [await raw.recv() for _ in range(n)]
            assert sorted(m[1] for m in got) == list(range(n))
            assert all(m[3] == blob for m in got)
            await raw.close()

    arun(body)


def test_inflight_cap_pauses_and_resumes_reading(arun: Any) -> None:
    async def body() -> None:
        release = asyncio.Event()

        async def hold(i: int) -> int:
            await release.wait()
            return i

        async with serving({"hold": hold}, max_inflight=2) as server:
            raw = await Raw.open(server.port)
            for i in range(10):
                await raw.send([0, i, "hold", [i]])
            await wait_until(lambda: server.running_handlers >= 2, "the first handlers")
            release.set()
            got = sorted([(await raw.recv())[3] for _ in range(10)])
            assert got == list(range(10))
            await raw.close()

    arun(body)


# --------------------------------------------------------------------------- failures


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nobody listens here once the socket is closed


def test_connect_refused_is_unreachable_and_not_sent(arun: Any) -> None:
    async def body() -> None:
        async with client() as c:
            addr = f"127.0.0.1:{_closed_port()}"
            with pytest.raises(Unreachable, match=f"cannot reach {addr}: connection refused") as ei:
                await c.call(addr, "echo", [], WAIT_S)
            assert not was_sent(ei.value)
            assert c.is_down(addr)

    arun(body)


def test_killed_server_fails_pending_calls_promptly(arun: Any) -> None:
    async def body() -> None:
        async with server_process() as (proc, port), client() as c:
            addr = f"127.0.0.1:{port}"
            assert await c.call(addr, "echo", [1], WAIT_S) == [1]
            calls = [asyncio.create_task(c.call(addr, "hang", [], 300)) for _ in range(5)]
            await asyncio.sleep(0.05)  # let them go out (not needed for correctness)
            os.kill(proc.pid, signal.SIGKILL)
            # with a 300 s timeout, an Unreachable (not a Timeout) proves they failed on the drop
            results = await asyncio.gather(*calls, return_exceptions=True)
            for r in results:
                assert isinstance(r, Unreachable), r
                assert "lost" in str(r)
                assert was_sent(r)
            await asyncio.to_thread(proc.wait)  # its listening socket may outlive a connection
            with pytest.raises(Unreachable) as ei:
                await c.call(addr, "echo", [1], WAIT_S)
            assert not was_sent(ei.value)

    arun(body)


def test_fail_fast_while_down_even_if_the_peer_is_back(arun: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers()) as first:
            port = first.port
        async with client(reconnect_min_s=60, reconnect_max_s=60) as c:
            addr = f"127.0.0.1:{port}"
            with pytest.raises(Unreachable, match="connection refused"):
                await c.call(addr, "echo", [], WAIT_S)
            assert c.is_down(addr)
            server = RpcServer(kv_handlers())
            await server.start("127.0.0.1", port)
            try:
                for _ in range(3):
                    with pytest.raises(Unreachable, match="down, next try in") as ei:
                        await c.call(addr, "echo", [], WAIT_S)
                    assert not was_sent(ei.value)
                assert server.connections == 0  # no connect was even tried
                assert c.is_down(addr)
            finally:
                await server.close()

    arun(body)


def test_reconnects_with_backoff_after_the_server_comes_back(arun: Any) -> None:
    async def body() -> None:
        async with (
            server_process() as (proc, port),
            client(reconnect_min_s=0.02, reconnect_max_s=0.2) as c,
        ):
            addr = f"127.0.0.1:{port}"
            assert await c.call(addr, "echo", ["a"], WAIT_S) == ["a"]
            proc.kill()
            await asyncio.to_thread(proc.wait)
            with pytest.raises(Unreachable):
                await c.call(addr, "echo", [], WAIT_S)
            failures = 0
            while failures < 5:  # the backoff keeps expiring: each retry is a fresh refusal
                await wait_until(lambda: not c.is_down(addr), "the backoff to expire")
                with pytest.raises(Unreachable, match="connection refused"):
                    await c.call(addr, "echo", [], WAIT_S)
                failures += 1
            async with server_process(port) as (_, port2):
                assert port2 == port
                loop = asyncio.get_running_loop()
                deadline = loop.time() + WAIT_S
                while True:
                    try:
                        assert await c.call(addr, "echo", ["b"], WAIT_S) == ["b"]
                        break
                    except Unreachable:
                        assert loop.time() < deadline, "never reconnected"
                        await asyncio.sleep(0.01)
                assert not c.is_down(addr)
                assert c.connected(addr) == 1

    arun(body)


def test_server_close_cancels_handlers_and_closes_connections(arun: Any) -> None:
    async def body() -> None:
        cancelled = asyncio.Event()

        async def hang() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        server = RpcServer({"hang": hang})
        await server.start("127.0.0.1", 0)
        async with client() as c:
            addr = f"127.0.0.1:{server.port}"
            call = asyncio.create_task(c.call(addr, "hang", [], 300))
            await wait_until(lambda: server.running_handlers == 1, "the handler to start")
            await server.close()
            assert cancelled.is_set()
            assert server.connections == 0 and server.running_handlers == 0
            with pytest.raises(Unreachable, match="lost"):
                await call
            with pytest.raises(Unreachable, match="refused"):
                await c.call(addr, "hang", [], WAIT_S)

    arun(body)


def test_client_close_fails_pending_calls(arun: Any) -> None:
    async def body() -> None:
        release = asyncio.Event()

        async def hang() -> None:
            await release.wait()

        async with serving({"hang": hang}) as server:
            c = RpcClient()
            addr = f"127.0.0.1:{server.port}"
            call = asyncio.create_task(c.call(addr, "hang", [], 300))
            await wait_until(lambda: server.running_handlers == 1, "the handler to start")
            await c.close()
            with pytest.raises(Unreachable, match="closed by this client"):
                await call
            with pytest.raises(Unreachable, match="client is closed"):
                await c.call(addr, "hang", [], WAIT_S)
            # The server keeps a half-closed connection until the replies it owes are out.
            release.set()
            await wait_until(lambda: server.connections == 0, "the server to see the close")


def test_half_closed_client_still_gets_its_replies(arun: Any) -> None:
    async def body() -> None:
        async def later(x: int) -> int:
            await asyncio.sleep(0.01)
            return x

        async with serving({"later": later, "now": lambda x: x}) as server:
            raw = await Raw.open(server.port)
            for i in range(5):
                await raw.send([0, i, "later" if i % 2 else "now", [i]])
            raw.writer.write_eof()
            got = sorted([(await raw.recv())[3] for _ in range(5)])
            assert got == list(range(5))
            assert await raw.closed_by_server()
            await raw.close()
            await wait_until(lambda: server.connections == 0, "the connection to close")

    arun(body)


# --------------------------------------------------------------------------- pool options


def test_conns_per_peer_spreads_calls(arun: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers()) as server, client(conns_per_peer=3) as c:
            addr = f"127.0.0.1:{server.port}"
            results = await asyncio.gather(*(c.call(addr, "echo", [i], WAIT_S) for i in range(30)))
            assert results == [[i] for i in range(30)]
            assert c.connected(addr) == 3
            assert server.connections == 3

    arun(body)


def test_source_host_binds_outgoing_connections(arun: Any) -> None:
    async def body() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        try:
            async with client(source_host="127.0.0.2") as c:
                addr = f"127.0.0.1:{listener.getsockname()[1]}"
                call = asyncio.create_task(c.call(addr, "echo", [], WAIT_S))
                loop = asyncio.get_running_loop()
                conn, peer = await asyncio.wait_for(loop.sock_accept(listener), WAIT_S)
                assert peer[0] == "127.0.0.2"
                conn.close()  # the call then fails as a lost connection
                with pytest.raises(Unreachable):
                    await call
        finally:
            listener.close()

    arun(body)


def test_as_bytes_and_as_str() -> None:
    assert as_bytes(b"x") == b"x"
    assert as_bytes("é") == "é".encode()
    assert as_bytes(bytearray(b"y")) == b"y"
    assert as_bytes("\udcff") == b"\xff"  # what surrogateescape decoding produced
    with pytest.raises(InvalidRequest, match="not encodable"):
        as_bytes("\ud800")
    with pytest.raises(InvalidRequest, match="key must be bytes or str, got NoneType"):
        as_bytes(None, "key")
    assert as_str("s") == "s"
    assert as_str(b"s") == "s"
    assert as_str(b"\xff") == "\udcff"
    with pytest.raises(InvalidRequest, match="node must be a string, got list"):
        as_str([], "node")
    assert issubclass(InvalidRequest, KVError)


# --------------------------------------------------------------------------- reply callbacks


def test_request_cb_answers_while_the_reply_is_read(arun: Any) -> None:
    """A callback call gets its result, error, timeout or lost connection through the
    callback, called from the reading of the reply (no pass of the loop in between), and
    the first call to a peer not yet connected connects first."""

    async def body() -> None:
        release = asyncio.Event()

        async def hang() -> str:
            await release.wait()
            return "late"

        def boom() -> None:
            raise Unavailable("1 of 2", answered=1, required=2)

        got: list[tuple[Any, Any]] = []

        def sink(result: Any, exc: BaseException | None) -> None:
            got.append((result, exc))

        async with serving({"echo": lambda x: x, "boom": boom, "hang": hang}) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            c.request_cb(addr, "echo", ["first"], WAIT_S, sink)  # not connected yet
            await wait_until(lambda: len(got) == 1, "the reply over a new connection")
            assert got.pop() == ("first", None)
            seen: list[int] = []
            # How many replies had arrived when each chunk of replies was done being read.
            c.around_replies = (lambda: None, lambda: seen.append(len(got)))
            c.request_cb(addr, "echo", ["x"], WAIT_S, sink)
            c.request_cb(addr, "boom", [], WAIT_S, sink)
            await wait_until(lambda: len(got) == 2, "the two replies")
            # Both were answered from inside the read, before it returned.
            assert seen and seen[-1] == 2
            c.around_replies = None
            assert got[0] == ("x", None)
            assert got[1][0] is None and isinstance(got[1][1], Unavailable)
            got.clear()
            c.request_cb(addr, "hang", [], 0.05, sink)
            await wait_until(lambda: len(got) == 1, "the timeout")
            assert got[0][0] is None and isinstance(got[0][1], Timeout)
            got.clear()
            release.set()
            await wait_until(lambda: server.running_handlers == 0, "the late handler")
            # A callback that raises is logged; the connection reads on.
            c.request_cb(addr, "echo", ["a"], WAIT_S, lambda r, e: 1 / 0)
            c.request_cb(addr, "echo", ["b"], WAIT_S, sink)
            await wait_until(lambda: len(got) == 1, "the reply after a failing callback")
            assert got.pop() == ("b", None)
            # Encoding errors raise at once and never reach the callback.
            with pytest.raises(InvalidRequest):
                c.request_cb(addr, "echo", [object()], WAIT_S, sink)
            c.request_cb(addr, "hang", [], WAIT_S, sink)
            release.clear()
        # The client closed with the call in flight: it fails, through the callback.
        await wait_until(lambda: len(got) == 1, "the lost call")
        assert got[0][0] is None and isinstance(got[0][1], Unreachable)

    arun(body)


def test_held_replies_are_written_at_release_without_a_loop_pass(arun: Any) -> None:
    """Between hold_replies and release_replies a reply callback's reply is queued and no
    flush is scheduled; release writes it. Engine commits and peer replies use this."""

    async def body() -> None:
        later: list[Reply] = []

        @replies_later
        def slow(*, reply: Reply | None = None) -> Any:
            assert reply is not None
            later.append(reply)
            return LATER

        async with serving({"slow": slow}) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            call = asyncio.ensure_future(c.call(addr, "slow", [], WAIT_S))
            await wait_until(lambda: len(later) == 1, "the handler")
            (conn,) = server._conns
            flusher = conn._flusher
            server.hold_replies()
            later[0]("done", None)
            # Queued, and no write scheduled for a later pass of the loop.
            assert conn._out and not flusher._scheduled
            server.release_replies()
            assert not conn._out and not conn._queued  # written by the release itself
            assert await call == "done"

    arun(body)


def test_one_timer_serves_the_deadlines_of_every_turn(arun: Any) -> None:
    """Calls answered in time never touch the timer: it is set once for the earliest
    deadline, and a shorter timeout that comes later sets it earlier and still fires."""

    async def body() -> None:
        release = asyncio.Event()

        async def hang() -> str:
            await release.wait()
            return "late"

        async with serving({"echo": lambda x: x, "hang": hang}) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            assert await c.call(addr, "echo", [0], WAIT_S) == 0
            timer = c._deadlines._timer
            assert timer is not None
            for i in range(1, 30):  # each its own loop turn and batch
                assert await c.call(addr, "echo", [i], WAIT_S) == i
                assert c._deadlines._timer is timer
            with pytest.raises(Timeout):
                await c.call(addr, "hang", [], 0.05)
            release.set()
            await wait_until(lambda: server.running_handlers == 0, "the late handler")
            assert await c.call(addr, "echo", ["after"], WAIT_S) == "after"

    arun(body)


def test_a_reply_given_at_once_by_a_callback_is_written_with_its_chunk(arun: Any) -> None:
    """A replies_later handler that answers inside the call (a read of one replica) has its
    reply written when the request's chunk is done, with no flush scheduled for later."""

    async def body() -> None:
        @replies_later
        def now(x: Any, *, reply: Reply | None = None) -> Any:
            assert reply is not None
            reply(x, None)
            return LATER

        async with serving({"now": now}) as server, client() as c:
            addr = f"127.0.0.1:{server.port}"
            assert await c.call(addr, "now", [1], WAIT_S) == 1
            (conn,) = server._conns
            # A request handed to the connection as a chunk would be (its reply, to a msgid
            # the client never sent, is dropped there).
            conn.data_received(msgpack.packb([0, 7, "now", ["x"]]))
            # Written by the end of the chunk: nothing left queued, no flush pending.
            assert not conn._out and not conn._queued and not conn._flusher._scheduled

    arun(body)


def test_whole_frame_chunks_and_split_frames_keep_their_order(arun: Any) -> None:
    """A chunk that is one whole frame is decoded on its own; one that follows frames still
    in the unpacker (a frame split across chunks) must not overtake them."""

    async def body() -> None:
        async with serving({"echo": lambda x: x}) as server:
            raw = await Raw.open(server.port)
            await wait_until(lambda: len(server._conns) == 1, "the server's connection")
            (conn,) = server._conns
            frames = [msgpack.packb([0, i, "echo", [i]]) for i in range(6)]
            split = frames[2][:5]
            for chunk in (
                frames[0],  # one whole frame
                frames[1] + split,  # a frame and the start of the next
                frames[2][5:],  # the rest of it
                frames[3],  # whole again
                frames[4] + frames[5],  # two at once
            ):
                conn.data_received(chunk)
            got = [await raw.recv() for _ in range(6)]
            assert got == [[1, i, None, i] for i in range(6)]
            raw.writer.close()

    arun(body)


def test_a_whole_frame_msgpack_refuses_closes_the_connection_as_before(arun: Any) -> None:
    """Framing passes a map with an int key; msgpack (strict map keys) refuses it: the
    connection is closed with the same complaint whichever decoding path took the chunk."""

    async def body() -> None:
        async with serving({"echo": lambda x: x}) as server:
            raw = await Raw.open(server.port)
            await raw.send([0, 1, "echo", [1]])
            assert await raw.recv() == [1, 1, None, 1]
            await raw.send_bytes(msgpack.packb([0, 2, "echo", [{1: 2}]], strict_types=False))
            async with asyncio.timeout(WAIT_S):
                assert await raw.reader.read() == b""  # closed, no reply
            raw.writer.close()

    arun(body)
