"""storage.engine against a real LevelDB in pytest's tmp dirs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import plyvel
import pytest
import uvloop

from storage.engine import Engine, LoadStats
from storage.errors import StorageError

REPO = Path(__file__).resolve().parents[2]


async def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "db")


async def reopened(engine: Engine, **kw: object) -> Engine:
    await engine.close()
    return Engine.open(engine.path, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- basics


async def test_around_resolve_brackets_the_waiters_of_each_commit(db_path: str) -> None:
    e = Engine.open(db_path)
    events: list[str] = []
    e.around_resolve = (lambda: events.append("hold"), lambda: events.append("release"))
    try:
        e.put(1, b"a", b"1", lambda err: events.append(f"a {err}"))
        e.put(1, b"b", b"2", lambda err: events.append(f"b {err}"))
        await wait_until(lambda: "release" in events)
        # One batch, one pair of calls around both of its waiters.
        assert events == ["hold", "a None", "b None", "release"]
        events.clear()

        def fails(err: BaseException | None) -> None:
            events.append("c")
            raise RuntimeError("a waiter that fails")

        e.put(1, b"c", b"3", fails)
        await wait_until(lambda: "release" in events)
        assert events == ["hold", "c", "release"]  # released even so
    finally:
        await e.close()


async def test_round_trip(db_path: str) -> None:
    e = Engine.open(db_path)
    try:
        assert e.get(1, b"k") is None
        await e.put(1, b"k", b"v1")
        assert e.get(1, b"k") == b"v1"
        assert e.get(2, b"k") is None  # same key, other partition
        await e.put(1, b"k", b"v2")
        assert e.get(1, b"k") == b"v2"
        await e.put(1, b"", b"empty key is a key")
        await e.delete(1, b"k")
        assert e.get(1, b"k") is None
        await e.delete(1, b"never-there")  # deleting nothing is fine
        await e.write_many([(3, b"a", b"1"), (3, b"b", b"2"), (3, b"a", None)])
        assert e.get(3, b"a") is None and e.get(3, b"b") == b"2"
    finally:
        await e.close()


async def test_rejects_bad_arguments_before_touching_anything(db_path: str) -> None:
    e = Engine.open(db_path)
    try:
        with pytest.raises(TypeError):
            e.put(0, "str key", b"v")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            e.put(0, b"k", bytearray(b"v"))  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            e.put(2**32, b"k", b"v")
        with pytest.raises(ValueError):
            e.put(-1, b"k", b"v")
        with pytest.raises(ValueError):
            e.write_many([(0, b"ok", b"v"), (2**32, b"bad", b"v")])
        assert e.get(0, b"ok") is None  # write_many validates all ops first
        with pytest.raises(TypeError):
            e.meta_put(b"k", "v")  # type: ignore[arg-type]
        await e.put(2**32 - 1, b"k", b"max partition")
        assert e.partitions() == [2**32 - 1]
        assert e.count() == 1
    finally:
        await e.close()
    e = Engine.open(db_path)
    assert e.get(2**32 - 1, b"k") == b"max partition"
    e.close_sync()


async def test_reopen_keeps_data_meta_and_position(db_path: str) -> None:
    e = Engine.open(db_path, fsync="no")
    await e.write_many(
        [(p, b"key%d" % i, b"val%d-%d" % (p, i)) for p in range(5) for i in range(50)]
    )
    await e.delete(2, b"key7")
    await e.meta_put(b"node_id", b"n1")
    await e.meta_put(b"ring", b"\x00" * 300)
    position = e.position
    assert position == 251
    e = await reopened(e)
    try:
        assert e.count() == 249
        assert e.get(4, b"key49") == b"val4-49"
        assert e.get(2, b"key7") is None
        assert e.meta_get(b"node_id") == b"n1"
        assert e.meta_get(b"ring") == b"\x00" * 300
        assert e.position == position
        assert isinstance(e.load_stats, LoadStats)
        assert e.load_stats.keys == 249 and e.load_stats.path == "leveldb"
        assert e.load_stats.bytes == sum(
            len(k) + len(v) for p in e.partitions() for k, v in e.iter_partition(p)
        )
        assert "249 keys" in str(e.load_stats) and "\n" not in str(e.load_stats)
    finally:
        await e.close()


def _table_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.ldb"))


async def test_every_compression_opens_what_the_others_wrote(db_path: str) -> None:
    # Each phase compacts before closing, so its writes are in tables written under its own
    # setting (a memtable flushed in the background may not have run by the close, and one
    # left in the log is written at the next open, under that open's setting).
    value = b"x" * 1000  # snappy and lz4 make a few dozen bytes of it, none keeps all 1000
    keys = 3000
    e = Engine.open(db_path, fsync="no", compression="snappy")
    await e.write_many([(1, b"s%05d" % i, value) for i in range(keys)])
    e._db.compact_range()
    await e.close()
    snappy_bytes = _table_bytes(db_path)
    assert 0 < snappy_bytes < keys * len(value) // 4

    e = Engine.open(db_path, fsync="no", compression="none")
    assert e.count() == keys and e.get(1, b"s00042") == value  # snappy's blocks read back
    await e.write_many([(2, b"n%05d" % i, value) for i in range(keys)])
    e._db.compact_range()
    await e.close()
    none_bytes = _table_bytes(db_path)
    assert none_bytes > keys * len(value)  # the new keys' blocks as they are

    e = Engine.open(db_path, fsync="no")  # the default: lz4, each record on its own
    assert e.count() == 2 * keys and e.get(2, b"n00042") == value
    await e.write_many([(3, b"l%05d" % i, value) for i in range(keys)])
    e._db.compact_range()
    # The new partition's share of the tables (a compaction may have rewritten the others).
    lz4_bytes = e._db.approximate_size(b"d" + (3).to_bytes(4, "big"), b"d" + (4).to_bytes(4, "big"))
    await e.close()
    assert 0 < lz4_bytes < keys * len(value) // 4

    for compression in ("none", "snappy", "lz4"):
        e = Engine.open(db_path, compression=compression)
        try:
            assert e.count() == 3 * keys
            assert all(e.get(p, b"%s%05d" % (c, keys - 1)) == value for p, c in ((1, b"s"), (2, b"n"), (3, b"l")))
        finally:
            await e.close()
    with pytest.raises(ValueError, match="compression must be one of lz4, none, snappy, got 'zstd'"):
        Engine.open(db_path, compression="zstd")


def _stored(path: str, partition: int, key: bytes) -> bytes | None:
    db = plyvel.DB(path)
    try:
        v: bytes | None = db.get(b"d" + partition.to_bytes(4, "big") + key)
        return v
    finally:
        db.close()


async def test_lz4_compresses_each_record_on_disk_and_loads_it_back(db_path: str) -> None:
    squeezable = b"\x95" + b"abc" * 200
    dense = os.urandom(300)  # LZ4 cannot shrink it: stored as it is
    looks_packed = b"\x00" + os.urandom(100)  # starts like a compressed value: escaped
    looks_escaped = b"\x01\x02"
    short = b"\x94ab"
    values = {b"squeezable": squeezable, b"dense": dense, b"looks-packed": looks_packed,
              b"looks-escaped": looks_escaped, b"short": short}  # fmt: skip
    e = Engine.open(db_path, fsync="no", compression="lz4")
    await e.write_many([(7, k, v) for k, v in values.items()])
    await e.close()

    stored = {k: _stored(db_path, 7, k) for k in values}
    sq = stored[b"squeezable"]
    assert sq is not None and sq[0] == 0 and len(sq) < len(squeezable) // 4
    assert stored[b"dense"] == dense and stored[b"short"] == short
    assert stored[b"looks-packed"] == b"\x01" + looks_packed
    assert stored[b"looks-escaped"] == b"\x01" + looks_escaped

    for compression in ("lz4", "none"):  # no snapshot: the table is read back from LevelDB
        e = Engine.open(db_path, compression=compression)
        try:
            assert e.load_stats.path == "leveldb"
            assert {k: e.get(7, k) for k in values} == values
        finally:
            await e.close()


def _layout(path: str) -> bytes | None:
    db = plyvel.DB(path)
    try:
        v: bytes | None = db.get(b"ilayout")
        return v
    finally:
        db.close()


async def test_a_store_that_may_hold_lz4_records_is_marked_for_older_code(db_path: str) -> None:
    # Code that knows only layout b"1" reads every stored value as a record: it must refuse
    # a store holding compressed ones instead of misreading them.
    e = Engine.open(db_path, compression="none")
    await e.put(1, b"k", b"\x94" + b"v" * 100)
    await e.close()
    assert _layout(db_path) == b"1"
    e = Engine.open(db_path, compression="lz4")
    assert e._db.get(b"ilayout") == b"2"  # marked before anything compressed was written
    await e.put(1, b"k2", b"\x94" + b"w" * 100)
    await e.close()
    e = Engine.open(db_path, compression="none")  # a marked store stays marked
    assert e.get(1, b"k") == b"\x94" + b"v" * 100 and e.get(1, b"k2") == b"\x94" + b"w" * 100
    # Written uncompressed, but still in the marked form: it must not read as compressed.
    await e.put(1, b"k3", b"\x00" + b"u" * 100)
    await e.close()
    assert _layout(db_path) == b"2"
    e = Engine.open(db_path, compression="none")
    assert e.get(1, b"k3") == b"\x00" + b"u" * 100
    await e.close()

    db = plyvel.DB(db_path)
    db.put(b"ilayout", b"3")
    db.close()
    with pytest.raises(StorageError, match=r"layout b'3', this code reads b'1' and b'2'"):
        Engine.open(db_path)


async def test_a_compressed_record_that_does_not_decompress_fails_the_open_clearly(db_path: str) -> None:
    e = Engine.open(db_path, compression="lz4")
    await e.put(5, b"k", b"\x94" + b"v" * 100)
    await e.close()
    db = plyvel.DB(db_path)
    db.put(b"d" + (5).to_bytes(4, "big") + b"k", b"\x00not lz4 at all")
    db.close()
    with pytest.raises(StorageError, match=r"cannot load .*partition 5: stored value does not decompress"):
        Engine.open(db_path)


async def test_partitions_iterate_count_and_drop(db_path: str) -> None:
    e = Engine.open(db_path)
    await e.write_many(
        [(p, b"k%03d" % i, b"v%d" % p) for p in (7, 3, 200) for i in range(p % 10 + 1)]
    )
    assert e.partitions() == [3, 7, 200]
    assert e.count(3) == 4 and e.count(7) == 8 and e.count(200) == 1 and e.count(99) == 0
    assert e.count() == 13
    assert sorted(e.iter_partition(3)) == [(b"k%03d" % i, b"v3") for i in range(4)]
    assert list(e.iter_partition(99)) == []

    # The iterator is a snapshot taken at the call: writes while iterating do not show.
    it = e.iter_partition(7)
    e.put(7, b"new", b"x")
    e.delete(7, b"k000")
    assert len(list(it)) == 8
    await e.flush()

    assert await e.drop_partition(7) == 8
    assert e.count(7) == 0 and e.partitions() == [3, 200]
    assert await e.drop_partition(7) == 0
    assert e.stats().partitions == {3: 4, 200: 1}
    e = await reopened(e)
    try:
        assert e.partitions() == [3, 200] and e.count() == 5
    finally:
        await e.close()


async def test_deleting_the_last_key_of_a_partition_unlists_it(db_path: str) -> None:
    e = Engine.open(db_path)
    try:
        await e.put(5, b"only", b"v")
        assert e.partitions() == [5]
        await e.delete(5, b"only")
        assert e.partitions() == [] and e.count() == 0
    finally:
        await e.close()


async def test_meta_never_mixes_with_data(db_path: str) -> None:
    e = Engine.open(db_path)
    await e.put(0, b"shared-name", b"data")
    await e.put(0x6D000000, b"x", b"data in a partition whose prefix starts with 'm'")
    await e.meta_write_many(
        [(b"shared-name", b"meta"), (b"hint/1", b"h1"), (b"hint/2", b"h2"), (b"hinu", b"x")]
    )
    await e.meta_delete(b"hint/2")
    for reopen in (False, True):
        if reopen:
            e = await reopened(e)
        assert e.get(0, b"shared-name") == b"data"
        assert e.meta_get(b"shared-name") == b"meta"
        assert e.meta_get(b"x") is None
        assert list(e.meta_iter()) == [
            (b"hint/1", b"h1"),
            (b"hinu", b"x"),
            (b"shared-name", b"meta"),
        ]
        assert list(e.meta_iter(b"hint/")) == [(b"hint/1", b"h1")]
        assert e.count() == 2 and e.partitions() == [0, 0x6D000000]
        assert list(e.iter_partition(0)) == [(b"shared-name", b"data")]
    await e.close()
    # And on disk: every key lives under its own keyspace byte.
    db = plyvel.DB(db_path)
    try:
        firsts = {k[:1] for k in db.iterator(include_value=False)}
        assert firsts == {b"d", b"m", b"i"}
    finally:
        db.close()


async def test_meta_iter_pages_with_a_cursor(db_path: str) -> None:
    e = Engine.open(db_path)
    await e.meta_write_many([(b"p/%d" % i, b"%d" % i) for i in range(7)] + [(b"a", b""), (b"q", b"")])
    pages = []
    after = None
    while page := list(e.meta_iter(b"p/", limit=3, after=after)):
        pages.append([k for k, _ in page])
        after = page[-1][0]
    assert pages == [[b"p/0", b"p/1", b"p/2"], [b"p/3", b"p/4", b"p/5"], [b"p/6"]]
    # A cursor before the prefix starts at the prefix.
    assert [k for k, _ in e.meta_iter(b"p/", limit=1, after=b"a")] == [b"p/0"]
    await e.close()


# ---------------------------------------------------------------- group commit


async def test_one_turn_of_writes_is_one_batch(db_path: str) -> None:
    e = Engine.open(db_path, fsync="no")
    try:
        before = e.batches_written
        futs = [e.put(i % 16, b"key%04d" % i, b"v%d" % i) for i in range(1000)]
        await asyncio.gather(*futs)
        assert e.batches_written == before + 1

        async def writer(i: int) -> None:
            await e.put(i % 16, b"task%04d" % i, b"t")

        # 1000 tasks whose first steps all run in one turn.
        await asyncio.gather(*(writer(i) for i in range(1000)))
        assert e.batches_written == before + 2

        for i in range(3):  # separate turns, separate batches
            await e.put(0, b"seq%d" % i, b"s")
        assert e.batches_written == before + 5
        assert e.position == 2003
    finally:
        await e.close()


async def test_pending_writes_are_visible_to_read_modify_write(db_path: str) -> None:
    e = Engine.open(db_path)

    def append(key: bytes, suffix: bytes) -> Awaitable[None]:
        return e.put(0, key, (e.get(0, key) or b"") + suffix)

    f1 = append(b"k", b"a")
    f2 = append(b"k", b"b")
    f3 = e.delete(0, b"gone")
    e.put(0, b"gone", b"back")
    assert e.get(0, b"k") == b"ab"  # nothing committed yet, both visible
    assert e.get(0, b"gone") == b"back"
    assert e.batches_written == 0
    await asyncio.gather(f1, f2, f3)
    assert e.batches_written == 1
    e = await reopened(e)
    try:
        assert e.get(0, b"k") == b"ab" and e.get(0, b"gone") == b"back"
    finally:
        await e.close()


async def test_always_keeps_one_batch_in_flight_and_queues_the_next(db_path: str) -> None:
    e = Engine.open(db_path, fsync="always")
    try:
        f1 = e.put(0, b"a", b"1")
        await asyncio.sleep(0)  # the flush runs and hands batch 1 to the worker thread
        assert e.stats().pending_ops == 1
        f2 = e.put(0, b"b", b"2")
        f3 = e.put(0, b"a", b"3")
        assert e.get(0, b"a") == b"3"
        await asyncio.gather(f1, f2, f3)
        assert e.batches_written == 2 and e.syncs_written == 2
        assert e.stats().pending_ops == 0
    finally:
        await e.close()
    e = Engine.open(db_path)
    assert (e.get(0, b"a"), e.get(0, b"b"), e.position) == (b"3", b"2", 3)
    e.close_sync()


async def test_everysec_syncs_within_about_a_second(db_path: str) -> None:
    e = Engine.open(db_path, fsync="everysec")
    try:
        await e.put(0, b"k", b"v")
        assert e.syncs_written == 0  # the write itself does not fsync
        await wait_until(lambda: e.syncs_written == 1)
        await e.flush()  # nothing written since: nothing to do
        assert e.syncs_written == 1
    finally:
        await e.close()


async def test_no_policy_syncs_only_on_flush_and_close(db_path: str) -> None:
    e = Engine.open(db_path, fsync="no")
    try:
        await e.put(0, b"k", b"v")
        assert e.syncs_written == 0 and e._sync_timer is None  # no periodic sync armed
        await e.flush()
        assert e.syncs_written == 1
        await e.flush()
        assert e.syncs_written == 1
        e.put(0, b"k2", b"v")
    finally:
        await e.close()
    assert e.syncs_written == 2  # close wrote the last put with sync=True
    e = Engine.open(db_path)
    assert e.get(0, b"k2") == b"v"
    e.close_sync()


async def test_a_cancelled_waiter_does_not_cancel_the_write_or_the_others(db_path: str) -> None:
    e = Engine.open(db_path)
    f1 = e.put(0, b"a", b"1")
    f2 = e.put(0, b"b", b"2")
    f1.cancel()
    await f2
    e = await reopened(e)
    try:
        assert e.get(0, b"a") == b"1" and e.get(0, b"b") == b"2"
    finally:
        await e.close()


async def test_stats(db_path: str) -> None:
    e = Engine.open(db_path, fsync="no")
    try:
        await e.write_many([(1, b"ab", b"xyz"), (2, b"c", b"")])
        s = e.stats()
        assert (s.keys, s.bytes, s.partitions, s.position) == (2, 6, {1: 1, 2: 1}, 2)
        assert (s.fsync, s.path, s.pending_ops, s.batches_written) == ("no", e.path, 0, 1)
    finally:
        await e.close()


async def test_writes_after_close_are_refused(db_path: str) -> None:
    e = Engine.open(db_path)
    await e.close()
    await e.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        e.put(0, b"k", b"v")


def test_close_sync_without_a_loop_writes_what_is_pending(db_path: str) -> None:
    e = Engine.open(db_path, fsync="always")

    async def issue() -> None:
        e.put(0, b"a", b"1")
        await asyncio.sleep(0)  # batch 1 now in flight in the worker
        e.put(0, b"b", b"2")  # queued behind it

    asyncio.run(issue())  # the loop is gone before anything was awaited
    e.close_sync()
    e = Engine.open(db_path)
    assert (e.get(0, b"a"), e.get(0, b"b")) == (b"1", b"2")
    e.close_sync()


@pytest.mark.parametrize("fsync", ["always", "no"])
def test_an_engine_outlives_its_loop(db_path: str, fsync: str) -> None:
    e = Engine.open(db_path, fsync=fsync)

    async def leave_work_behind() -> None:
        e.put(0, b"a", b"1")
        await asyncio.sleep(0)  # with always: batch 1 in flight in the worker
        e.put(0, b"b", b"2")  # and this one queued (its flush callback dies with the loop)

    async def carry_on() -> None:
        await e.put(0, b"c", b"3")
        await e.flush()

    asyncio.run(leave_work_behind())
    asyncio.run(carry_on())
    assert e.stats().pending_ops == 0
    e.close_sync()
    e = Engine.open(db_path)
    assert [e.get(0, k) for k in (b"a", b"b", b"c")] == [b"1", b"2", b"3"]
    e.close_sync()


@pytest.mark.parametrize("fsync", ["always", "everysec", "no"])
def test_works_under_uvloop(db_path: str, fsync: str) -> None:
    async def main() -> tuple[int, bytes | None]:
        e = Engine.open(db_path, fsync=fsync)
        await asyncio.gather(*(e.put(i % 4, b"k%d" % i, b"v%d" % i) for i in range(500)))
        await e.meta_put(b"m", b"1")
        await e.flush()
        await e.close()
        e = Engine.open(db_path)
        try:
            return e.count(), e.get(3, b"k499")
        finally:
            await e.close()

    assert uvloop.run(main()) == (500, b"v499")


# ---------------------------------------------------------------- failures


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_failed_batch_rolls_back_and_fails_every_waiter(tiny_tmpfs: Path) -> None:
    path = str(tiny_tmpfs / "db")
    e = Engine.open(path, fsync="no")
    try:
        await e.write_many(
            [(0, b"keep", b"old"), (0, b"doomed-delete", b"still here"), (1, b"p1", b"x")]
        )
        await e.meta_put(b"meta", b"old")
        position = e.position

        # One turn: an overwrite, a delete, a drop, a meta write and 3 MB that cannot fit in 1 MB.
        futs: list[Awaitable[object]] = [
            e.put(0, b"keep", e.get(0, b"keep") + b"+new"),  # type: ignore[operator]
            e.delete(0, b"doomed-delete"),
            e.meta_put(b"meta", b"new"),
            e.write_many([(2, b"big%d" % i, os.urandom(100_000)) for i in range(30)]),
            e.drop_partition(1),
        ]
        assert e.get(0, b"keep") == b"old+new"
        results = await asyncio.gather(*futs, return_exceptions=True)
        assert all(isinstance(r, StorageError) for r in results), results
        err = results[0]
        assert isinstance(err, StorageError) and err.path == path
        assert path in str(err) and "disk full" in str(err)

        # Memory is back to exactly what is durable.
        assert e.get(0, b"keep") == b"old"
        assert e.get(0, b"doomed-delete") == b"still here"
        assert e.get(1, b"p1") == b"x"
        assert e.meta_get(b"meta") == b"old"
        assert e.partitions() == [0, 1] and e.count() == 3
        assert e.position == position

        # After a failed write the engine refuses writes rather than append behind junk.
        with pytest.raises(StorageError, match="reopen"):
            e.put(0, b"later", b"v")
        with pytest.raises(StorageError):
            await e.flush()
    finally:
        await e.close()

    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_tmpfs)], check=True)
    e = Engine.open(path)
    try:
        assert e.get(0, b"keep") == b"old" and e.get(0, b"doomed-delete") == b"still here"
        assert e.count() == 3 and e.meta_get(b"meta") == b"old" and e.position == position
        await e.put(0, b"after", b"recovered")
    finally:
        await e.close()


async def test_failure_of_an_in_flight_batch_also_undoes_the_queued_one(tiny_tmpfs: Path) -> None:
    path = str(tiny_tmpfs / "db")
    e = Engine.open(path, fsync="always")
    try:
        await e.put(0, b"k", b"committed")
        f1 = e.write_many(
            [(0, b"k", b"first")] + [(2, b"big%d" % i, os.urandom(100_000)) for i in range(30)]
        )
        await asyncio.sleep(0)  # batch in flight
        f2 = e.put(0, b"k", e.get(0, b"k") + b"+second")  # type: ignore[operator]
        assert e.get(0, b"k") == b"first+second"
        r = await asyncio.gather(f1, f2, return_exceptions=True)
        assert all(isinstance(x, StorageError) for x in r), r
        assert e.get(0, b"k") == b"committed" and e.count() == 1
    finally:
        await e.close()


def test_second_open_of_a_locked_dir_names_the_path(db_path: str) -> None:
    e = Engine.open(db_path)
    try:
        with pytest.raises(StorageError) as ei:
            Engine.open(db_path)
        assert ei.value.path == db_path
        assert db_path in str(ei.value) and "locked" in str(ei.value)
    finally:
        e.close_sync()
    Engine.open(db_path).close_sync()  # the refused open left nothing behind


def test_locked_by_another_process(db_path: str) -> None:
    Engine.open(db_path).close_sync()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import plyvel, sys; db = plyvel.DB(sys.argv[1]); print('held', flush=True); sys.stdin.read()",
            db_path,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StorageError, match="locked by another process"):
            Engine.open(db_path)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("victim", ["CURRENT", "MANIFEST"])
def test_corrupt_dir_is_refused(db_path: str, victim: str) -> None:
    async def fill() -> None:
        e = Engine.open(db_path)
        await e.write_many([(0, b"k%d" % i, b"v") for i in range(100)])
        await e.close()

    asyncio.run(fill())
    target = next(p for p in Path(db_path).iterdir() if p.name.startswith(victim))
    target.write_bytes(b"this is not what leveldb wrote\n" * 4)
    with pytest.raises(StorageError) as ei:
        Engine.open(db_path)
    assert db_path in str(ei.value)
    assert "corrupt" in str(ei.value)


def test_missing_dir_without_create(db_path: str) -> None:
    with pytest.raises(StorageError, match="does not exist") as ei:
        Engine.open(db_path, create=False)
    assert db_path in str(ei.value)
    assert not os.path.exists(db_path)


def test_a_foreign_leveldb_is_refused(db_path: str) -> None:
    db = plyvel.DB(db_path, create_if_missing=True)
    db.put(b"someone else's", b"data")
    db.close()
    with pytest.raises(StorageError, match="not a kvstore database"):
        Engine.open(db_path)


def test_permission_denied_names_the_path(tmp_path: Path) -> None:
    db_path = str(tmp_path / "db")
    Engine.open(db_path).close_sync()
    if os.geteuid() == 0:
        # Root ignores permissions: open as nobody in a child (imports done before dropping root).
        code = textwrap.dedent(
            """
            import os, sys
            from storage.engine import Engine
            from storage.errors import StorageError
            os.setgid(65534)
            os.setuid(65534)
            try:
                Engine.open(sys.argv[1])
            except StorageError as e:
                print(e)
                sys.exit(0)
            sys.exit(3)
            """
        )
    else:
        os.chmod(db_path, 0o500)
        code = textwrap.dedent(
            """
            import sys
            from storage.engine import Engine
            from storage.errors import StorageError
            try:
                Engine.open(sys.argv[1])
            except StorageError as e:
                print(e)
                sys.exit(0)
            sys.exit(3)
            """
        )
    try:
        r = subprocess.run(
            [sys.executable, "-c", code, db_path],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd=str(REPO),
        )
    finally:
        os.chmod(db_path, 0o755)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert db_path in r.stdout and "permission denied" in r.stdout


def test_a_corrupt_table_file_is_refused_not_half_loaded(db_path: str) -> None:
    async def fill() -> None:
        e = Engine.open(db_path)
        await e.write_many([(i % 4, b"k%06d" % i, os.urandom(50)) for i in range(20_000)])
        await e.close()

    asyncio.run(fill())
    Engine.open(db_path).close_sync()  # recovery turns the log into a table file
    table = next(p for p in Path(db_path).iterdir() if p.suffix == ".ldb")
    with open(table, "r+b") as f:
        f.seek(table.stat().st_size // 3)
        f.write(b"\xff" * 16)
    with pytest.raises(StorageError, match="corrupt") as ei:
        Engine.open(db_path)
    assert db_path in str(ei.value)
