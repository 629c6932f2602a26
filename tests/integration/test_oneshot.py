"""kvstore.oneshot, the CLI's blocking one-request path, against the real RpcServer: the
cluster key handshake and TLS as the async client does them, and the same errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kvstore.errors import AuthError, InvalidRequest, Unreachable, was_sent
from kvstore.oneshot import call, call_one
from kvstore.runtime.security import Keyring, client_tls_context, server_tls_context
from kvstore.testing.processes import free_port
from tests.integration.test_rpc import WAIT_S, kv_handlers, serving
from tests.integration.test_security import K1, K2, pki

__all__ = ["pki"]  # the fixture, imported for pytest


def blocking(fn: Any, *args: Any, **kw: Any) -> Any:
    """Run a blocking call off the loop that serves it."""
    return asyncio.to_thread(fn, *args, **kw)


def one(addr: str, method: str, params: list[Any], **kw: Any) -> Any:
    return blocking(call_one, addr, method, params, WAIT_S, connect_timeout=WAIT_S, **kw)


def test_key_and_tls_as_the_async_client(arun: Any, pki: dict[str, Path]) -> None:
    async def body() -> None:
        ctx = server_tls_context(str(pki["crt"]), str(pki["key"]))
        async with serving(kv_handlers(), ssl_context=ctx, keyring=Keyring([K1]), auth_timeout_s=5.0) as server:
            addr = f"127.0.0.1:{server.port}"
            sec = {"keyring": Keyring([K1]), "ssl_context": client_tls_context(str(pki["ca"]))}
            assert await one(addr, "put", [b"k", b"v"], **sec) is True
            assert await one(addr, "get", [b"k"], **sec) == b"v"
            with pytest.raises(AuthError):
                await one(addr, "get", [b"k"], keyring=Keyring([K2]), ssl_context=sec["ssl_context"])
            rogue = client_tls_context(str(pki["other_ca"]))
            with pytest.raises(AuthError, match="TLS handshake failed"):
                await one(addr, "get", [b"k"], keyring=Keyring([K1]), ssl_context=rogue)

    arun(body)


def test_key_mismatches_say_what_is_wrong(arun: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers(), keyring=Keyring([K1]), auth_timeout_s=5.0) as keyed:
            with pytest.raises(AuthError, match="requires the cluster key"):
                await one(f"127.0.0.1:{keyed.port}", "get", [b"k"])
        async with serving(kv_handlers()) as open_:
            with pytest.raises(AuthError, match="did not ask for the cluster key"):
                await blocking(call_one, f"127.0.0.1:{open_.port}", "get", [b"k"], WAIT_S, connect_timeout=0.5,
                               keyring=Keyring([K1]))

    arun(body)


def test_errors_and_going_on_to_the_next_node(arun: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers()) as server:
            addr = f"127.0.0.1:{server.port}"
            with pytest.raises(InvalidRequest):
                await one(addr, "put", [b"k"])  # wrong arity: the server's error, as its class
            dead = f"127.0.0.1:{free_port()}"
            with pytest.raises(Unreachable) as ei:
                await one(dead, "get", [b"k"])
            assert not was_sent(ei.value)
            # Never sent to the dead node, so even a write goes on to the next one.
            sec = {"keyring": None, "ssl_context": None}
            assert await blocking(call, [dead, addr], "put", [b"k", b"2"], timeout_s=WAIT_S, idempotent=False,
                                  security=sec) is True
            assert await blocking(call, [dead, addr], "get", [b"k"], timeout_s=WAIT_S, idempotent=True,
                                  security=sec) == b"2"

    arun(body)
