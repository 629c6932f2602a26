"""Running one client-library operation for a command: the event loop, the client, and a
one-line error instead of a traceback (imported only by commands that need the library)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from cli import output as out
from kvstore.errors import KVError

if TYPE_CHECKING:
    from kvstore.client import AsyncClient

T = TypeVar("T")


def run_client(ctx: click.Context, fn: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Run one client operation with a one-line error on failure, never a traceback."""
    import asyncio

    from kvstore.client import AsyncClient

    nodes: str = ctx.obj["nodes"]
    timeout: float = ctx.obj["timeout"]

    async def go() -> T:
        async with AsyncClient(nodes, timeout_s=timeout) as c:
            return await fn(c)

    try:
        return asyncio.run(go())
    except KVError as e:
        out.fail_for(e)
