"""100,000 random and mutated frames at a live node process: afterwards it still serves, and
its memory is back where it was (no leak, nothing left buffered).

Frames are sent in batches, one batch per connection (most broken frames end their
connection), many connections at once; every batch is half-closed and read to the end, so
the node has finished with it before the next check. Seeded: a failure replays.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import msgpack

from kvstore.testing.processes import LocalCluster, wait_until

FRAMES = 100_000
PER_CONN = 20
PARALLEL = 16
SLACK_MIB = 48  # allocator noise on top of the warmed-up size; a leak of 100k frames is more


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def templates() -> list[bytes]:
    # Reads and read-only admin calls only: a mutated write would store data, which is
    # growth, not a leak.
    p = msgpack.packb
    return [
        p([0, 1, "kv.get", [b"user:1", {"r": 1}]]),
        p([0, 2, "ping", []]),
        p([0, 3, "cluster.status", []]),
        p([0, 4, "cluster.ring", []]),
        p([0, 5, "kv.get", [b"k" * 100, {}]]),
        p([2, "ping", []]),
        p([0, 6, "no.such.method", [1, 2.5, None, [b"x"], {"a": "b"}]]),
    ]


METHODS = ["kv.get", "ping", "cluster.status", "cluster.ring", "nope", "", "gossip.push_pull", "replica.get"]


def value(rng: random.Random, depth: int = 0) -> object:
    r = rng.random()
    if depth < 3 and r < 0.15:
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if depth < 3 and r < 0.25:
        return {rng.choice(["r", "w", "strict", "timeout_s", "x"]): value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return rng.choice([
        None, True, False, rng.randint(-(2**63), 2**64 - 1), rng.randint(-5, 5), rng.random() * 1e9,
        rng.randbytes(rng.randint(0, 40)), "s" * rng.randint(0, 20), float("nan"),
    ])


def message(rng: random.Random) -> bytes:
    """A well-framed message of any shape: the server must answer or close, not break."""
    # Mostly shapes that keep the connection open (an answer, not a close), so that most of
    # the frames are dispatched rather than dropped with the connection they came on.
    kind = rng.choice([0] * 12 + [1, 2, 2, 3, -1])
    parts: list[object] = [kind]
    if kind != 2:
        parts.append(rng.randint(0, 2**32 - 1) if rng.random() < 0.97 else rng.choice([-1, "id", None]))
    parts.append(rng.choice(METHODS) if rng.random() < 0.9 else value(rng))
    parts.append([value(rng) for _ in range(rng.randint(0, 4))] if rng.random() < 0.9 else value(rng))
    if rng.random() < 0.02:
        parts = parts[: rng.randint(0, len(parts))]
    return msgpack.packb(parts)


def frame(rng: random.Random, tpl: list[bytes]) -> bytes:
    r = rng.random()
    if r < 0.01:
        return rng.randbytes(rng.randint(1, 64))
    if r < 0.97:
        return message(rng)
    b = bytearray(rng.choice(tpl))
    for _ in range(rng.randint(0, 4)):
        i = rng.randrange(len(b))
        op = rng.randrange(4)
        if op == 0:
            b[i] = rng.randrange(256)
        elif op == 1:
            del b[i]
        elif op == 2:
            b[i:i] = rng.choice([b"\xdd\xff\xff\xff\xff", b"\xc6\x7f\xff\xff\xff", b"\x9f" * 8, b"\xc1", b"\x00"])
        else:
            b[i:i] = rng.randbytes(rng.randint(1, 8))
    return bytes(b)


async def blast(port: int, rng: random.Random, n: int) -> int:
    tpl = templates()
    batches = [b"".join(frame(rng, tpl) for _ in range(PER_CONN)) for _ in range(n // PER_CONN)]
    sem = asyncio.Semaphore(PARALLEL)
    replies = 0

    async def one(data: bytes) -> None:
        nonlocal replies
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            try:
                w.write(data)
                await w.drain()
                w.write_eof()
                unp = msgpack.Unpacker(raw=True)  # error messages quote invalid UTF-8 as sent
                async with asyncio.timeout(60):
                    while chunk := await r.read(65536):
                        unp.feed(chunk)
                        replies += sum(1 for _ in unp)
            except (ConnectionResetError, BrokenPipeError):
                pass
            finally:
                w.close()

    await asyncio.gather(*(one(b) for b in batches))
    return replies


def test_a_live_node_survives_100k_random_frames(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=1, n=1, r=1, w=1) as c:
        c.start_all()
        node = c.nodes["n1"]
        assert node.proc is not None
        port = int(node.addr.rsplit(":", 1)[1])
        kv = c.client()
        kv.put("user:1", "alice")
        rng = random.Random(20261201)
        asyncio.run(blast(port, rng, 5_000))  # warm-up: allocator pools, caches
        before = rss_mib(node.proc.pid)
        got = asyncio.run(blast(port, rng, FRAMES))
        # The well-formed among them were answered (most broken frames end their connection).
        assert got > FRAMES // 10, got
        assert node.running, node.log()[-3000:]
        assert kv.get("user:1").value == b"alice"
        kv.put("user:2", "bob")
        assert kv.get("user:2").value == b"bob"
        wait_until(
            lambda: rss_mib(node.proc.pid) <= before + SLACK_MIB,  # type: ignore[union-attr]
            30, what=f"memory back to {before:.0f}+{SLACK_MIB} MiB (now {rss_mib(node.proc.pid):.0f})",
        )
        st = c.status("n1")
        assert st is not None
