"""The test-only power-loss mode of storage.engine: a SIGKILL loses exactly the acknowledged
writes that had not been synced yet, and nothing else; without the mode it loses nothing.

The child kills itself with SIGKILL right after the ack, from the same event-loop callback,
so no periodic sync can slip in between: the outcome does not depend on timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storage.engine import LOSE_UNSYNCED_ENV, Engine

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    from storage.engine import Engine

    path, fsync, then = sys.argv[1:4]

    async def main() -> None:
        e = Engine.open(path, fsync=fsync)
        print("mode", int(e.lose_unsynced), flush=True)
        await e.put(1, b"old", b"synced")
        await e.flush()  # an explicit sync: this one must survive anything
        # A round is 50 puts and a meta write. Should a periodic sync land inside a round
        # (the process stalled for a second), that round is durable and another one runs,
        # so what the parent must find depends only on the round printed.
        for r in range(20):
            await asyncio.gather(*(e.put(2, b"tail-%d-%d" % (r, i), b"acked") for i in range(50)))
            await e.meta_put(b"epoch", b"%d" % r)
            # Reads see the acknowledged writes, held or not.
            assert e.get(2, b"tail-%d-49" % r) == b"acked" and e.meta_get(b"epoch") == b"%d" % r
            if then == "wait-sync":
                deadline = time.monotonic() + 60
                while e.stats().held_ops or e.syncs_written < 2:
                    assert time.monotonic() < deadline, "no periodic sync within 60 s"
                    await asyncio.sleep(0.05)
            held = e.stats().held_ops
            if then == "wait-sync" or held == (51 if e.lose_unsynced else 0):
                break
        print("acked", held, "round", r, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


def run_child(path: str, fsync: str, *, mode: bool, then: str = "kill") -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != LOSE_UNSYNCED_ENV}
    env["PYTHONPATH"] = str(REPO)
    if mode:
        env[LOSE_UNSYNCED_ENV] = "1"
    res = subprocess.run(
        [sys.executable, "-c", CHILD, path, fsync, then],
        env=env, capture_output=True, text=True, timeout=120, cwd=str(REPO),
    )
    assert res.returncode == -signal.SIGKILL, f"exit {res.returncode}: {res.stderr[-2000:]}"
    return res.stdout.split("\n")


def survivors(path: str) -> tuple[bytes | None, int, bytes | None]:
    e = Engine.open(path, lose_unsynced=False)
    try:
        return e.get(1, b"old"), e.count(2), e.meta_get(b"epoch")
    finally:
        e.close_sync()


def rounds(line: str, held: int) -> int:
    """The round the child was killed in, checking how many ops it held then."""
    word, n, _, r = line.split()
    assert (word, int(n)) == ("acked", held), line
    return int(r)


@pytest.mark.parametrize("fsync", ["everysec", "no"])
def test_sigkill_loses_the_unsynced_tail_only_with_the_mode_on(tmp_path: Path, fsync: str) -> None:
    on = str(tmp_path / "on")
    out = run_child(on, fsync, mode=True)
    assert out[0] == "mode 1"
    r = rounds(out[1], 51)  # 50 puts + 1 meta write held in memory at the kill
    # Everything of the killed round is gone; the explicit sync and earlier rounds are not.
    assert survivors(on) == (b"synced", 50 * r, b"%d" % (r - 1) if r else None)

    off = str(tmp_path / "off")
    out = run_child(off, fsync, mode=False)
    assert out[0] == "mode 0"
    assert rounds(out[1], 0) == 0
    assert survivors(off) == (b"synced", 50, b"0")


def test_the_periodic_sync_makes_the_tail_durable(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    out = run_child(path, "everysec", mode=True, then="wait-sync")
    assert out[0] == "mode 1"
    assert rounds(out[1], 0) == 0
    assert survivors(path) == (b"synced", 50, b"0")


async def test_always_has_no_unsynced_tail_to_lose(tmp_path: Path) -> None:
    e = Engine.open(str(tmp_path / "db"), fsync="always", lose_unsynced=True)
    try:
        assert not e.lose_unsynced
        await e.put(0, b"k", b"v")
        assert e.stats().held_ops == 0
    finally:
        await e.close()


async def test_a_graceful_close_writes_the_held_tail(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    e = Engine.open(path, fsync="no", lose_unsynced=True)
    await e.put(0, b"a", b"1")
    await e.put(0, b"b", b"2")
    await e.delete(0, b"a")
    assert e.stats().held_ops == 3 and e.get(0, b"a") is None and e.get(0, b"b") == b"2"
    position = e.position
    await e.close()
    e = Engine.open(path, lose_unsynced=False)
    try:
        assert (e.get(0, b"a"), e.get(0, b"b"), e.position) == (None, b"2", position)
    finally:
        e.close_sync()
