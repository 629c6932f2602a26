"""The local store of one node: an in-memory table made durable in LevelDB.

The table (``partition -> {key: record}``) is the working set: every read is a dict
lookup. LevelDB (through plyvel) is only the durability layer, read once at open.

Keyspaces of the one LevelDB, never mixed (each has its own first byte):

    b"d" + partition (4 bytes, big-endian) + key  -> record   user data
    b"m" + key                                    -> value    node metadata (meta_*)
    b"i" + name                                   -> value    engine bookkeeping

Write path (group commit). ``put``/``delete``/``write_many``/``meta_*`` apply the change to
memory at once, so a read-modify-write issued right after sees it, and return a future that
resolves once the change is in LevelDB's log. The first write of an event-loop turn schedules
one flush with ``loop.call_soon``; that flush turns every change of the turn into ONE
WriteBatch, together with the new write position (so the position LevelDB holds always names
exactly the data beside it).

Fsync policies follow Redis's appendfsync:
    always    every batch is written with sync=True, in a worker thread so the loop keeps
              accepting writes; at most one batch is in flight, later writes queue into the
              next batch
    everysec  batches are written with sync=False on the loop thread (an append to the log
              file, no fsync); once a second, if anything was written since the last sync,
              the next batch (empty if need be) goes out with sync=True through the worker
    no        never sync on its own; ``flush()`` and ``close()`` still do

A batch that fails (disk full, I/O error) is rolled back in memory together with every change
issued after it (those may have read its values), and each of their waiters gets a
StorageError naming the path and the cause. The engine then refuses further writes: LevelDB
may have left a partial record in its log, and appending behind it could make recovery drop
good records; reopening recovers cleanly. A failed *sync* write is indeterminate (LevelDB's
own words): the batch may still show up after a restart, as any failed replica write may.

Test-only fault mode: losing un-synced writes (a power loss). A SIGKILL of the process loses
nothing above, because a sync=False write is already in the kernel's page cache and the
kernel writes it out even after the process dies; only a power loss (or kernel crash) loses
the writes since the last fsync. Fault-injection tests need that loss on a SIGKILL, so with
``lose_unsynced`` (``Engine.open(lose_unsynced=True)``, or ``KV_TEST_LOSE_UNSYNCED=1`` in
the environment; never set it in production) and ``fsync`` everysec or no, a batch that
would have been written with sync=False is instead *held in memory* — applied to the table
and acknowledged exactly as before, so reads and read-modify-writes see it — and handed to
LevelDB only by the next synced write: the periodic sync under everysec (one synced
WriteBatch of every held batch, in order), or ``flush()``/``close()`` (under no, only those:
the kernel's own writeback is not modelled, so the tail grows until then). A SIGKILL
therefore loses exactly the acknowledged-but-un-synced tail, as a power loss would, and
nothing older. Under always every batch is synced before its ack, so there is nothing to
lose and the mode changes nothing. A failed synced write in this mode loses the held batches
(already acknowledged, as a failed fsync would) and the engine refuses writes, as above.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, overload

import plyvel
from sortedcontainers import SortedDict

from storage import records, snapshot
from storage.compression import COMPRESSIONS, DEFAULT_COMPRESSION
from storage.errors import StorageError
from storage.fsync import FSYNC_POLICIES

log = logging.getLogger("storage.engine")

__all__ = ["FSYNC_POLICIES", "LOSE_UNSYNCED_ENV", "Engine", "EngineStats", "LoadStats"]

_DATA: Final = b"d"
_DATA_END: Final = b"e"
_META: Final = b"m"
_INTERNAL: Final = b"i"
_POSITION_KEY: Final = _INTERNAL + b"position"
_LAYOUT_KEY: Final = _INTERNAL + b"layout"
# b"1": data values stored as they are. b"2": data values in storage.records' form, some
# compressed; written before the first such value, so code that knows only b"1" refuses the
# store rather than misreading it.
_LAYOUT_RAW: Final = b"1"
_LAYOUT_PACKED: Final = b"2"
_MAX_PARTITION: Final = 2**32 - 1
_unpack: Final = records.unpack
# Read once: compiled, ``time.perf_counter`` is a module attribute lookup at every call (two
# per batch).
_perf_counter: Final = time.perf_counter
_SYNC_INTERVAL_S: Final = 1.0
LOSE_UNSYNCED_ENV: Final = "KV_TEST_LOSE_UNSYNCED"

# Op tags of the pending list; each op carries what rollback needs to undo it.
_OP_DATA: Final = 0  # (tag, partition, key, new record or None, old record or None)
_OP_DROP: Final = 1  # (tag, partition, None, None, the dropped dict)
_OP_META: Final = 2  # (tag, 0, key, new value or None, old value or None)

_Op = tuple[int, int, Any, Any, Any]


@dataclass(frozen=True, slots=True)
class LoadStats:
    """What ``Engine.open`` loaded, from where, and why from there."""

    keys: int
    bytes: int
    seconds: float
    path: str = "leveldb"  # "leveldb" or "snapshot"
    reason: str = ""  # why that path: e.g. why a snapshot was not used

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"loaded {self.keys} keys, {self.bytes / 1e6:.1f} MB in {self.seconds:.3f} s "
            f"from {self.path}{why}"
        )


@dataclass(frozen=True, slots=True)
class EngineStats:
    keys: int
    bytes: int
    partitions: dict[int, int]
    position: int
    batches_written: int
    syncs_written: int
    pending_ops: int
    fsync: str
    path: str
    held_ops: int = 0  # acknowledged, not yet in LevelDB (lose_unsynced test mode only)


class _Batch:
    """One group commit: the ops of a loop turn and who waits for them.

    A plain slotted class: one is built per batch (every loop turn with a write), and a
    dataclass's generated init with default factories cost ~1.4k instructions of it."""

    __slots__ = ("data_ops", "done", "ops", "position", "started", "sync", "unsynced_gen", "waiters")

    def __init__(self) -> None:
        self.ops: list[_Op] = []
        # Futures, or callbacks (``on_durable``) called with None or the error.
        self.waiters: list[asyncio.Future[None] | Callable[[BaseException | None], None]] = []
        self.data_ops = 0
        self.sync = False
        self.position = 0
        self.unsynced_gen = 0  # the _write_gen a successful sync of this batch covers
        self.done = False
        self.started = 0.0  # perf_counter when it was handed to LevelDB (for on_batch)


def _fsync_logs(path: str) -> int:
    """fsync every LevelDB write-ahead log file in ``path`` (what a synced write would
    flush); returns how many. Runs in the worker thread."""
    n = 0
    for name in os.listdir(path):
        if name.endswith(".log") and name[:-4].isdigit():
            fd = os.open(os.path.join(path, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            n += 1
    return n


def _prefix(partition: int) -> bytes:
    return _DATA + partition.to_bytes(4, "big")


def _describe(exc: BaseException) -> str:
    """A short cause from a plyvel/OS error, for messages an operator can act on."""
    arg = exc.args[0] if len(exc.args) == 1 else None
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(exc)
    low = text.lower()
    if "lock" in low and ("held" in low or "unavailable" in low or "resource" in low):
        cause = "locked by another process (or already open in this one)"
    elif "permission denied" in low or isinstance(exc, PermissionError):
        cause = "permission denied"
    elif "no space" in low:
        cause = "disk full"
    elif isinstance(exc, plyvel.CorruptionError) or "corrupt" in low:
        cause = "corrupt database"
    elif "does not exist" in low or "no such file" in low:
        cause = "does not exist"
    elif "read-only" in low:
        cause = "read-only file system"
    else:
        cause = "I/O error"
    return f"{cause} ({type(exc).__name__}: {text})"


class Engine:
    """One node's table: dict reads, group-committed LevelDB writes.

    Create with :meth:`open`. Writes need a running event loop (they use ``call_soon``) and
    must come from that loop's thread; the sync methods (``get``, iteration, ``close_sync``)
    may be called from it or when no loop runs.
    """

    path: str
    load_stats: LoadStats
    snapshot_extra: dict[str, bytes]

    def __init__(
        self, path: str, db: Any, fsync: str, *, lose_unsynced: bool = False, pack_records: bool = False
    ) -> None:
        # Use Engine.open; this only wires fields.
        self.path = path
        self.fsync = fsync
        # Data values go to LevelDB through storage.records.pack (storage_compression lz4).
        self.pack_records = pack_records
        self._layout = _LAYOUT_RAW
        self.lose_unsynced = lose_unsynced and fsync != "always"
        # Acknowledged batches not yet handed to LevelDB, oldest first (lose_unsynced only).
        self._held: list[_Batch] = []
        self._db = db
        self._parts: dict[int, dict[bytes, bytes]] = {}
        self._prefixes: dict[int, bytes] = {}  # partition -> its data key prefix (_build)
        self._meta: Any = SortedDict()
        self._position = 0
        self._issued_position = 0
        self._pending: _Batch | None = None
        self._inflight: _Batch | None = None
        self._inflight_cf: concurrent.futures.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._sync_timer: asyncio.TimerHandle | None = None
        # Counts batches written with sync=False; a sync write covers all up to its capture.
        self._write_gen = 0
        self._synced_gen = 0
        self._log_sync: concurrent.futures.Future[int] | None = None
        self._failed: StorageError | None = None
        self._closed = False
        self.batches_written = 0
        self.syncs_written = 0
        self.load_stats = LoadStats(0, 0, 0.0)
        self.snapshot_extra = {}
        # Told of each committed batch: (ops, synced, seconds from hand-over to commit).
        # Once per batch, never per write; the node's metrics hook in here.
        self.on_batch: Callable[[int, bool, float], None] | None = None
        # Called before and after a committed batch's waiters are told (a node holds its
        # server's replies meanwhile, so those the commit completes are written at once).
        self.around_resolve: tuple[Callable[[], None], Callable[[], None]] | None = None

    # ------------------------------------------------------------------ open / load

    @classmethod
    def open(
        cls,
        path: str,
        *,
        fsync: str = "everysec",
        compression: str = DEFAULT_COMPRESSION,
        create: bool = True,
        snapshot_dir: str | None = None,
        node_id: str | None = None,
        lose_unsynced: bool | None = None,
    ) -> Engine:
        """Open (or create) the store at ``path`` and load its whole table into memory.

        With ``snapshot_dir`` and ``node_id`` the table comes from that node's shared-memory
        snapshot when every header field checks out against this LevelDB, else from LevelDB;
        ``load_stats.path`` and ``load_stats.reason`` say which and why.

        ``compression`` is how what is written from now on is compressed: ``lz4`` each record
        (storage.records), ``snappy`` LevelDB's blocks, ``none`` neither (storage.compression
        says why ``lz4`` is the default); what was written under another setting reads back.

        ``lose_unsynced`` (default: ``KV_TEST_LOSE_UNSYNCED=1`` in the environment) turns on
        the test-only power-loss fault mode described in the module docstring.
        """
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        path = os.path.abspath(path)
        t0 = time.perf_counter()
        if not create and not os.path.isdir(path):
            # LevelDB would create the directory (and a LOCK file) before refusing.
            raise StorageError(f"storage: cannot open {path}: does not exist", path=path)
        try:
            if create:
                os.makedirs(path, exist_ok=True)  # LevelDB creates only the last level
            db = plyvel.DB(
                path,
                create_if_missing=create,
                paranoid_checks=True,
                compression="snappy" if compression == "snappy" else None,
            )
        except (plyvel.Error, OSError) as e:
            raise StorageError(f"storage: cannot open {path}: {_describe(e)}", path=path) from e
        if lose_unsynced is None:
            lose_unsynced = os.environ.get(LOSE_UNSYNCED_ENV, "") == "1"
        engine = cls(path, db, fsync, lose_unsynced=lose_unsynced, pack_records=compression == "lz4")
        if engine.lose_unsynced:
            log.warning(
                "storage: %s runs in the TEST fault mode %s=1: un-synced writes are held in "
                "memory until the next sync and a SIGKILL loses them (as a power loss would)",
                path, LOSE_UNSYNCED_ENV,
            )
        try:
            engine._load_bookkeeping(create)
            source, reason = "leveldb", ""
            table: dict[int, dict[bytes, bytes]] | None = None
            keys = nbytes = -1
            if snapshot_dir is not None and node_id is not None:
                restored = snapshot.restore(snapshot_dir, node_id, engine._position)
                table, reason = restored.table, restored.reason
                if table is not None:
                    source = "snapshot"
                    engine.snapshot_extra = restored.extra
                    keys, nbytes = restored.keys, restored.bytes
            elif snapshot_dir is not None or node_id is not None:
                reason = "no snapshot: both snapshot_dir and node_id are needed"
            if table is None:
                table = engine._load_table()
            engine._parts = table
        except StorageError:
            db.close()
            raise
        except (plyvel.Error, OSError) as e:
            db.close()
            raise StorageError(f"storage: cannot load {path}: {_describe(e)}", path=path) from e
        if keys < 0:
            keys, nbytes = engine._size()
        engine.load_stats = LoadStats(keys, nbytes, time.perf_counter() - t0, source, reason)
        return engine

    def _load_bookkeeping(self, create: bool) -> None:
        db = self._db
        layout = db.get(_LAYOUT_KEY)
        if layout is None:
            if next(db.iterator(include_value=False), None) is not None:
                raise StorageError(
                    f"storage: cannot open {self.path}: not a kvstore database "
                    "(LevelDB without a layout key)",
                    path=self.path,
                )
            layout = _LAYOUT_PACKED if self.pack_records else _LAYOUT_RAW
            db.put(_LAYOUT_KEY, layout, sync=True)
        elif layout not in (_LAYOUT_RAW, _LAYOUT_PACKED):
            raise StorageError(
                f"storage: cannot open {self.path}: layout {layout!r}, this code reads "
                f"{_LAYOUT_RAW!r} and {_LAYOUT_PACKED!r}",
                path=self.path,
            )
        elif layout == _LAYOUT_RAW and self.pack_records:
            # Marked before the first packed value is written (see _LAYOUT_PACKED).
            layout = _LAYOUT_PACKED
            db.put(_LAYOUT_KEY, layout, sync=True)
        self._layout = layout
        raw = db.get(_POSITION_KEY)
        self._position = self._issued_position = int.from_bytes(raw, "big") if raw else 0
        self._meta = SortedDict(
            (k[1:], v) for k, v in db.iterator(prefix=_META, verify_checksums=True)
        )

    def _load_table(self) -> dict[int, dict[bytes, bytes]]:
        """The data keyspace as per-partition dicts.

        One C-level dict comprehension per partition (found by seeking to the next prefix)
        keeps per-key Python work to a slice; the cyclic GC is paused because a million
        short-lived tuples would otherwise trigger hundreds of useless collections.
        """
        db = self._db
        parts: dict[int, dict[bytes, bytes]] = {}
        start = _DATA
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            while True:
                first = next(db.iterator(start=start, stop=_DATA_END, include_value=False), None)
                if first is None:
                    break
                partition = int.from_bytes(first[1:5], "big")
                pre = first[:5]
                rows = db.iterator(prefix=pre, fill_cache=False, verify_checksums=True)
                if self._layout == _LAYOUT_RAW:
                    parts[partition] = {k[5:]: v for k, v in rows}
                else:
                    try:
                        parts[partition] = {k[5:]: _unpack(v) for k, v in rows}
                    except ValueError as e:
                        raise StorageError(
                            f"storage: cannot load {self.path}: partition {partition}: {e}", path=self.path
                        ) from e
                if partition == _MAX_PARTITION:
                    break
                start = _prefix(partition + 1)
        finally:
            if gc_was_enabled:
                gc.enable()
        return parts

    def _size(self) -> tuple[int, int]:
        keys = nbytes = 0
        for d in self._parts.values():
            keys += len(d)
            nbytes += sum(map(len, d)) + sum(map(len, d.values()))
        return keys, nbytes

    # ------------------------------------------------------------------ reads

    @property
    def position(self) -> int:
        """Write sequence number of what LevelDB holds: +1 per data op of each committed batch
        (in the lose_unsynced test mode: of what was acknowledged, held batches included)."""
        return self._position

    @property
    def closed(self) -> bool:
        return self._closed

    def get(self, partition: int, key: bytes) -> bytes | None:
        d = self._parts.get(partition)
        return None if d is None else d.get(key)

    def partitions(self) -> list[int]:
        """Partitions holding at least one key, ascending."""
        return sorted(p for p, d in self._parts.items() if d)

    def iter_partition(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """(key, record) pairs of one partition as of this call; later writes do not show."""
        d = self._parts.get(partition)
        return iter(list(d.items()) if d else ())

    def table(self) -> dict[int, dict[bytes, bytes]]:
        """The live table, for the snapshot writer: read it without awaiting in between."""
        return self._parts

    def count(self, partition: int | None = None) -> int:
        if partition is None:
            return sum(map(len, self._parts.values()))
        d = self._parts.get(partition)
        return len(d) if d else 0

    def stats(self) -> EngineStats:
        keys, nbytes = self._size()
        pending = len(self._pending.ops) if self._pending else 0
        if self._inflight:
            pending += len(self._inflight.ops)
        held = sum(len(b.ops) for b in self._held)
        return EngineStats(
            keys=keys,
            bytes=nbytes,
            partitions={p: len(d) for p, d in sorted(self._parts.items()) if d},
            position=self._position,
            batches_written=self.batches_written,
            syncs_written=self.syncs_written,
            pending_ops=pending,
            fsync=self.fsync,
            path=self.path,
            held_ops=held,
        )

    def meta_get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._meta.get(key)
        return value

    def meta_iter(
        self, prefix: bytes = b"", *, limit: int | None = None, after: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of meta keys starting with ``prefix``, ascending, as of this call;
        at most ``limit`` of them (a bounded batch need not copy a long range), and only
        those past ``after`` (a cursor: the last key of the previous batch)."""
        meta = self._meta
        out: list[tuple[bytes, bytes]] = []
        keys = (
            meta.irange(minimum=prefix)
            if after is None or after < prefix
            else meta.irange(minimum=after, inclusive=(False, True))
        )
        for k in keys:
            if not k.startswith(prefix) or (limit is not None and len(out) >= limit):
                break
            out.append((k, meta[k]))
        return iter(out)

    # ------------------------------------------------------------------ writes

    @overload
    def put(self, partition: int, key: bytes, record: bytes) -> asyncio.Future[None]: ...
    @overload
    def put(self, partition: int, key: bytes, record: bytes, on_durable: OnDurable) -> None: ...
    def put(
        self, partition: int, key: bytes, record: bytes, on_durable: OnDurable | None = None
    ) -> asyncio.Future[None] | None:
        """Store ``record`` under ``key`` now; the future resolves once it is in the log.

        With ``on_durable``, no future: it is called (with None, or the error) right when the
        batch is written. The hot path takes this: a future's callbacks each go through the
        loop's queue, one more turn apiece."""
        if type(key) is not bytes or type(record) is not bytes:
            raise TypeError("key and record must be bytes")
        batch = self._batch()
        d = self._parts.get(partition)
        if d is None:
            _check_partition(partition)
            d = self._parts[partition] = {}
        old = d.get(key)
        d[key] = record
        batch.ops.append((_OP_DATA, partition, key, record, old))
        batch.data_ops += 1
        if on_durable is not None:
            batch.waiters.append(on_durable)
            return None
        return self._waiter(batch)

    def delete(self, partition: int, key: bytes) -> asyncio.Future[None]:
        """Remove ``key`` now; the future resolves once the removal is in the log."""
        if type(key) is not bytes:
            raise TypeError("key must be bytes")
        batch = self._batch()
        old = self._delete_now(partition, key)
        batch.ops.append((_OP_DATA, partition, key, None, old))
        batch.data_ops += 1
        return self._waiter(batch)

    def write_many(self, ops: Iterable[tuple[int, bytes, bytes | None]]) -> asyncio.Future[None]:
        """Apply (partition, key, record) ops in order, record None meaning delete; one future."""
        ops = list(ops)
        for partition, key, record in ops:
            if type(key) is not bytes or (record is not None and type(record) is not bytes):
                raise TypeError("keys and records must be bytes (record None = delete)")
            _check_partition(partition)
        batch = self._batch()
        parts = self._parts
        out = batch.ops
        for partition, key, record in ops:
            if record is None:
                old = self._delete_now(partition, key)
            else:
                d = parts.get(partition)
                if d is None:
                    d = parts[partition] = {}
                old = d.get(key)
                d[key] = record
            out.append((_OP_DATA, partition, key, record, old))
        batch.data_ops += len(ops)
        return self._waiter(batch)

    async def drop_partition(self, partition: int) -> int:
        """Remove a whole partition (ownership moved away); returns how many keys it held."""
        _check_partition(partition)
        batch = self._batch()
        d = self._parts.pop(partition, None)
        n = len(d) if d else 0
        if d:
            batch.ops.append((_OP_DROP, partition, None, None, d))
            batch.data_ops += 1
        await self._waiter(batch)
        return n

    def meta_put(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        return self.meta_write_many([(key, value)])

    def meta_delete(self, key: bytes) -> asyncio.Future[None]:
        return self.meta_write_many([(key, None)])

    def meta_write_many(self, ops: Iterable[tuple[bytes, bytes | None]]) -> asyncio.Future[None]:
        """Apply (key, value) meta ops in order, value None meaning delete; one future.

        Meta writes share the group commit with data writes but do not move ``position``:
        meta is always read back from LevelDB, so a snapshot does not depend on it.
        """
        ops = list(ops)
        for key, value in ops:
            if type(key) is not bytes or (value is not None and type(value) is not bytes):
                raise TypeError("meta keys and values must be bytes (value None = delete)")
        batch = self._batch()
        meta = self._meta
        for key, value in ops:
            old = meta.get(key)
            if value is None:
                meta.pop(key, None)
            else:
                meta[key] = value
            batch.ops.append((_OP_META, 0, key, value, old))
        return self._waiter(batch)

    async def flush(self) -> None:
        """Wait until everything issued so far is in LevelDB and fsynced."""
        if self._closed:
            return
        self._raise_if_failed()
        inflight = self._inflight
        if self._pending is None:
            if inflight is None and self._write_gen == self._synced_gen:
                return
            if inflight is not None and inflight.sync:
                await self._waiter(inflight)  # that fsync covers everything issued so far
                return
        batch = self._batch()
        batch.sync = True
        await self._waiter(batch)

    async def close(self) -> None:
        """Flush and fsync what is pending, then close LevelDB. Idempotent."""
        if self._closed:
            return
        # Loop: writers may still slip a write in while we wait for the last batch.
        while self._failed is None and (
            self._pending is not None
            or self._inflight is not None
            or self._write_gen != self._synced_gen
        ):
            with contextlib.suppress(StorageError):
                await self.flush()
        await self._wait_inflight()
        self._close_db()

    def close_sync(self) -> None:
        """close() for callers without a running loop (atexit, signal handlers, tests).

        Blocks the calling thread while the last batch is written and fsynced.
        """
        if self._closed:
            return
        with contextlib.suppress(StorageError):
            self.flush_sync()
        self._close_db()

    def flush_sync(self) -> None:
        """flush() without a loop: blocks until everything issued so far is written and synced."""
        if self._closed:
            return
        self._settle_inflight()
        self._raise_if_failed()
        if self._sync_timer is not None:
            self._sync_timer.cancel()
            self._sync_timer = None
        batch = self._pending
        self._pending = None
        if batch is None:
            if self._write_gen == self._synced_gen:
                return
            batch = _Batch()
        batch.sync = True
        self._start(batch, inline=True)
        self._raise_if_failed()

    # ------------------------------------------------------------------ group commit

    def _batch(self) -> _Batch:
        """The batch this turn's writes join; the first write of a turn schedules its flush."""
        if self._closed:
            raise StorageError(f"storage: {self.path} is closed", path=self.path)
        self._raise_if_failed()
        # asyncio.get_running_loop() costs a getpid() system call: asked only when the
        # engine has no loop yet or its loop has closed (successive asyncio.run calls).
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = asyncio.get_running_loop()
            self._adopt(loop)
        batch = self._pending
        if batch is None:
            batch = self._pending = _Batch()
        if not self._flush_scheduled and self._inflight is None:
            self._flush_scheduled = True
            loop.call_soon(self._flush_pending)
        return batch

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Move to a new loop once the old one is gone (e.g. successive asyncio.run calls)."""
        old = self._loop
        if old is not None and not old.is_closed() and (self._pending or self._inflight):
            raise RuntimeError("Engine writes must all come from one event loop")
        self._settle_inflight()
        self._loop = loop
        self._flush_scheduled = False  # a callback queued on a dead loop never runs
        self._sync_timer = None

    def _settle_inflight(self) -> None:
        """Block until the batch in the worker is written, and account for it here."""
        cf, inflight = self._inflight_cf, self._inflight
        if cf is not None and inflight is not None:
            with contextlib.suppress(BaseException):
                cf.result()
            self._on_written(inflight, cf)

    def _waiter(self, batch: _Batch) -> asyncio.Future[None]:
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        batch.waiters.append(fut)
        return fut

    def _delete_now(self, partition: int, key: bytes) -> bytes | None:
        d = self._parts.get(partition)
        if d is None:
            _check_partition(partition)
            return None
        old = d.pop(key, None)
        if not d:
            del self._parts[partition]
        return old

    def _flush_pending(self) -> None:
        self._flush_scheduled = False
        if self._inflight is not None or self._closed:
            return  # the in-flight batch's completion starts the next one
        batch = self._pending
        if batch is None:
            return
        self._pending = None
        self._start(batch, inline=False)

    def _start(self, batch: _Batch, *, inline: bool) -> None:
        """Write one batch: on the loop thread unless it must fsync (then in the worker)."""
        sync = batch.sync or self.fsync == "always"
        batch.sync = sync
        batch.position = self._issued_position + batch.data_ops
        batch.unsynced_gen = self._write_gen
        batch.started = _perf_counter()
        if self.lose_unsynced and not sync:
            # Acknowledge now, write at the next sync: a SIGKILL in between loses it, as a
            # power loss loses what sat in the page cache.
            self._issued_position = batch.position
            self._held.append(batch)
            self._commit(batch)
            return
        held, self._held = self._held, []
        try:
            wb = self._build([*held, batch], sync)
        except Exception as e:  # e.g. the db was closed under us
            self._fail(batch, e)
            return
        self._issued_position = batch.position
        if inline or not sync:
            try:
                wb.write()
            except Exception as e:
                self._fail(batch, e)
                return
            self._commit(batch)
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="kv-storage-sync"
            )
        self._inflight = batch
        cf = self._inflight_cf = self._executor.submit(wb.write)
        loop = self._loop
        assert loop is not None

        def done(cf: concurrent.futures.Future[None]) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed: close_sync handles it
                loop.call_soon_threadsafe(self._on_written, batch, cf)

        cf.add_done_callback(done)

    def _build(self, batches: list[_Batch], sync: bool) -> Any:
        """One WriteBatch of the ops of ``batches`` in order (several only when held
        batches of the lose_unsynced mode go out with a sync), ending at the last position."""
        wb = self._db.write_batch(sync=sync)
        put = wb.put
        pack = self.pack_records
        # A store marked for packed values but written under another setting: values go in
        # as they are, escaped where they would read as a marker (storage.records).
        escape = not pack and self._layout == _LAYOUT_PACKED
        # Key prefixes by partition, kept across batches (one entry per partition this
        # engine ever wrote, as ``_parts`` holds): a batch of one write is the usual batch
        # under light load, and a dict built per batch was a visible share of it.
        prefixes = self._prefixes
        if len(batches) == 1:
            batch = batches[0]
            ops = batch.ops
            position = batch.position if batch.data_ops else -1
        else:
            ops = [op for b in batches for op in b.ops]
            position = max((b.position for b in batches if b.data_ops), default=-1)
        for tag, partition, key, new, old in ops:
            if tag == _OP_DATA:
                pre = prefixes.get(partition)
                if pre is None:
                    pre = prefixes[partition] = _prefix(partition)
                if new is None:
                    wb.delete(pre + key)
                else:
                    put(pre + key, records.pack(new) if pack else records.escape(new) if escape else new)
            elif tag == _OP_META:
                if new is None:
                    wb.delete(_META + key)
                else:
                    put(_META + key, new)
            else:  # _OP_DROP
                pre = _prefix(partition)
                for k in old:
                    wb.delete(pre + k)
        if position >= 0:
            put(_POSITION_KEY, position.to_bytes(8, "big"))
        return wb

    def _on_written(self, batch: _Batch, cf: concurrent.futures.Future[None]) -> None:
        if batch.done:
            return  # flush_sync got here first
        self._inflight = None
        self._inflight_cf = None
        exc = cf.exception()
        if exc is not None:
            self._fail(batch, exc)
            return
        self._commit(batch)
        loop = self._loop
        if self._pending is not None and not self._closed and loop is not None:
            if loop.is_closed():
                return  # only flush_sync/close_sync can write what is left
            self._flush_scheduled = True
            loop.call_soon(self._flush_pending)

    def _commit(self, batch: _Batch) -> None:
        batch.done = True
        if batch.ops:
            self.batches_written += 1
        if batch.position > self._position:
            self._position = batch.position
        if batch.sync:
            self.syncs_written += 1
            self._synced_gen = max(self._synced_gen, batch.unsynced_gen)
        elif batch.ops:
            self._write_gen += 1
            self._arm_sync_timer()
        around = self.around_resolve
        if around is None:
            _resolve(batch.waiters, None)
        else:
            around[0]()
            try:
                _resolve(batch.waiters, None)
            finally:
                around[1]()
        if self.on_batch is not None:
            self.on_batch(len(batch.ops), batch.sync, _perf_counter() - batch.started)

    def _fail(self, batch: _Batch, exc: BaseException) -> None:
        """Undo ``batch`` and everything issued after it; fail all their waiters."""
        batch.done = True
        self._inflight = None
        self._inflight_cf = None
        later = self._pending
        self._pending = None
        err = StorageError(
            f"storage: write to {self.path} failed: {_describe(exc)}", path=self.path
        )
        err.__cause__ = exc
        for b in (later, batch):
            if b is None:
                continue
            b.done = True
            self._rollback(b.ops)
            _resolve(b.waiters, err)
        self._issued_position = self._position
        if self._failed is None:
            self._failed = StorageError(
                f"storage: {self.path} refuses writes after a failed write "
                f"({_describe(exc)}); reopen to recover",
                path=self.path,
            )

    def _rollback(self, ops: list[_Op]) -> None:
        parts, meta = self._parts, self._meta
        for tag, partition, key, _new, old in reversed(ops):
            if tag == _OP_DATA:
                if old is None:
                    d = parts.get(partition)
                    if d is not None:
                        d.pop(key, None)
                        if not d:
                            del parts[partition]
                else:
                    parts.setdefault(partition, {})[key] = old
            elif tag == _OP_META:
                if old is None:
                    meta.pop(key, None)
                else:
                    meta[key] = old
            else:  # _OP_DROP: later ops on this partition are already undone
                parts[partition] = old

    def _arm_sync_timer(self) -> None:
        if self.fsync != "everysec" or self._sync_timer is not None or self._loop is None:
            return
        self._sync_timer = self._loop.call_later(_SYNC_INTERVAL_S, self._sync_tick)

    def _sync_tick(self) -> None:
        self._sync_timer = None
        if self._closed or self._failed is not None or self._write_gen == self._synced_gen:
            return
        if self.lose_unsynced:
            # The held tail reaches LevelDB only now, in one synced batch.
            if self._held:
                self._batch().sync = True
            return
        if self._log_sync is not None:
            self._arm_sync_timer()  # the previous fsync is still running (a slow disk)
            return
        # fsync LevelDB's log files from the worker thread, beside the writes rather than in
        # their way: a synced batch would hold every later write behind the fsync (LevelDB
        # queues writers behind a syncing one), stalling the whole node once a second.
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="kv-storage-sync"
            )
        gen = self._write_gen
        loop = self._loop
        assert loop is not None
        cf = self._log_sync = self._executor.submit(_fsync_logs, self.path)
        def done(f: concurrent.futures.Future[int]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop may be gone by now (closing)
                loop.call_soon_threadsafe(self._on_logs_synced, gen, f)

        cf.add_done_callback(done)

    def _on_logs_synced(self, gen: int, cf: concurrent.futures.Future[int]) -> None:
        self._log_sync = None
        if self._closed:
            return
        try:
            cf.result()
        except Exception as e:
            # Could not fsync the files directly: fall back to a synced (empty) batch.
            log.warning("storage: fsync of %s log failed (%s); syncing through a batch", self.path, e)
            if self._failed is None:
                self._batch().sync = True
            return
        self._synced_gen = max(self._synced_gen, gen)
        self.syncs_written += 1
        if self._write_gen != self._synced_gen:
            self._arm_sync_timer()

    async def _wait_inflight(self) -> None:
        cf = self._inflight_cf
        if cf is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wrap_future(cf)

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _close_db(self) -> None:
        self._closed = True
        if self._sync_timer is not None:
            self._sync_timer.cancel()
            self._sync_timer = None
        self._settle_inflight()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        pending = self._pending
        self._pending = None
        if pending is not None:
            # Only reachable after a failure: the pending ops were already rolled back.
            err = self._failed or StorageError(f"storage: {self.path} is closed", path=self.path)
            _resolve(pending.waiters, err)
        self._db.close()


OnDurable = Callable[[BaseException | None], None]


# A static, not ``asyncio.Future`` looked up on the module for every waiter.
_Future: Final = asyncio.Future


def _resolve(waiters: list[asyncio.Future[None] | OnDurable], err: BaseException | None) -> None:
    for w in waiters:
        if isinstance(w, _Future):
            if not w.done():
                if err is None:
                    w.set_result(None)
                else:
                    w.set_exception(err)
            continue
        try:
            w(err)
        except Exception:  # one caller's bug must not stop the others hearing of the batch
            log.exception("storage: an on_durable callback failed")


def _check_partition(partition: int) -> None:
    if type(partition) is not int or not 0 <= partition <= _MAX_PARTITION:
        raise ValueError(f"partition must be an int in 0..2**32-1, got {partition!r}")
