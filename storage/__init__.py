"""The local store of one node: in-memory table, LevelDB durability, shared-memory snapshot."""

from storage.engine import FSYNC_POLICIES, Engine, EngineStats, LoadStats
from storage.errors import StorageError

__all__ = ["FSYNC_POLICIES", "Engine", "EngineStats", "LoadStats", "StorageError"]
