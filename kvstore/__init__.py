"""kvstore: a Dynamo-style distributed key-value store.

    from kvstore import Client
    with Client(["127.0.0.1:7000"]) as kv:
        kv.put("user:1", b"alice")
        kv.get("user:1").value        # b"alice"

The client classes load on first use: importing ``kvstore.core`` (the pure machines) or
``kvstore.errors`` must not bring in asyncio and the RPC layer with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kvstore.errors import (
    Conflict,
    InvalidRequest,
    KVError,
    Timeout,
    TooLarge,
    Unavailable,
    Unreachable,
)

if TYPE_CHECKING:
    from kvstore.client import AsyncClient, Client, GetResult, PutResult

__version__ = "0.1.0"

_LAZY = {name: "kvstore.client" for name in ("AsyncClient", "Client", "GetResult", "PutResult")}

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "GetResult",
    "InvalidRequest",
    "KVError",
    "PutResult",
    "Timeout",
    "TooLarge",
    "Unavailable",
    "Unreachable",
    "__version__",
]


def __getattr__(name: str) -> Any:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module 'kvstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
