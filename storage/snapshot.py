"""Shared-memory snapshot of one node's table: written on a graceful stop, trusted on start
only if everything about it checks out.

File: ``<dir>/kvstore-<node id, sanitized>-<xxh32 of node id>.snap`` (dir defaults to /dev/shm).

    offset 0     header, 4096 bytes
                   0  magic b"KVSNAP\\r\\n"      8  layout version (u32)   12  valid (u8)
                  16  LevelDB position (u64)  24  payload length (u64)  32  payload checksum
                  40  keys (u64)              48  key+record bytes (u64) 56  node id length (u16)
                  64  node id (UTF-8, up to 448 bytes, zero padded)
                 512  xxh3_64 of bytes 0..511 with the valid byte read as 0
    offset 4096  payload: chunks, each a 24-byte head (kind u8, 3 pad, partition u32, body
                 length u64, body xxh3_64) then a msgpack body: kind 1 = a map key -> record
                 of one partition (big partitions span several chunks), kind 2 = the ``extra``
                 map str -> bytes

All integers little-endian. The payload checksum is the xxh3_64 of the chunk heads in order;
as each head carries its body's xxh3_64, it covers every payload byte while hashing each
byte once (loading is bound by building objects, so a second pass would show). The writer puts the header down with valid = 0, streams the
payload one chunk at a time (memory never doubles), rewrites the header with the payload's
length and checksum, fsyncs, and only then sets valid = 1 in place: a SIGKILL anywhere
before that last byte leaves a file the loader rejects. Each chunk is checked against its own
checksum before it is decoded, and the whole payload against the header's.

The loader refuses (``SnapshotRejected`` with a one-line reason) a missing file, a file not
owned by this user, a bad magic, another layout, a bad header checksum, an unset valid bit,
another node's id, a position other than LevelDB's, a size other than the header says, and
a bad chunk or payload checksum. ``Engine.open(..., snapshot_dir=, node_id=)`` then loads
from LevelDB instead and says why in ``load_stats.reason``.
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import os
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Final, Protocol

import msgpack
import xxhash

from storage.errors import StorageError

__all__ = [
    "LAYOUT_VERSION",
    "Restored",
    "SnapshotInfo",
    "SnapshotRejected",
    "SnapshotSource",
    "invalidate_snapshot",
    "load_snapshot",
    "restore",
    "snapshot_path",
    "write_snapshot",
]

MAGIC: Final = b"KVSNAP\r\n"
LAYOUT_VERSION: Final = 1
HEADER_SIZE: Final = 4096
_FIELDS = struct.Struct("<8sIB3xQQQQQH6x")  # 64 bytes
_NODE_ID_OFFSET: Final = _FIELDS.size
_NODE_ID_MAX: Final = 448
_CHECKED: Final = _NODE_ID_OFFSET + _NODE_ID_MAX  # 512: bytes the header checksum covers
_CHECKSUM = struct.Struct("<Q")
_VALID_OFFSET: Final = 12
_CHUNK = struct.Struct("<B3xIQQ")  # kind, partition, body length, body xxh3_64
_KIND_TABLE: Final = 1
_KIND_EXTRA: Final = 2
_CHUNK_KEYS: Final = 65536  # bounds one chunk's encoded size (and the writer's extra memory)
_WRITE_BUFFER: Final = 1 << 20


class SnapshotRejected(StorageError):
    """The snapshot cannot be trusted; ``reason`` says why in one line."""

    def __init__(self, reason: str, *, path: str | None = None, ours: bool = True) -> None:
        super().__init__(f"snapshot rejected: {reason}", path=path)
        self.reason = reason
        self.ours = ours  # False: not a file of ours to invalidate (missing, someone else's)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    path: str
    node_id: str
    position: int
    keys: int
    bytes: int  # keys + records, as in Engine.stats()
    file_bytes: int
    checksum: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Restored:
    """What ``restore`` found: a table (None when it fell back) and the reason, in one line."""

    table: dict[int, dict[bytes, bytes]] | None
    extra: dict[str, bytes]
    reason: str
    keys: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class _Header:
    layout: int
    valid: bool
    position: int
    payload_len: int
    payload_checksum: int
    keys: int
    data_bytes: int
    node_id: str


def snapshot_path(directory: str, node_id: str) -> str:
    """Where ``node_id``'s snapshot lives in ``directory``; a hash keeps sanitized names apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", node_id)[:64]
    digest = xxhash.xxh32_hexdigest(node_id.encode())
    return os.path.join(directory, f"kvstore-{safe}-{digest}.snap")


# ------------------------------------------------------------------ write


class SnapshotSource(Protocol):
    """What a snapshot is written from (the Engine is one). Named here rather than imported,
    because the engine imports this module to restore from it."""

    @property
    def position(self) -> int: ...

    def flush_sync(self) -> None: ...

    def table(self) -> dict[int, dict[bytes, bytes]]: ...


def write_snapshot(
    engine: SnapshotSource, node_id: str, directory: str, extra: dict[str, bytes] | None = None
) -> SnapshotInfo:
    """Write ``engine``'s whole table (and ``extra``) as ``node_id``'s snapshot in ``directory``.

    Flushes and fsyncs the engine first, so the position in the header is the one LevelDB
    holds. Blocks; meant for a graceful stop, after the node stopped taking writes.
    """
    t0 = time.perf_counter()
    extra = dict(extra or {})
    for k, v in extra.items():
        if type(k) is not str or type(v) is not bytes:
            raise TypeError("extra must map str to bytes")
    node = node_id.encode()
    if not node or len(node) > _NODE_ID_MAX:
        raise ValueError(f"node id must be 1..{_NODE_ID_MAX} UTF-8 bytes, got {len(node)}")
    engine.flush_sync()
    position = engine.position
    table = engine.table()
    path = snapshot_path(directory, node_id)
    try:
        os.makedirs(directory, exist_ok=True)
        fd = _create(path)
    except OSError as e:
        raise StorageError(f"snapshot: cannot create {path}: {e}", path=path) from e
    try:
        with os.fdopen(fd, "wb", buffering=_WRITE_BUFFER) as f:
            f.write(bytes(HEADER_SIZE))  # all zero: valid = 0 until the very end
            hasher = xxhash.xxh3_64()
            keys = data_bytes = 0
            payload_len = 0
            for partition in sorted(table):
                d = table[partition]
                keys += len(d)
                data_bytes += sum(map(len, d)) + sum(map(len, d.values()))
                for body in _encode_partition(d):
                    payload_len += _write_chunk(f, hasher, _KIND_TABLE, partition, body)
            if extra:
                body = msgpack.packb(extra, use_bin_type=True)
                payload_len += _write_chunk(f, hasher, _KIND_EXTRA, 0, body)
            f.flush()
            header = _Header(
                LAYOUT_VERSION, False, position, payload_len, hasher.intdigest(), keys,
                data_bytes, node_id,
            )  # fmt: skip
            os.pwrite(f.fileno(), _pack_header(header), 0)
            os.fsync(f.fileno())  # payload and header before the valid bit, even on a disk
            os.pwrite(f.fileno(), b"\x01", _VALID_OFFSET)
            os.fsync(f.fileno())
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise StorageError(f"snapshot: cannot write {path}: {e}", path=path) from e
    return SnapshotInfo(
        path=path,
        node_id=node_id,
        position=position,
        keys=keys,
        bytes=data_bytes,
        file_bytes=HEADER_SIZE + payload_len,
        checksum=header.payload_checksum,
        seconds=time.perf_counter() - t0,
    )


def _create(path: str) -> int:
    """A fresh file of our own: never write through a link someone planted at that name."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)


def _encode_partition(d: dict[bytes, bytes]) -> Iterator[bytes]:
    if len(d) <= _CHUNK_KEYS:
        yield msgpack.packb(d, use_bin_type=True)
        return
    items = iter(d.items())
    while chunk := dict(itertools.islice(items, _CHUNK_KEYS)):
        yield msgpack.packb(chunk, use_bin_type=True)


def _write_chunk(f: BinaryIO, hasher: Any, kind: int, partition: int, body: bytes) -> int:
    head = _CHUNK.pack(kind, partition, len(body), xxhash.xxh3_64_intdigest(body))
    hasher.update(head)
    f.write(head)
    f.write(body)
    return len(head) + len(body)


def _pack_header(h: _Header) -> bytes:
    node = h.node_id.encode()
    fields = _FIELDS.pack(
        MAGIC, h.layout, 0, h.position, h.payload_len, h.payload_checksum, h.keys,
        h.data_bytes, len(node),
    )  # fmt: skip
    checked = fields + node.ljust(_NODE_ID_MAX, b"\0")
    out = checked + _CHECKSUM.pack(xxhash.xxh3_64_intdigest(checked))
    return out.ljust(HEADER_SIZE, b"\0")


# ------------------------------------------------------------------ load


def load_snapshot(
    path_or_dir: str, node_id: str, engine_position: int
) -> tuple[dict[int, dict[bytes, bytes]], dict[str, bytes]]:
    """(table, extra) from ``node_id``'s snapshot if it reflects ``engine_position``.

    Raises SnapshotRejected(reason) otherwise. Leaves the file in place: see ``restore``.
    """
    table, extra, _ = _load(_resolve(path_or_dir, node_id), node_id, engine_position)
    return table, extra


def restore(directory: str, node_id: str, engine_position: int) -> Restored:
    """Load and then invalidate ``node_id``'s snapshot; on any doubt fall back, saying why.

    A rejected snapshot at this node's path is removed too: it can never become valid, and
    in /dev/shm it holds memory.
    """
    path = snapshot_path(directory, node_id)
    try:
        table, extra, header = _load(path, node_id, engine_position)
    except SnapshotRejected as e:
        if e.ours:
            invalidate_snapshot(path)
        return Restored(None, {}, f"snapshot rejected: {e.reason}; rebuilt from LevelDB")
    invalidate_snapshot(path)
    return Restored(
        table,
        extra,
        f"snapshot {path} matched node {node_id!r} at position {engine_position}",
        header.keys,
        header.data_bytes,
    )


def invalidate_snapshot(path: str) -> None:
    """Clear the valid bit, then remove the file; a crash between leaves an untrusted file."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            if os.fstat(fd).st_size > _VALID_OFFSET:
                os.pwrite(fd, b"\x00", _VALID_OFFSET)
        finally:
            os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)


def _resolve(path_or_dir: str, node_id: str) -> str:
    return snapshot_path(path_or_dir, node_id) if os.path.isdir(path_or_dir) else path_or_dir


def _load(
    path: str, node_id: str, engine_position: int
) -> tuple[dict[int, dict[bytes, bytes]], dict[str, bytes], _Header]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise SnapshotRejected(f"no snapshot at {path}", path=path, ours=False) from None
    except OSError as e:
        raise SnapshotRejected(f"cannot open {path}: {e}", path=path, ours=False) from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise SnapshotRejected(
                f"{path} is owned by uid {st.st_uid}, not us", path=path, ours=False
            )
        h = _check_header(path, f.read(HEADER_SIZE), node_id, engine_position)
        if st.st_size != HEADER_SIZE + h.payload_len:
            raise SnapshotRejected(
                f"truncated or overlong: {st.st_size} bytes, header says "
                f"{HEADER_SIZE + h.payload_len}",
                path=path,
            )
        table, extra = _read_payload(path, f, h)
    return table, extra, h


def _check_header(path: str, raw: bytes, node_id: str, engine_position: int) -> _Header:
    def reject(reason: str) -> SnapshotRejected:
        return SnapshotRejected(reason, path=path)

    if len(raw) < HEADER_SIZE:
        raise reject(f"truncated header ({len(raw)} of {HEADER_SIZE} bytes)")
    magic, layout, valid, position, plen, pcheck, keys, nbytes, nlen = _FIELDS.unpack_from(raw)
    if magic != MAGIC:
        raise reject("not a kvstore snapshot (bad magic)")
    if layout != LAYOUT_VERSION:
        raise reject(f"layout version {layout}, this code reads {LAYOUT_VERSION}")
    checked = bytearray(raw[:_CHECKED])
    checked[_VALID_OFFSET] = 0
    (want,) = _CHECKSUM.unpack_from(raw, _CHECKED)
    if xxhash.xxh3_64_intdigest(bytes(checked)) != want or nlen > _NODE_ID_MAX:
        raise reject("header checksum mismatch")
    if valid != 1:
        raise reject("valid bit unset (the writer did not finish)")
    snap_node = raw[_NODE_ID_OFFSET : _NODE_ID_OFFSET + nlen].decode("utf-8", "replace")
    if snap_node != node_id:
        raise reject(f"written by node {snap_node!r}, this is {node_id!r}")
    if position != engine_position:
        raise reject(f"reflects LevelDB position {position}, LevelDB is at {engine_position}")
    return _Header(layout, True, position, plen, pcheck, keys, nbytes, snap_node)


def _read_payload(
    path: str, f: io.FileIO, h: _Header
) -> tuple[dict[int, dict[bytes, bytes]], dict[str, bytes]]:
    """Chunk by chunk: check each chunk's checksum, then decode it; whole-payload sum at the end.

    The cyclic GC is paused: a million fresh objects would trigger it for nothing.
    """
    read = f.readinto
    hasher = xxhash.xxh3_64()
    head = bytearray(_CHUNK.size)
    buf = bytearray(1 << 20)
    table: dict[int, dict[bytes, bytes]] = {}
    extra: dict[str, bytes] = {}
    left = h.payload_len
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while left:
            if left < _CHUNK.size or read(head) != _CHUNK.size:
                raise SnapshotRejected("truncated chunk header", path=path)
            kind, partition, n, check = _CHUNK.unpack(head)
            left -= _CHUNK.size + n
            if left < 0:
                raise SnapshotRejected("chunk runs past the payload", path=path)
            if n > len(buf):
                buf = bytearray(n)
            view = memoryview(buf)[:n]
            if read(view) != n:
                raise SnapshotRejected("truncated chunk", path=path)
            if xxhash.xxh3_64_intdigest(view) != check:
                raise SnapshotRejected(
                    f"chunk checksum mismatch (partition {partition})", path=path
                )
            hasher.update(head)
            try:
                body = msgpack.unpackb(view, use_list=False)
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
                raise SnapshotRejected(f"undecodable chunk: {e}", path=path) from None
            if not isinstance(body, dict):
                raise SnapshotRejected("chunk is not a map", path=path)
            if kind == _KIND_TABLE:
                d = table.get(partition)
                if d is None:
                    table[partition] = body
                else:
                    d.update(body)
            elif kind == _KIND_EXTRA:
                extra.update(body)
            else:
                raise SnapshotRejected(f"unknown chunk kind {kind}", path=path)
    finally:
        if gc_was_enabled:
            gc.enable()
    if hasher.intdigest() != h.payload_checksum:
        raise SnapshotRejected("payload checksum mismatch", path=path)
    if sum(map(len, table.values())) != h.keys:
        raise SnapshotRejected("key count differs from the header", path=path)
    return table, extra
