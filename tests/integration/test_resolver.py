"""Peer names through the shared resolver: a real RPC server on 127.0.0.1, a client that
dials it by a made-up name, and a lookup function standing in for a DNS server that is
slow, failing, or answering with a new address (the one thing a loopback test cannot get
from the system resolver). "localhost" goes through the real getaddrinfo."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from kvstore.errors import Unreachable
from kvstore.runtime.resolver import Addrs, Resolver
from kvstore.runtime.rpc import RpcClient
from tests.integration.test_rpc import WAIT_S, client, serving

NAME = "kvpeer.test"


class FakeDns:
    """Answers for NAME: ``answer`` (an address list or an exception), after ``delay_s``."""

    def __init__(self, answer: Addrs | OSError, delay_s: float = 0.0) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.asked = 0

    async def __call__(self, host: str, port: int, family: int) -> Addrs:
        assert host == NAME
        self.asked += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer


def at(port: int) -> Addrs:
    return [(socket.AF_INET, ("127.0.0.1", port))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def calls_until_ok(c: RpcClient, addr: str) -> list[str]:
    """Call ``addr`` until it answers; the errors seen on the way."""
    errors: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        try:
            assert await c.call(addr, "ping", [], 2.0) == "pong"
            return errors
        except Unreachable as e:
            errors.append(str(e))
        assert loop.time() < deadline, f"{addr} never answered: {errors[-3:]}"
        await asyncio.sleep(0.02)


PING = {"ping": lambda: "pong"}


@asynccontextmanager
async def resolving(**kw: Any) -> AsyncIterator[Resolver]:
    """A resolver of IPv4 addresses (``lookup=`` a FakeDns), closed on the way out."""
    resolver = Resolver(socket.AF_INET, **kw)
    try:
        yield resolver
    finally:
        resolver.close()


def test_a_lookup_slower_than_the_connect_timeout_serves_the_next_connect(arun: Any) -> None:
    async def main() -> None:
        async with serving(PING) as server:
            dns = FakeDns(at(server.port), delay_s=0.4)
            async with (
                resolving(lookup=dns) as resolver,
                client(connect_timeout_s=0.1, reconnect_min_s=0.01, resolver=resolver) as c,
            ):
                errors = await calls_until_ok(c, f"{NAME}:{server.port}")
                # The first connects gave up waiting; the one lookup went on and its answer
                # was used (before, each connect began its own lookup and gave up on it again).
                assert errors and all("timed out" in e or "lookup" in e for e in errors), errors
                assert dns.asked == 1

    arun(main)


def test_a_known_peer_stays_reachable_through_a_dns_outage(arun: Any) -> None:
    async def main() -> None:
        async with serving(PING) as server:
            dns = FakeDns(at(server.port))
            addr = f"{NAME}:{server.port}"
            # ttl 0: every ask refreshes
            async with resolving(ttl_s=0.0, lookup=dns) as resolver:
                async with client(connect_timeout_s=1.0, resolver=resolver) as c:
                    await calls_until_ok(c, addr)
                dns.answer = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
                # A new connection (another client sharing the resolver) while DNS fails.
                async with client(connect_timeout_s=1.0, resolver=resolver) as c2:
                    assert await calls_until_ok(c2, addr) == []
                assert dns.asked >= 2  # the refresh was tried, and failed

    arun(main)


def test_a_peer_that_moved_is_looked_up_again_after_a_refused_connect(arun: Any) -> None:
    async def main() -> None:
        async with serving(PING) as server:
            dns = FakeDns(at(free_port()))  # its old address: nothing listens there now
            async with (
                resolving(ttl_s=3600.0, lookup=dns) as resolver,
                client(connect_timeout_s=1.0, reconnect_min_s=0.01, resolver=resolver) as c,
            ):
                addr = f"{NAME}:{server.port}"
                with pytest.raises(Unreachable, match="connection refused"):
                    await c.call(addr, "ping", [], 2.0)
                dns.answer = at(server.port)
                await calls_until_ok(c, addr)  # well before the hour's TTL
                assert dns.asked >= 2

    arun(main)


def test_a_name_that_left_dns_is_forgotten(arun: Any) -> None:
    # A stopped container's name leaves its network's DNS: connects must then fail at once
    # ("cannot resolve"), not time out again and again on the address it had.
    async def main() -> None:
        dns = FakeDns(at(free_port()))
        async with resolving(ttl_s=3600.0, lookup=dns) as resolver:
            assert await resolver.resolve(NAME, 7000, 2.0) == dns.answer
            dns.answer = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            resolver.refresh(NAME, 7000)
            assert resolver.cached(NAME, 7000) is not None  # still used while asking again
            with pytest.raises(OSError, match="name or service not known"):
                for _ in range(100):
                    await resolver.resolve(NAME, 7000, 2.0)
                    await asyncio.sleep(0.01)

    arun(main)


def test_a_name_that_does_not_resolve_says_so(arun: Any) -> None:
    async def main() -> None:
        dns = FakeDns(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        async with resolving(lookup=dns) as resolver, client(connect_timeout_s=1.0, resolver=resolver) as c:
            with pytest.raises(Unreachable, match=r"cannot resolve kvpeer\.test: name or service not known"):
                await c.call(f"{NAME}:7000", "ping", [], 2.0)

    arun(main)


def test_localhost_through_the_system_resolver(arun: Any) -> None:
    # "localhost" may come back as ::1 first; the server listens on 127.0.0.1 only, so the
    # client must go on to the next address.
    async def main() -> None:
        async with serving(PING) as server, client(connect_timeout_s=2.0) as c:
            assert await calls_until_ok(c, f"localhost:{server.port}") == []

    arun(main)


def test_a_lookup_that_fails_after_its_timeout_leaves_no_unretrieved_error(arun: Any) -> None:
    async def main() -> None:
        seen: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
        dns = FakeDns(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), delay_s=0.2)
        async with resolving(timeout_s=0.05, lookup=dns) as resolver:
            assert resolver.cached(NAME, 7000) is None
            with pytest.raises(OSError, match=r"cannot resolve kvpeer\.test: no answer in"):
                await resolver.resolve(NAME, 7000, 2.0)
            await asyncio.sleep(0.4)  # the abandoned lookup fails meanwhile
            gc.collect()
            await asyncio.sleep(0)
            assert seen == []

    arun(main)


def test_close_stops_a_lookup_in_flight(arun: Any) -> None:
    # A node stopping while a lookup hangs: nothing may be left running (arun checks).
    async def main() -> None:
        dns = FakeDns(at(7000), delay_s=30.0)
        resolver = Resolver(socket.AF_INET, lookup=dns)
        assert resolver.cached(NAME, 7000) is None
        await asyncio.sleep(0.05)
        assert dns.asked == 1
        resolver.close()
        for _ in range(5):
            await asyncio.sleep(0)

    arun(main)
