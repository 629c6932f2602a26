"""Host names to socket addresses, cached, for the RPC client and gossip.

A peer's advertised address may be a DNS name (a container's service name, a StatefulSet
pod's stable name). Resolving it at every connect puts the DNS server on the request path:
a resolver that answers slowly (an AAAA query forwarded to an upstream that never answers,
a busy container DNS) then fails every connect that waits less than the lookup takes, and
the next connect starts the same lookup from scratch. Here:

- one lookup per name runs at a time, shared by everyone who asks, and it runs to its own
  timeout (``timeout_s``) even when the caller that started it gave up sooner: its answer
  is cached for the next caller;
- an answer is used for ``ttl_s`` and then refreshed in the background while the old one is
  still used (a rescheduled container keeps its name, not its IP: the refresh finds the
  new one; a DNS outage does not make a known peer unreachable); a name the DNS server
  says has no address any more (a stopped container's) is forgotten;
- a peer that could not be reached can have its entry marked stale, so the next connect
  asks again (:meth:`Resolver.refresh`);
- IP literals never reach a lookup.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("kvstore.resolver")

# An answer is trusted this long, then refreshed in the background (the stale one is used
# meanwhile).
TTL_S = 30.0
# One lookup gives up after this long (glibc's own default retries take 5-10 s).
LOOKUP_TIMEOUT_S = 5.0
# More distinct names than this and the cache starts over (bounds memory against a peer
# that gossips endless made-up names).
MAX_ENTRIES = 4096

# Lookup failures that are the DNS server's answer (the name has no address), not its
# absence: a cached address is dropped on these and kept on the others (EAI_AGAIN, timeouts).
_GONE = frozenset(
    e for e in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if e is not None
)

# (family, sockaddr) pairs, in the order the system resolver gave them.
Addrs = list[tuple[int, Any]]
Lookup = Callable[[str, int, int], Awaitable[Addrs]]


class Resolver:
    """A cache of name lookups (see the module docstring). ``family`` is
    ``socket.AF_INET``, ``AF_INET6``, or 0 for both (the client library: "localhost" may be
    either). ``lookup`` replaces the system resolver (tests)."""

    def __init__(
        self,
        family: int = 0,
        *,
        ttl_s: float = TTL_S,
        timeout_s: float = LOOKUP_TIMEOUT_S,
        max_entries: int = MAX_ENTRIES,
        lookup: Lookup | None = None,
    ) -> None:
        self.family = family
        self._ttl = ttl_s
        self._timeout = timeout_s
        self._max = max_entries
        self._lookup_fn = lookup
        self._cache: dict[tuple[str, int], tuple[Addrs, float]] = {}  # -> (addrs, expires)
        self._pending: dict[tuple[str, int], asyncio.Task[Addrs]] = {}
        self._errors: dict[tuple[str, int], str] = {}  # the last failed lookup's reason
        self._closed = False

    def cached(self, host: str, port: int) -> Addrs | None:
        """The addresses known for ``host`` now, without waiting: a fresh or stale answer, or
        None when there is none yet. A missing or stale one starts a lookup in the
        background."""
        literal = _literal(host, port)
        if literal is not None:
            return literal
        key = (host, port)
        hit = self._cache.get(key)
        if hit is None or hit[1] <= asyncio.get_running_loop().time():
            self._start(key)
        return None if hit is None else hit[0]

    async def resolve(self, host: str, port: int, timeout: float) -> Addrs:
        """The addresses of ``host``: a cached answer at once (refreshed in the background
        when stale), else the lookup's answer. Raises TimeoutError when none came within
        ``timeout`` (the lookup goes on, for the next caller) and OSError when the lookup
        failed."""
        addrs = self.cached(host, port)
        if addrs is not None:
            return addrs
        key = (host, port)
        task = self._pending.get(key)
        if task is None:  # failed at once (or closed): say why
            raise OSError(self._errors.get(key) or f"cannot resolve {host}")
        done, _ = await asyncio.wait((task,), timeout=timeout)
        if not done:
            raise TimeoutError(f"looking up {host} took more than {timeout:.2f}s")
        addrs = self._cache.get(key, ([], 0.0))[0]
        if not addrs:
            raise OSError(self._errors.get(key) or f"cannot resolve {host}")
        return addrs

    def refresh(self, host: str, port: int) -> None:
        """``host`` could not be reached at the addresses given: look it up again at the
        next ask (they are still used until the new answer is in)."""
        hit = self._cache.get((host, port))
        if hit is not None:
            self._cache[(host, port)] = (hit[0], 0.0)

    def close(self) -> None:
        self._closed = True
        for task in list(self._pending.values()):
            task.cancel()
        self._pending.clear()

    # -- internals

    def _start(self, key: tuple[str, int]) -> None:
        if self._closed or key in self._pending:
            return
        task = asyncio.get_running_loop().create_task(self._run(key))
        self._pending[key] = task
        task.add_done_callback(functools.partial(self._finished, key))

    def _finished(self, key: tuple[str, int], task: asyncio.Task[Addrs]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]

    async def _run(self, key: tuple[str, int]) -> Addrs:
        host, port = key
        # No wait_for: cancelling a lookup in the middle leaves an orphaned future whose late
        # failure is logged as never retrieved; asyncio.wait leaves it to finish.
        lookup = asyncio.ensure_future(self._lookup(host, port))
        try:
            done, _ = await asyncio.wait((lookup,), timeout=self._timeout)
        finally:
            if not lookup.done():
                lookup.add_done_callback(_consume)
                if self._closed:
                    lookup.cancel()
        try:
            if not done:
                raise TimeoutError(f"no answer in {self._timeout:g}s")
            addrs = lookup.result()
            if not addrs:
                raise OSError("no addresses")
        except (OSError, TimeoutError) as e:
            reason = f"cannot resolve {host}: {(getattr(e, 'strerror', None) or str(e)).lower()}"
            if len(self._errors) >= self._max:
                self._errors.clear()
            self._errors[key] = reason
            log.debug("%s", reason)
            if isinstance(e, socket.gaierror) and e.errno in _GONE:
                # The DNS server says the name has no address (a stopped container's name
                # leaves its network's DNS): forget the old one, so connects fail at once
                # instead of timing out on an address nobody holds.
                self._cache.pop(key, None)
            return []
        if len(self._cache) >= self._max:
            self._cache.clear()
            self._errors.clear()
        self._cache[key] = (addrs, asyncio.get_running_loop().time() + self._ttl)
        self._errors.pop(key, None)
        return addrs

    async def _lookup(self, host: str, port: int) -> Addrs:
        if self._lookup_fn is not None:
            return await self._lookup_fn(host, port, self.family)
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, family=self.family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        addrs: Addrs = []
        for family, _, _, _, sockaddr in infos:
            if (family, sockaddr) not in addrs:
                addrs.append((family, sockaddr))
        return addrs


def _literal(host: str, port: int) -> Addrs | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 6:
        return [(socket.AF_INET6, (host, port, 0, 0))]
    return [(socket.AF_INET, (host, port))]


def _consume(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


def family_of(bind_host: str) -> int:
    """The address family a node bound to ``bind_host`` talks to its peers in."""
    return socket.AF_INET6 if ":" in bind_host else socket.AF_INET
