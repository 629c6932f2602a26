"""A small HTTP/1.1 server on the node's event loop for /metrics and the dashboard.

Why not aiohttp: the node serves a handful of read-only GET routes to a browser and a
Prometheus scraper; asyncio's streams do that in a page of code, add no dependency, and keep
the server on the same loop as the node (so a scrape reads the counters without locks).
One request per connection (``Connection: close``), bounded header size, a read deadline
and a cap on open connections, so a stray client cannot hold the node's resources.

It serves no keys or values and accepts no writes; it binds to ``http_host`` (loopback by
default) because, unlike the RPC port, it has no authentication.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger("kvstore.http")

MAX_HEAD_BYTES = 8192
READ_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: str
    body: bytes
    cache: str = "no-store"


Route = Callable[[], Awaitable[Response]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error", 503: "Service Unavailable"}


def text(status: int, msg: str) -> Response:
    return Response(status, "text/plain; charset=utf-8", (msg + "\n").encode())


class HttpServer:
    def __init__(self, routes: Mapping[str, Route]) -> None:
        self.routes = dict(routes)
        self._server: asyncio.Server | None = None
        self._open = 0
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            writer.close()
            return
        self._open += 1
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            resp, head_only = await self._respond(head)
            writer.write(_encode(resp, head_only))
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._open -= 1
            writer.close()

    async def _respond(self, head: bytes) -> tuple[Response, bool]:
        try:
            method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        except ValueError:
            return text(400, "bad request line"), False
        if method not in ("GET", "HEAD"):
            return text(405, "only GET and HEAD: this port is read-only"), False
        route = self.routes.get(urlsplit(target).path)
        if route is None:
            return text(404, "not found"), method == "HEAD"
        try:
            return await route(), method == "HEAD"
        except Exception:
            log.exception("http %s failed", target)
            return text(500, "internal error"), method == "HEAD"


def _encode(r: Response, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {r.status} {_REASONS.get(r.status, 'Status')}\r\n"
        f"Content-Type: {r.content_type}\r\n"
        f"Content-Length: {len(r.body)}\r\n"
        f"Cache-Control: {r.cache}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + r.body
