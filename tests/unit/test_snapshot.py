"""storage.snapshot: real LevelDB and real snapshot files in tmp dirs (not /dev/shm)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from storage import snapshot
from storage.engine import Engine
from storage.errors import StorageError
from storage.snapshot import SnapshotRejected, load_snapshot, snapshot_path, write_snapshot

REPO = Path(__file__).resolve().parents[2]
NODE = "10.0.0.1:7000"


def table_of(e: Engine) -> dict[int, dict[bytes, bytes]]:
    return {p: dict(e.iter_partition(p)) for p in e.partitions()}


async def make_store(db: str, keys: int = 300) -> tuple[Engine, dict[int, dict[bytes, bytes]]]:
    e = Engine.open(db, fsync="no")
    await e.write_many(
        (i % 5 * 1000, b"key%05d" % i, os.urandom(i % 40) + b"v%d" % i) for i in range(keys)
    )
    await e.put(77, b"", b"empty key")
    await e.delete(0, b"key00000")
    await e.meta_put(b"node_id", NODE.encode())
    return e, table_of(e)


def open_with_snapshot(db: str, snap_dir: Path) -> Engine:
    return Engine.open(db, snapshot_dir=str(snap_dir), node_id=NODE)


async def test_snapshot_is_used_and_equals_leveldb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot, "_CHUNK_KEYS", 16)  # big partitions span several chunks
    db, snap_dir = str(tmp_path / "db"), tmp_path / "shm"
    e, table = await make_store(db)
    e.put(3000, b"pending", b"issued, not yet awaited")  # write_snapshot flushes it first
    table.setdefault(3000, {})[b"pending"] = b"issued, not yet awaited"
    extra = {"merkle": os.urandom(1000), "hints": b""}
    info = write_snapshot(e, NODE, str(snap_dir), extra)
    position = e.position
    await e.close()
    assert info.path == snapshot_path(str(snap_dir), NODE)
    assert (info.position, info.keys, info.node_id) == (position, 301, NODE)
    assert info.file_bytes == os.path.getsize(info.path)

    e = open_with_snapshot(db, snap_dir)
    try:
        assert e.load_stats.path == "snapshot", e.load_stats.reason
        assert "matched" in e.load_stats.reason and "snapshot" in str(e.load_stats)
        assert e.snapshot_extra == extra
        assert table_of(e) == table
        assert (e.load_stats.keys, e.position) == (301, position)
        assert e.load_stats.bytes == e.stats().bytes
        assert e.meta_get(b"node_id") == NODE.encode()  # meta always comes from LevelDB
        assert not os.path.exists(info.path)  # invalidated once used
        await e.put(1, b"after", b"restart")
    finally:
        await e.close()
    e = Engine.open(db)  # and LevelDB agrees with what the snapshot gave
    try:
        table.setdefault(1, {})[b"after"] = b"restart"
        assert table_of(e) == table
    finally:
        await e.close()


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _patch_header_field(path: str, offset: int, fmt: str, value: int) -> None:
    """Change a header field and re-seal the header checksum, as a differing writer would."""
    with open(path, "r+b") as f:
        raw = bytearray(f.read(snapshot.HEADER_SIZE))
        struct.pack_into(fmt, raw, offset, value)
        checked = bytearray(raw[:512])
        checked[12] = 0
        struct.pack_into("<Q", raw, 512, xxhash.xxh3_64_intdigest(bytes(checked)))
        f.seek(0)
        f.write(raw)


def _truncate(by: int) -> Callable[[str], None]:
    def cut(path: str) -> None:
        os.truncate(path, os.path.getsize(path) - by)

    return cut


def _to_header(size: int) -> Callable[[str], None]:
    return lambda path: os.truncate(path, size)


def _append_junk(path: str) -> None:
    with open(path, "ab") as f:
        f.write(b"junk")


def _flip_payload_byte(path: str) -> None:
    offset = snapshot.HEADER_SIZE + 24 + 5  # inside the first chunk's body
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


TAMPERS: dict[str, tuple[Callable[[str], None], str]] = {
    "bad magic": (lambda p: _patch(p, 0, b"NOTASNAP"), "bad magic"),
    "old layout": (lambda p: _patch_header_field(p, 8, "<I", 0), "layout version 0"),
    "header corrupt": (lambda p: _patch(p, 70, b"X"), "header checksum mismatch"),
    "valid bit unset": (lambda p: _patch(p, 12, b"\x00"), "valid bit unset"),
    "payload corrupt": (_flip_payload_byte, "chunk checksum mismatch"),
    "payload checksum": (
        lambda p: _patch_header_field(p, 32, "<Q", 12345),
        "payload checksum mismatch",
    ),
    "truncated payload": (_truncate(10), "truncated"),
    "truncated header": (_to_header(100), "truncated header"),
    "empty file": (_to_header(0), "truncated header"),
    "overlong": (_append_junk, "overlong"),
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
async def test_a_tampered_snapshot_falls_back_to_leveldb(tmp_path: Path, case: str) -> None:
    tamper, why = TAMPERS[case]
    db, snap_dir = str(tmp_path / "db"), tmp_path / "shm"
    e, table = await make_store(db, keys=50)
    info = write_snapshot(e, NODE, str(snap_dir))
    await e.close()
    tamper(info.path)
    with pytest.raises(SnapshotRejected, match=why):
        load_snapshot(info.path, NODE, info.position)
    e = open_with_snapshot(db, snap_dir)
    try:
        assert e.load_stats.path == "leveldb"
        assert why in e.load_stats.reason and "rebuilt from LevelDB" in e.load_stats.reason
        assert "\n" not in str(e.load_stats)
        assert table_of(e) == table
        assert not os.path.exists(info.path)  # a stale snapshot of ours is removed
    finally:
        await e.close()


async def test_no_snapshot(tmp_path: Path) -> None:
    e, table = await make_store(str(tmp_path / "db"), keys=20)
    await e.close()
    e = open_with_snapshot(e.path, tmp_path / "nothing-here")
    try:
        assert e.load_stats.path == "leveldb" and "no snapshot at" in e.load_stats.reason
        assert table_of(e) == table
    finally:
        await e.close()


async def test_another_nodes_snapshot_is_refused(tmp_path: Path) -> None:
    db, snap_dir = str(tmp_path / "db"), tmp_path / "shm"
    e, table = await make_store(db, keys=20)
    other = write_snapshot(e, "10.0.0.2:7000", str(snap_dir))
    await e.close()
    os.rename(other.path, snapshot_path(str(snap_dir), NODE))
    e = open_with_snapshot(db, snap_dir)
    try:
        assert e.load_stats.path == "leveldb"
        assert "written by node '10.0.0.2:7000'" in e.load_stats.reason
        assert table_of(e) == table
    finally:
        await e.close()


async def test_a_snapshot_behind_leveldb_is_refused(tmp_path: Path) -> None:
    db, snap_dir = str(tmp_path / "db"), tmp_path / "shm"
    e, table = await make_store(db, keys=20)
    info = write_snapshot(e, NODE, str(snap_dir))
    await e.close()
    e = Engine.open(db)  # a start that ignored the snapshot, then one more write
    await e.put(5, b"newer", b"than the snapshot")
    table.setdefault(5, {})[b"newer"] = b"than the snapshot"
    await e.close()
    e = open_with_snapshot(db, snap_dir)
    try:
        assert e.load_stats.path == "leveldb"
        assert f"position {info.position}, LevelDB is at {info.position + 1}" in (
            e.load_stats.reason
        )
        assert table_of(e) == table
    finally:
        await e.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
async def test_a_snapshot_owned_by_someone_else_is_refused_and_left_alone(
    tmp_path: Path,
) -> None:
    db, snap_dir = str(tmp_path / "db"), tmp_path / "shm"
    e, table = await make_store(db, keys=20)
    info = write_snapshot(e, NODE, str(snap_dir))
    await e.close()
    os.chown(info.path, 65534, 65534)
    e = open_with_snapshot(db, snap_dir)
    try:
        assert e.load_stats.path == "leveldb" and "owned by uid 65534" in e.load_stats.reason
        assert table_of(e) == table
        assert os.path.exists(info.path)
    finally:
        await e.close()


async def test_writing_replaces_a_planted_link_without_following_it(tmp_path: Path) -> None:
    db, snap_dir = str(tmp_path / "db"), tmp_path / "shm"
    snap_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, snapshot_path(str(snap_dir), NODE))
    e, _ = await make_store(db, keys=10)
    try:
        info = write_snapshot(e, NODE, str(snap_dir))
    finally:
        await e.close()
    assert victim.read_bytes() == b"precious"
    assert not os.path.islink(info.path)
    table, extra = load_snapshot(str(snap_dir), NODE, info.position)
    assert sum(map(len, table.values())) == info.keys and extra == {}


async def test_write_snapshot_checks_its_arguments(tmp_path: Path) -> None:
    e, _ = await make_store(str(tmp_path / "db"), keys=5)
    try:
        with pytest.raises(ValueError):
            write_snapshot(e, "x" * 449, str(tmp_path / "shm"))
        with pytest.raises(TypeError):
            write_snapshot(e, NODE, str(tmp_path / "shm"), {"k": "not bytes"})  # type: ignore[dict-item]
        with pytest.raises(StorageError):
            write_snapshot(e, NODE, str(tmp_path / "db" / "CURRENT"))  # not a directory
    finally:
        await e.close()


_WRITER = textwrap.dedent(
    """
    import sys, time
    from storage.engine import Engine
    from storage.snapshot import write_snapshot
    e = Engine.open(sys.argv[1])
    while True:
        sys.stdout.write("begin\\n")
        sys.stdout.flush()
        t = time.perf_counter()
        write_snapshot(e, sys.argv[3], sys.argv[2], {"x": b"y" * 1000})
        sys.stdout.write(f"end {time.perf_counter() - t}\\n")
        sys.stdout.flush()
    """
)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
async def test_sigkill_mid_write_never_leaves_a_trusted_snapshot(
    tmp_path: Path, fraction: float
) -> None:
    db, snap_dir = str(tmp_path / "db"), tmp_path / "shm"
    e, table = await make_store(db, keys=30_000)
    await e.close()
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, db, str(snap_dir), NODE],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=str(REPO),
    )
    try:
        assert child.stdout is not None
        durations = []
        for _ in range(3):  # learn how long one write takes here and now
            assert child.stdout.readline() == b"begin\n"
            durations.append(float(child.stdout.readline().split()[1]))
        assert child.stdout.readline() == b"begin\n"
        time.sleep(fraction * min(durations))  # then land at some point inside the next one
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
        if child.stdout:
            child.stdout.close()
    e = open_with_snapshot(db, snap_dir)
    try:
        # Either the write finished (and then the data is exactly LevelDB's) or it is refused.
        assert table_of(e) == table
        if e.load_stats.path == "snapshot":
            assert e.snapshot_extra == {"x": b"y" * 1000}
        else:
            assert e.load_stats.reason
    finally:
        await e.close()
