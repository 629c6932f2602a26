"""Fuzzing a live RpcServer: arbitrary bytes and arbitrary msgpack never crash or wedge it.

The server runs on its own event loop in a thread for the whole module; each example opens a
plain socket, sends its payload, half-closes and reads until the server is done with it. What
the server sends back must always be well-formed responses, and afterwards a fresh
connection must still get a normal answer.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.runtime.rpc import RpcServer, as_bytes, new_event_loop

IO_TIMEOUT_S = 10.0
MAX_FRAME = 64 * 1024


class ServerThread:
    def __init__(self) -> None:
        self.loop = new_event_loop()
        self.server: RpcServer | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        store: dict[bytes, bytes] = {}

        def put(key: Any, value: Any) -> bool:
            store[as_bytes(key, "key")] = as_bytes(value, "value")
            return True

        def get(key: Any) -> bytes | None:
            return store.get(as_bytes(key, "key"))

        async def aecho(*args: Any) -> list[Any]:
            await asyncio.sleep(0)
            return list(args)

        def boom(*args: Any) -> None:
            raise RuntimeError("boom")

        self.handlers: dict[str, Callable[..., Any]] = {
            "put": put,
            "get": get,
            "echo": lambda *a: list(a),
            "aecho": aecho,
            "boom": boom,
        }

    def start(self) -> int:
        self.thread.start()
        server = RpcServer(self.handlers, max_frame_bytes=MAX_FRAME)
        self.run(server.start("127.0.0.1", 0))
        self.server = server
        return server.port

    def run(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout=30)

    def connections(self) -> int:
        async def count() -> int:
            assert self.server is not None
            return self.server.connections

        return int(self.run(count()))

    def stop(self) -> None:
        if self.server is not None:
            self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[ServerThread, int]]:
    st_ = ServerThread()
    port = st_.start()
    try:
        yield st_, port
    finally:
        st_.stop()


def exchange(port: int, payload: bytes) -> list[Any]:
    """Send ``payload``, half-close, and return every message the server sent back."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # already closed by the server on an earlier part of the payload
        unp = msgpack.Unpacker(raw=False, strict_map_key=False, unicode_errors="surrogateescape")
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            unp.feed(data)
        return list(unp)


def assert_healthy(port: int) -> None:
    got = exchange(port, msgpack.packb([0, 77, "echo", ["ping", b"\x00"]]))
    assert got == [[1, 77, None, ["ping", b"\x00"]]]


def assert_well_formed(replies: list[Any]) -> None:
    for r in replies:
        assert isinstance(r, list) and len(r) == 4 and r[0] == 1, r
        assert isinstance(r[1], int)
        err = r[2]
        if err is not None:
            assert isinstance(err, dict) and isinstance(err.get("code"), str), err
            assert isinstance(err.get("message"), str)
            assert r[3] is None


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
objects = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(max_size=8) | st.binary(max_size=8) | st.integers(0, 9), children, max_size=4
        )
    ),
    max_leaves=20,
)
methods = (
    st.sampled_from(["echo", "aecho", "put", "get", "boom", "nope"])
    | st.binary(max_size=6)
    | objects
)
shaped = st.tuples(
    st.sampled_from([0, 0, 0, 1, 2, 9]) | objects,
    st.integers(0, 2**32 - 1) | objects,
    methods,
    st.lists(objects, max_size=4) | objects,
).map(list) | st.tuples(st.just(2), methods, st.lists(objects, max_size=3) | objects).map(list)


def pack(obj: Any) -> bytes:
    try:
        return bytes(msgpack.packb(obj, use_bin_type=True))
    except (ValueError, OverflowError, TypeError):
        return b"\xc0"


payloads = (
    st.binary(max_size=300)
    | objects.map(pack)
    | shaped.map(pack)
    | st.lists(
        shaped.map(pack) | objects.map(pack) | st.binary(max_size=20), min_size=1, max_size=4
    ).map(b"".join)
)


@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(payload=payloads)
def test_server_survives_any_input(live: tuple[ServerThread, int], payload: bytes) -> None:
    _, port = live
    assert_well_formed(exchange(port, payload))
    assert_healthy(port)


@settings(max_examples=40, deadline=None, database=None)
@given(requests=st.lists(shaped, min_size=1, max_size=20))
def test_each_request_gets_at_most_one_reply(
    live: tuple[ServerThread, int], requests: list[list[Any]]
) -> None:
    _, port = live
    replies = exchange(port, b"".join(pack(r) for r in requests))
    assert_well_formed(replies)
    sent = Counter(r[1] for r in requests if len(r) == 4 and type(r[1]) is int)
    got = Counter(r[1] for r in replies)
    assert all(n <= sent[msgid] for msgid, n in got.items()), (got, sent)
    assert_healthy(port)


keyed_objects = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, database=None)
@given(
    params=st.lists(st.lists(keyed_objects, max_size=4), min_size=1, max_size=10),
    use_async=st.booleans(),
)
def test_valid_requests_round_trip_exactly(
    live: tuple[ServerThread, int], params: list[list[Any]], use_async: bool
) -> None:
    _, port = live
    method = "aecho" if use_async else "echo"
    stream = b"".join(pack([0, i, method, p]) for i, p in enumerate(params))
    replies = sorted(exchange(port, stream), key=lambda r: r[1])
    assert [r[1] for r in replies] == list(range(len(params)))
    for r, p in zip(replies, params, strict=True):
        assert r[2] is None
        # compared as bytes: NaN != NaN, and str must stay str and bytes stay bytes
        assert pack(r[3]) == pack(p)


def test_no_connection_left_open(live: tuple[ServerThread, int]) -> None:
    server, port = live
    for payload in (b"\xc1", b"\x94\x00\x01", msgpack.packb([0, 1, "echo", []]) + b"\xd4"):
        exchange(port, payload)
    assert_healthy(port)
    deadline = 200
    while server.connections() and deadline:
        threading.Event().wait(0.01)
        deadline -= 1
    assert server.connections() == 0
