"""One RPC to one node, for commands that ask a single question."""

from __future__ import annotations

from typing import Any

from kvstore.runtime.rpc import RpcClient
from kvstore.runtime.security import client_options


async def call_once(addr: str, method: str, params: list[Any], timeout: float) -> Any:
    """Call ``method`` on ``addr`` over a connection of its own, closed afterwards."""
    rpc = RpcClient(connect_timeout_s=timeout, **client_options())
    try:
        return await rpc.call(addr, method, params, timeout)
    finally:
        await rpc.close()
