"""Child process of test_storage_crash: writes keys until killed, printing each acked key.

    python _crash_writer.py PATH FSYNC {asyncio|uvloop}

Prints "ready" once the store is open, then one line per acknowledged put, only after the
put's future has resolved. Several writer tasks keep batches queued behind one in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys

from storage.engine import Engine

WRITERS = 4
PER_ROUND = 25


def value_for(key: bytes) -> bytes:
    """Deterministic, so the parent can check values without being sent them."""
    return hashlib.blake2b(key, digest_size=16).digest() * (1 + key[-1] % 8)


def partition_for(key: bytes) -> int:
    return hashlib.blake2b(key, digest_size=4).digest()[0]


async def main(path: str, fsync: str) -> None:
    engine = Engine.open(path, fsync=fsync)
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()

    async def writer(w: int) -> None:
        n = 0
        while True:
            keys = [b"w%d-%08d" % (w, n + i) for i in range(PER_ROUND)]
            n += PER_ROUND
            await asyncio.gather(*(engine.put(partition_for(k), k, value_for(k)) for k in keys))
            out.write(b"".join(k + b"\n" for k in keys))
            out.flush()

    await asyncio.gather(*(writer(w) for w in range(WRITERS)))


if __name__ == "__main__":
    path, fsync, loop = sys.argv[1:4]
    if loop == "uvloop":
        import uvloop

        uvloop.run(main(path, fsync))
    else:
        asyncio.run(main(path, fsync))
