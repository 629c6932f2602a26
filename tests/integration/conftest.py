"""Fixtures shared by the integration tests that drive the RPC layer in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from kvstore.runtime.rpc import available_loops, new_event_loop

T = TypeVar("T")


@pytest.fixture(params=available_loops())
def arun(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[T]]], T]:
    """Runs a coroutine function on a fresh event loop of each kind (uvloop and asyncio),
    within a minute, and checks that it left no task running behind it."""
    kind: str = request.param

    def runner(fn: Callable[[], Awaitable[T]]) -> T:
        async def body() -> T:
            async with asyncio.timeout(60):
                return await fn()

        with asyncio.Runner(loop_factory=lambda: new_event_loop(kind)) as r:
            result = r.run(body())
            left = [t for t in asyncio.all_tasks(r.get_loop()) if not t.done()]
            assert not left, f"tasks left running: {left}"
        return result

    return runner
