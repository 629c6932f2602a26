"""How a data value is held in LevelDB under ``storage_compression = "lz4"``: each value
compressed on its own with LZ4 as it is written, and stored as it came when that does not
make it smaller.

Why per value and not per block (LevelDB's own snappy): LevelDB compacts what it holds over
and over (a key written at random is rewritten at every level it passes through), and every
compaction reads and writes each value again. Under a sustained put load that rewriting was
a third of a 3-node cluster's CPU and grew with the size of the records (siblings of blind
puts make them grow): a value compressed once on its way in makes every later rewrite
smaller. Block compression pays its cost again at each rewrite instead (measured slower
than none, benchmarks/README.md). The in-memory table keeps records as they are: only the
durable copy is compressed, and only a start without a snapshot decompresses it.

The stored form says which it is by its first byte, so one store can hold both and a
setting can change between starts:

    0x00 + LZ4 block (with its size)   a compressed value
    0x01 + value                       a value that itself starts with 0x00 or 0x01
    anything else                      the value as it is (every record: a msgpack array)
"""

from __future__ import annotations

from typing import Final

import lz4.block

__all__ = ["escape", "pack", "unpack"]

_LZ4: Final = 0x00
_ESCAPED: Final = 0x01
_LZ4_PREFIX: Final = b"\x00"
_ESCAPED_PREFIX: Final = b"\x01"
# Shorter values are stored as they are: LZ4 wins little on them (a counter's 68-byte record
# did not shrink at all), and LevelDB's own ~40 bytes per entry dominate such a record anyway.
MIN_COMPRESSED_BYTES: Final = 96

_compress: Final = lz4.block.compress
_decompress: Final = lz4.block.decompress


def pack(value: bytes) -> bytes:
    """The form of ``value`` written to LevelDB (see the module doc)."""
    n = len(value)
    if n >= MIN_COMPRESSED_BYTES:
        packed: bytes = _LZ4_PREFIX + _compress(value)
        if len(packed) < n:
            return packed
    return escape(value)


def escape(value: bytes) -> bytes:
    """The form of ``value`` written uncompressed into a store that may hold compressed values
    (another setting wrote some): only a value that starts like a marker changes."""
    if value and value[0] <= _ESCAPED:
        return _ESCAPED_PREFIX + value
    return value


def unpack(stored: bytes) -> bytes:
    """Inverse of :func:`pack`; a value written without it (a store written under another
    setting) comes back as it is. Raises ValueError on a compressed value that does not
    decompress (LevelDB's checksums make that a bug, not a disk fault)."""
    if not stored:
        return stored
    first = stored[0]
    if first == _LZ4:
        try:
            out: bytes = _decompress(stored[1:])
        except Exception as e:  # lz4 reports a bad block as LZ4BlockError, a ValueError subclass or not
            raise ValueError(f"stored value does not decompress: {e}") from None
        return out
    if first == _ESCAPED:
        return stored[1:]
    return stored
