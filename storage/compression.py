"""How the engine's LevelDB copy is compressed. A module of its own so that settings can check
a name without loading LevelDB or LZ4.

``lz4`` is the default: each record is compressed on its own as it is written
(storage/records.py says why per record), and LevelDB's blocks are left uncompressed. Under a
sustained put load on a 3-node cluster it took the CPU LevelDB's compactions spent from about
15 us to about 1 us per put on each node (benchmarks/README.md, the twelfth pass).

``none`` writes records as they are: the least CPU for values that do not compress (LZ4 gives
up on them after one pass, about 0.8 us for a 400-byte record). ``snappy`` is LevelDB's own
block compression, paid again at every compaction (about a tenth of a node's instructions
under puts, callgrind). Every store opens under every setting: a stored record says whether it
is compressed (storage/records.py), and LevelDB records each block's compression in the block.
A store that has held an lz4 record is marked so that code older than this refuses to open it
instead of misreading it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["COMPRESSIONS", "DEFAULT_COMPRESSION"]

COMPRESSIONS: Final = ("lz4", "none", "snappy")
# The one default, for the engine and the node's settings alike.
DEFAULT_COMPRESSION: Final = "lz4"
