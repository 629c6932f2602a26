"""The block compression of the engine's LevelDB files. A module of its own so that settings
can check a name without loading LevelDB.

``none`` is the default: every record lives in the in-memory table, and LevelDB is only its
durable copy, read back at a start without a snapshot. Snappy spent about a tenth of a
node's instructions under a write load, all of it compressing blocks as memtables are
flushed and tables compacted (callgrind, benchmarks/README.md), to save disk that a store
holding its data in memory has to spare. ``snappy`` trades that CPU back for smaller files
(values that compress, such as JSON). LevelDB records the compression of each block in the
block itself, so a store written under one setting opens under the other, and compaction
rewrites its blocks in the new form as it goes.
"""

from __future__ import annotations

from typing import Final

__all__ = ["COMPRESSIONS"]

COMPRESSIONS: Final = ("none", "snappy")
