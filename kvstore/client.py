"""The Python client library: ``AsyncClient`` for asyncio code, ``Client`` for everything else.

    async with AsyncClient(["127.0.0.1:7000"]) as kv:
        await kv.put("user:1", b"alice")
        res = await kv.get("user:1")
        res.value                      # b"alice" (raises Conflict if there are siblings)
        await kv.put("user:1", b"bob", context=res.context)   # supersedes what the get saw

With a cluster secret, give its key file (``secret_file=``, or the environment's
KV_SECRET_FILE, as the nodes read it); with TLS, the CA that signed the nodes' certificates
(``tls_ca_file=`` or KV_TLS_CA_FILE), and for mutual TLS a certificate and key of its own.
A node that refuses the key raises :class:`~kvstore.errors.AuthError` at once.

The client fetches the ring from any node once and then sends each request straight to a
node of the key's preference list (saving the forwarding hop), falling back to the nodes it
was given. Which failures go on to another node is kvstore.retry's policy: reads are retried
on another node; a write only when it certainly was not sent, because its outcome is
otherwise unknown (it may be stored on some replicas).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvstore.core import messages as m
from kvstore.core.ring import Ring, partition_of
from kvstore.errors import Conflict, InvalidRequest, KVError
from kvstore.retry import Demoted, RetryPolicy
from kvstore.runtime.rpc import RpcClient
from kvstore.runtime.security import client_options

__all__ = ["AsyncClient", "Client", "Conflict", "DatatypeResult", "GetResult", "PutResult"]

Resolver = Callable[[list[bytes]], bytes]


@dataclass(frozen=True, slots=True)
class GetResult:
    values: list[bytes]
    context: bytes
    resolver: Resolver | None = None

    @property
    def found(self) -> bool:
        return bool(self.values)

    @property
    def value(self) -> bytes | None:
        """The single value, None when absent; with siblings, the resolver's choice or Conflict."""
        if not self.values:
            return None
        if len(self.values) == 1:
            return self.values[0]
        if self.resolver is not None:
            return self.resolver(list(self.values))
        raise Conflict(f"{len(self.values)} sibling values; read .values or give a resolver")


@dataclass(frozen=True, slots=True)
class PutResult:
    context: bytes


@dataclass(frozen=True, slots=True)
class DatatypeResult:
    """A data type's plain value (int, sorted list of bytes, bytes or None, dict), its type
    and context (give it to ``remove`` to remove only what this read saw).

    ``found`` is False when the key holds nothing; an update's result is the coordinator's
    value right after it (``found`` True)."""

    type: str | None
    value: Any
    context: bytes
    found: bool = True


def _dt_result(doc: dict[str, Any]) -> DatatypeResult:
    t = doc.get("type")
    return DatatypeResult(
        None if t is None else str(t), doc["value"], bytes(doc["context"]), bool(doc.get("found", True))
    )


def _to_bytes(x: bytes | str, what: str) -> bytes:
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    raise TypeError(f"{what} must be bytes or str")


def _nodes(nodes: Sequence[str] | str) -> list[str]:
    if isinstance(nodes, str):
        nodes = [n for n in nodes.split(",")]
    out = [n.strip() for n in nodes if n.strip()]
    if not out:
        raise InvalidRequest("no node address given")
    return out


class AsyncClient:
    def __init__(
        self,
        nodes: Sequence[str] | str = ("127.0.0.1:7000",),
        *,
        timeout_s: float = 5.0,
        resolver: Resolver | None = None,
        route: bool = True,
        ring_refresh_s: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        secret_file: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        self.nodes = _nodes(nodes)
        self.timeout_s = timeout_s
        self.resolver = resolver
        self.route = route
        self.ring_refresh_s = ring_refresh_s
        security = client_options(
            secret_file=secret_file, tls_ca_file=tls_ca_file,
            tls_cert_file=tls_cert_file, tls_key_file=tls_key_file,
        )
        self.rpc = RpcClient(connect_timeout_s=min(1.0, timeout_s), **security)
        self._ring: Ring | None = None
        self._addrs: dict[str, str] = {}
        self._n = 3
        self._ring_at = 0.0
        self._rr = 0
        self.retry = retry
        self._demoted = Demoted(retry.demote_s)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.rpc.close()

    # ------------------------------------------------------------------ routing
    async def _refresh_ring(self) -> None:
        if not self.route or time.monotonic() - self._ring_at < self.ring_refresh_s:
            return
        self._ring_at = time.monotonic()
        for addr in self._seed_order():
            try:
                doc = await self.rpc.call(addr, m.RING, [], self.timeout_s)
                self._ring = Ring.from_wire(doc["ring"])
                self._addrs = {str(k): str(v) for k, v in doc["addrs"].items()}
                self._n = int(doc.get("n", 3))
                return
            except (KVError, KeyError, TypeError, ValueError):
                continue

    def _seed_order(self) -> list[str]:
        self._rr = (self._rr + 1) % len(self.nodes)
        return self.nodes[self._rr :] + self.nodes[: self._rr]

    def _candidates(self, key: bytes) -> list[str]:
        out: list[str] = []
        ring = self._ring
        if ring is not None:
            for n in ring.preference_list(partition_of(key, ring.partitions), self._n):
                a = self._addrs.get(n)
                if a and not self.rpc.is_down(a):
                    out.append(a)
        for a in self._seed_order():
            if a not in out:
                out.append(a)
        return self._demoted.order(out, time.monotonic())

    async def _call(self, key: bytes, method: str, params: list[Any], idempotent: bool, timeout: float) -> Any:
        # Let the loop see connections that closed while we were idle (a blocking Client runs
        # its loop only during calls), so a dead node's socket is not picked for a write.
        await asyncio.sleep(0)
        await self._refresh_ring()
        last: KVError | None = None
        for addr in self._candidates(key):
            try:
                return await self.rpc.call(addr, method, params, timeout)
            except KVError as e:
                last = e
                if self.retry.demotes(e):
                    self._demoted.add(addr, time.monotonic())
                if not self.retry.try_next(e, idempotent=idempotent):
                    raise
        assert last is not None
        raise last

    # ------------------------------------------------------------------ API
    async def get(
        self, key: bytes | str, *, r: int | None = None, strict: bool = False, timeout_s: float | None = None
    ) -> GetResult:
        k = _to_bytes(key, "key")
        opts = m.options_to_wire(m.Options(r, strict, timeout_s), "r")
        doc = await self._call(k, m.GET, [k, opts], True, (timeout_s or self.timeout_s) + 1.0)
        return GetResult([bytes(v) for v in doc["values"]], bytes(doc["context"]), self.resolver)

    async def put(
        self,
        key: bytes | str,
        value: bytes | str,
        *,
        context: bytes | None = None,
        w: int | None = None,
        strict: bool = False,
        timeout_s: float | None = None,
    ) -> PutResult:
        k = _to_bytes(key, "key")
        return await self._write(k, _to_bytes(value, "value"), context, m.Options(w, strict, timeout_s))

    async def delete(
        self,
        key: bytes | str,
        *,
        context: bytes | None = None,
        w: int | None = None,
        strict: bool = False,
        timeout_s: float | None = None,
    ) -> PutResult:
        return await self._write(_to_bytes(key, "key"), None, context, m.Options(w, strict, timeout_s))

    async def _write(self, k: bytes, v: bytes | None, context: bytes | None, o: m.Options) -> PutResult:
        """A put of ``v``, or with None a delete: not idempotent, so retried only as
        kvstore.retry allows."""
        opts = m.options_to_wire(o, "w")
        method, params = (m.DELETE, [k, context, opts]) if v is None else (m.PUT, [k, v, context, opts])
        doc = await self._call(k, method, params, False, (o.timeout_s or self.timeout_s) + 1.0)
        return PutResult(bytes(doc["context"]))

    # ------------------------------------------------------------------ data types
    async def update(
        self,
        key: bytes | str,
        type_: str,
        op: dict[str, Any],
        *,
        context: bytes | None = None,
        w: int | None = None,
        strict: bool = False,
        timeout_s: float | None = None,
    ) -> DatatypeResult:
        """One operation on a data type (kvstore.core.crdt.parse_op lists them). Not
        idempotent (an increment sent twice counts twice), so retried only when certainly
        not sent, as a put is."""
        k = _to_bytes(key, "key")
        opts = m.options_to_wire(m.Options(w, strict, timeout_s), "w")
        doc = await self._call(k, m.DT_UPDATE, [k, type_, op, context, opts], False, (timeout_s or self.timeout_s) + 1.0)
        return _dt_result(doc)

    async def fetch(
        self, key: bytes | str, type_: str | None = None, *, r: int | None = None, strict: bool = False,
        timeout_s: float | None = None,
    ) -> DatatypeResult:
        """Read a data type: the merge of every sibling R replicas hold, as a plain value."""
        k = _to_bytes(key, "key")
        opts = m.options_to_wire(m.Options(r, strict, timeout_s), "r")
        doc = await self._call(k, m.DT_FETCH, [k, type_, opts], True, (timeout_s or self.timeout_s) + 1.0)
        return _dt_result(doc)

    async def incr(self, key: bytes | str, n: int = 1, **kw: Any) -> DatatypeResult:
        """Add ``n`` (negative: subtract) to a counter."""
        return await self.update(key, "counter", {"incr": n}, **kw)

    async def add(self, key: bytes | str, *members: bytes | str, **kw: Any) -> DatatypeResult:
        """Add members to a set (add-wins: a concurrent remove does not undo them)."""
        return await self.update(key, "set", {"add": [_to_bytes(x, "member") for x in members]}, **kw)

    async def _read_context(self, key: bytes | str, type_: str, kw: dict[str, Any]) -> None:
        """A remove without a context removes what a read finds now (as a delete does): the
        coordinator alone may not have seen every acknowledged add yet."""
        if kw.get("context") is None:
            kw["context"] = (await self.fetch(key, type_, strict=kw.get("strict", False))).context

    async def remove(self, key: bytes | str, *members: bytes | str, **kw: Any) -> DatatypeResult:
        """Remove members from a set: the adds a fetch finds now, or with ``context=`` (a
        fetch's) only the adds that read saw. An add it did not see wins."""
        await self._read_context(key, "set", kw)
        return await self.update(key, "set", {"remove": [_to_bytes(x, "member") for x in members]}, **kw)

    async def set_register(self, key: bytes | str, value: bytes | str, **kw: Any) -> DatatypeResult:
        """Set a register (last write wins; a set always wins over what its coordinator saw)."""
        return await self.update(key, "register", {"set": _to_bytes(value, "value")}, **kw)

    async def update_map(
        self,
        key: bytes | str,
        updates: Sequence[tuple[str, str, dict[str, Any]]] = (),
        removes: Sequence[tuple[str, str]] = (),
        **kw: Any,
    ) -> DatatypeResult:
        """Update a map: ``updates`` are (field, type, operation), ``removes`` (field, type);
        ``update_map("u1", [("visits", "counter", {"incr": 1})])``. Removes without a
        ``context=`` remove what a fetch finds now, as ``remove`` does."""
        if removes:
            await self._read_context(key, "map", kw)
        op: dict[str, Any] = {}
        if updates:
            op["update"] = [[name, t, sub] for name, t, sub in updates]
        if removes:
            op["remove"] = [[name, t] for name, t in removes]
        return await self.update(key, "map", op, **kw)

    async def call(self, addr: str, method: str, *params: Any) -> Any:
        """Any RPC on one node (admin methods such as cluster.status)."""
        return await self.rpc.call(addr, method, list(params), self.timeout_s)


class Client:
    """Blocking client: the same API as AsyncClient, on a private event loop.

    Not for use inside a running event loop (use AsyncClient there).
    """

    def __init__(self, nodes: Sequence[str] | str = ("127.0.0.1:7000",), **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._c = AsyncClient(nodes, **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def get(self, key: bytes | str, **kw: Any) -> GetResult:
        return self._run(self._c.get(key, **kw))  # type: ignore[no-any-return]

    def put(self, key: bytes | str, value: bytes | str, **kw: Any) -> PutResult:
        return self._run(self._c.put(key, value, **kw))  # type: ignore[no-any-return]

    def delete(self, key: bytes | str, **kw: Any) -> PutResult:
        return self._run(self._c.delete(key, **kw))  # type: ignore[no-any-return]

    def update(self, key: bytes | str, type_: str, op: dict[str, Any], **kw: Any) -> DatatypeResult:
        return self._run(self._c.update(key, type_, op, **kw))  # type: ignore[no-any-return]

    def fetch(self, key: bytes | str, type_: str | None = None, **kw: Any) -> DatatypeResult:
        return self._run(self._c.fetch(key, type_, **kw))  # type: ignore[no-any-return]

    def incr(self, key: bytes | str, n: int = 1, **kw: Any) -> DatatypeResult:
        return self._run(self._c.incr(key, n, **kw))  # type: ignore[no-any-return]

    def add(self, key: bytes | str, *members: bytes | str, **kw: Any) -> DatatypeResult:
        return self._run(self._c.add(key, *members, **kw))  # type: ignore[no-any-return]

    def remove(self, key: bytes | str, *members: bytes | str, **kw: Any) -> DatatypeResult:
        return self._run(self._c.remove(key, *members, **kw))  # type: ignore[no-any-return]

    def set_register(self, key: bytes | str, value: bytes | str, **kw: Any) -> DatatypeResult:
        return self._run(self._c.set_register(key, value, **kw))  # type: ignore[no-any-return]

    def update_map(
        self,
        key: bytes | str,
        updates: Sequence[tuple[str, str, dict[str, Any]]] = (),
        removes: Sequence[tuple[str, str]] = (),
        **kw: Any,
    ) -> DatatypeResult:
        return self._run(self._c.update_map(key, updates, removes, **kw))  # type: ignore[no-any-return]

    def call(self, addr: str, method: str, *params: Any) -> Any:
        return self._run(self._c.call(addr, method, *params))

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._c.close())
            self._loop.close()
