"""Request accounting, the Prometheus collector's own pieces, the HTTP server and the log
formats: everything of kvstore.runtime.observe that runs without a cluster."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from kvstore.config import load_settings, parse_module_levels
from kvstore.core import messages as m
from kvstore.core.membership import MemberEvent, MemberInfo, MemberState
from kvstore.errors import ConfigError, InvalidRequest, TooLarge, Unavailable
from kvstore.runtime.logformat import JsonFormatter, setup_logging
from kvstore.runtime.observe.http import HttpServer, Response
from kvstore.runtime.observe.requests import RequestStats
from kvstore.runtime.observe.state import Observability, StorageStats
from kvstore.runtime.rpc.client import RpcClient
from kvstore.runtime.rpc.later import LATER, Reply, replies_later
from kvstore.runtime.rpc.server import RpcServer


async def test_request_stats_observe_every_reply_kind_through_a_real_server() -> None:
    """The RPC server tells RequestStats' observers of each request: a sync reply, an error
    raised at once, a future settled later, a coroutine that fails, a reply callback
    (replies_later), a call with the wrong arguments, and replica calls (counted only)."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[Any] = loop.create_future()

    async def forwarded(_key: Any, _opts: Any = None) -> dict[str, Any]:
        raise Unavailable("1 of 2", answered=1, required=2)

    def put(key: Any, value: Any, ctx: Any = None, opts: Any = None) -> Any:
        if len(value) > 3:
            raise TooLarge("too big")
        return pending

    @replies_later
    def delete(key: Any, ctx: Any = None, opts: Any = None, *, reply: Reply | None = None) -> Any:
        assert reply is not None
        loop.call_soon(reply, {"context": b""}, None)
        return LATER

    rs = RequestStats()
    handlers: dict[str, Callable[..., Any]] = {
        "get": lambda key, opts=None: {"values": [b"a", b"b"], "context": b""},
        "put": put, "delete": delete, m.FWD_GET: forwarded,
        m.REPLICA_GET: lambda p, k: None, m.REPLICA_MANY: lambda ops: [None] * len(ops),
        "other": lambda: 1,
    }  # fmt: skip
    server = RpcServer(handlers, observers=rs.observers())
    await server.start("127.0.0.1", 0)
    c = RpcClient()
    addr = f"127.0.0.1:{server.port}"
    try:
        assert await c.call(addr, "get", [b"k"], 5) == {"values": [b"a", b"b"], "context": b""}
        with pytest.raises(TooLarge):
            await c.call(addr, "put", [b"k", b"toolong"], 5)
        put_reply = asyncio.ensure_future(c.call(addr, "put", [b"k", b"ok"], 5))
        await asyncio.sleep(0.05)
        assert not put_reply.done()
        pending.set_result({"context": b""})
        assert await put_reply == {"context": b""}
        with pytest.raises(Unavailable):
            await c.call(addr, m.FWD_GET, [b"k"], 5)
        assert await c.call(addr, "delete", [b"k"], 5) == {"context": b""}
        assert await c.call(addr, m.REPLICA_GET, [1, b"k"], 5) is None
        many = [[m.MANY_PUT, 1, b"k", b"r"], [m.MANY_PUT, 1, b"j", b"r"], [m.MANY_GET, 1, b"k"]]
        assert await c.call(addr, m.REPLICA_MANY, [many], 5) == [None] * 3
        assert await c.call(addr, "other", [], 5) == 1
        # A call with the wrong arguments is answered invalid_request, and counted so.
        with pytest.raises(InvalidRequest):
            await c.call(addr, "get", [], 5)
    finally:
        await c.close()
        await server.close()
    get, put_s, delete_s = rs.ops["get"], rs.ops["put"], rs.ops["delete"]
    assert get.requests == 3 and get.errors == {"unavailable": 1, "invalid_request": 1}
    assert get.latency.count == 3 and get.latency.sum > 0
    assert put_s.requests == 2 and put_s.errors == {"too_large": 1} and put_s.latency.count == 2
    # The put that waited on its future was timed to the reply, not to the handler's return.
    assert put_s.latency.sum >= 0.05
    assert delete_s.requests == 1 and delete_s.errors == {} and delete_s.latency.count == 1
    assert rs.siblings.count == 1 and rs.siblings.sum == 2
    assert rs.replica == {"get": 2, "put": 2, "put_batch": 0}
    assert rs.total_requests() == 6


def test_storage_stats_count_batches_and_only_synced_ones_as_fsyncs() -> None:
    s = StorageStats()
    s.on_batch(10, False, 0.001)
    s.on_batch(0, True, 0.004)  # an empty sync (everysec's tick)
    assert s.batch_ops.count == 1 and s.batch_ops.sum == 10
    assert s.fsync.count == 1


def _ev(name: str, old: MemberState | None, new: MemberState, *, damped: bool = False) -> MemberEvent:
    info = MemberInfo(name, "127.0.0.1:1", new, 3, {}, damped=damped, penalty=2.0 if damped else 0.0)
    return MemberEvent(info, old, new, 3)


def test_member_and_ring_history() -> None:
    o = Observability(wall=lambda: 100.0)
    o.on_member(_ev("b", None, MemberState.ALIVE))
    o.on_member(_ev("b", MemberState.ALIVE, MemberState.SUSPECT))
    o.on_member(_ev("b", MemberState.SUSPECT, MemberState.SUSPECT, damped=True))
    o.on_ring(1, None)
    o.on_ring(1, None)  # no change, no entry
    o.on_ring(1, 2)
    o.on_ring(3, None)
    assert o.transitions == {("b", "alive"): 1, ("b", "suspect"): 1}
    assert o.damped_changes == 1
    texts = [e["text"] for e in o.history]
    assert texts == [
        "b: new → alive (incarnation 3)", "b: alive → suspect (incarnation 3)",
        "b: damped (penalty 2.0)", "ring v1", "ring change v1 → v2 started", "ring change committed: v3",
    ]


async def _http(port: int, raw: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(raw)
    await w.drain()
    data = await r.read()
    w.close()
    return data


async def test_http_server_routes_and_refuses_what_it_does_not_serve() -> None:
    async def hello() -> Response:
        return Response(200, "text/plain", b"hi")

    async def boom() -> Response:
        raise RuntimeError("bug")

    srv = HttpServer({"/hello": hello, "/boom": boom})
    await srv.start("127.0.0.1", 0)
    try:
        ok = await _http(srv.port, b"GET /hello?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nhi")
        head = await _http(srv.port, b"HEAD /hello HTTP/1.1\r\n\r\n")
        assert b"Content-Length: 2" in head and head.endswith(b"\r\n\r\n")
        assert (await _http(srv.port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _http(srv.port, b"POST /hello HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert (await _http(srv.port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert (await _http(srv.port, b"GET /boom HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 500")
        # A head past the limit is cut off without a reply.
        assert await _http(srv.port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n") == b""
        assert srv._open == 0
    finally:
        await srv.close()


def test_json_log_lines_have_the_stable_keys() -> None:
    fmt = JsonFormatter("n1")
    rec = logging.LogRecord("kvstore.node", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    rec.partition = 7
    doc = json.loads(fmt.format(rec))
    assert doc["level"] == "WARNING" and doc["node"] == "n1" and doc["logger"] == "kvstore.node"
    assert doc["event"] == "hello world" and doc["partition"] == 7
    assert doc["ts"].endswith("Z") and "T" in doc["ts"]
    try:
        raise ValueError("x")
    except ValueError:
        import sys

        rec2 = logging.LogRecord("k", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: x" in json.loads(fmt.format(rec2))["exc"]


def test_module_levels_override_the_root_level(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("WARNING", fmt="json", node="n9", module_levels={"kvstore.gossip": "DEBUG"})
        logging.getLogger("kvstore.gossip.sub").debug("seen")
        logging.getLogger("kvstore.node").info("not seen")
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
        assert [(x["logger"], x["event"], x["node"]) for x in lines] == [("kvstore.gossip.sub", "seen", "n9")]
    finally:
        logging.getLogger("kvstore.gossip").setLevel(logging.NOTSET)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_observability_settings_are_checked() -> None:
    assert parse_module_levels(" kvstore.gossip=debug , kvstore.hints=WARNING,") == {
        "kvstore.gossip": "DEBUG", "kvstore.hints": "WARNING",
    }
    s = load_settings(env={"KV_LOG_FORMAT": "json", "KV_HTTP_PORT": "8123"})
    assert s.log_format == "json" and s.http_port == 8123 and s.http_host == "127.0.0.1"
    for bad in ({"log_format": "xml"}, {"http_port": 70000}, {"log_module_levels": "kvstore=LOUD"}):
        with pytest.raises(ConfigError):
            load_settings(env={}, overrides=bad)
