"""The local store of one node: in-memory table, LevelDB durability, shared-memory snapshot.

The names below load on first use, so ``storage.errors``, ``storage.fsync`` or
``storage.compression`` can be imported (by settings, by error handling) without loading
plyvel and the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.compression import COMPRESSIONS
    from storage.engine import Engine, EngineStats, LoadStats
    from storage.errors import StorageError
    from storage.fsync import FSYNC_POLICIES
    from storage.snapshot import (
        SnapshotInfo,
        SnapshotRejected,
        load_snapshot,
        snapshot_path,
        write_snapshot,
    )

_HOMES = {
    "COMPRESSIONS": "storage.compression",
    "FSYNC_POLICIES": "storage.fsync",
    "Engine": "storage.engine",
    "EngineStats": "storage.engine",
    "LoadStats": "storage.engine",
    "SnapshotInfo": "storage.snapshot",
    "SnapshotRejected": "storage.snapshot",
    "StorageError": "storage.errors",
    "load_snapshot": "storage.snapshot",
    "snapshot_path": "storage.snapshot",
    "write_snapshot": "storage.snapshot",
}

__all__ = [
    "COMPRESSIONS",
    "FSYNC_POLICIES",
    "Engine",
    "EngineStats",
    "LoadStats",
    "SnapshotInfo",
    "SnapshotRejected",
    "StorageError",
    "load_snapshot",
    "snapshot_path",
    "write_snapshot",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
