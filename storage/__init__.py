"""The local store of one node: in-memory table, LevelDB durability, shared-memory snapshot."""

from storage.engine import FSYNC_POLICIES, Engine, EngineStats, LoadStats
from storage.errors import StorageError
from storage.snapshot import (
    SnapshotInfo,
    SnapshotRejected,
    load_snapshot,
    snapshot_path,
    write_snapshot,
)

__all__ = [
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
