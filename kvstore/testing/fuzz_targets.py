"""The decoders a node runs on bytes from outside, as fuzz targets: one function per target,
taking any bytes, raising only on a bug.

benchmarks/fuzz.py runs them under atheris (coverage-guided, for minutes); the tests replay
the seed corpus in tests/fuzz_corpus/ through them, so every input atheris ever found
interesting and that was kept there stays a regression test.

    frame    the RPC server's receive path: FrameScanner, unpacker, dispatch, replies,
             with the input cut into chunks at places the input itself chooses
    record   storage records and causal contexts (kvstore.core.vclock)
    gossip   SWIM packets and push-pull states, plain and AES-GCM sealed
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack

from kvstore.core import vclock
from kvstore.core.membership import wire
from kvstore.errors import InvalidRequest, ProtocolError
from kvstore.runtime import rpc
from kvstore.runtime.rpc import conn as rpc_conn
from kvstore.runtime.rpc import server as rpc_server
from kvstore.runtime.security import Keyring

__all__ = ["TARGETS", "fuzz_frame", "fuzz_gossip", "fuzz_record"]


class _Transport(asyncio.Transport):
    """Just enough of a transport for a server connection, in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self.closed = False
        self.reading = True

    def write(self, data: Any) -> None:
        self.out.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("fuzz", 0) if name == "peername" else default


class _FrameHarness:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        store: dict[bytes, bytes] = {}

        def put(key: Any, value: Any) -> bool:
            store[rpc.as_bytes(key, "key")] = rpc.as_bytes(value, "value")
            if len(store) > 1000:
                store.clear()
            return True

        def get(key: Any) -> bytes | None:
            return store.get(rpc.as_bytes(key, "key"))

        def boom(*_: Any) -> None:
            raise RuntimeError("boom")

        def fail(*_: Any) -> None:
            raise InvalidRequest("no")

        handlers: dict[str, Callable[..., Any]] = {
            "put": put, "get": get, "echo": lambda *a: list(a), "boom": boom, "fail": fail,
            "name": lambda x: rpc.as_str(x, "name"),
        }
        self.server = rpc.RpcServer(handlers, max_frame_bytes=64 * 1024, max_frame_elements=4096)
        self.server._loop = self.loop
        self.server._flusher = rpc_conn._Flusher(self.loop)
        self.secured = rpc.RpcServer(handlers, keyring=Keyring([b"fuzz-secret-0123456789"]))
        self.secured._loop = self.loop
        self.secured._flusher = rpc_conn._Flusher(self.loop)

    def run(self, data: bytes) -> None:
        # The first byte picks the server and how the rest is cut into chunks.
        if not data:
            return
        head, body = data[0], data[1:]
        server = self.secured if head & 0x80 else self.server
        conn = rpc_server._ServerConn(server)
        t = _Transport()
        conn.connection_made(t)
        step = 1 + (head & 0x3F) * 7
        for i in range(0, len(body), step):
            if t.closed:
                break
            conn.data_received(body[i : i + step])
        conn.eof_received()
        conn.connection_lost(None)
        # Run what was queued (flushes), without letting callbacks pile up between inputs.
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()
        unp = msgpack.Unpacker(raw=False, strict_map_key=False, unicode_errors="surrogateescape")
        for chunk in t.out:
            unp.feed(chunk)
        for reply in unp:
            # Every reply is well formed: [1, msgid, error|None, result] or a notification.
            assert type(reply) is list and reply[0] in (1, 2), reply
            if reply[0] == 1:
                assert len(reply) == 4 and type(reply[1]) is int
                if reply[2] is not None:
                    assert type(reply[2]) is dict and type(reply[2]["code"]) is str


_frame: _FrameHarness | None = None


def fuzz_frame(data: bytes) -> None:
    global _frame
    if _frame is None:
        _frame = _FrameHarness()
    _frame.run(data)


def fuzz_record(data: bytes) -> None:
    try:
        obj = vclock.decode(data)
    except InvalidRequest:
        pass
    else:
        # What decodes must encode back to something that decodes to the same record.
        again = vclock.decode(vclock.encode(obj))
        assert again.siblings == obj.siblings and again.vv == obj.vv
    try:
        vv = vclock.decode_context(data)
    except InvalidRequest:
        return
    assert vclock.decode_context(vclock.encode_context(vv)) == vv


_KEYS = Keyring([b"fuzz-secret-0123456789", b"fuzz-secret-old-98765"])


def fuzz_gossip(data: bytes) -> None:
    for candidate in (data, _KEYS.open(data)):
        if candidate is None:
            continue
        try:
            wire.decode_packet(candidate)
        except ProtocolError:
            pass
        try:
            wire.decode_state(candidate)
        except ProtocolError:
            pass
    # A sealed packet opens to what was sealed; one flipped byte and it does not open.
    sealed = _KEYS.seal(data)
    assert _KEYS.open(sealed) == data
    if data:
        i = data[0] % len(sealed)
        forged = sealed[:i] + bytes([sealed[i] ^ 0x01]) + sealed[i + 1 :]
        assert _KEYS.open(forged) is None


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frame": fuzz_frame,
    "record": fuzz_record,
    "gossip": fuzz_gossip,
}
