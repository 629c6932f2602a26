"""Merkle trees per partition, maintained incrementally, and the diff between two of them.

Shape: a fixed ``fanout`` and ``depth`` (default 32 and 2, so 1024 leaf buckets). Level 0
is the root, level ``d`` has ``fanout**d`` nodes, level ``depth`` holds the leaves. A key
lives in bucket ``xxh3_64(key) % leaves`` (the low bits: within one partition the top bits
are all the same). A leaf's hash is the sum mod 2^64 of ``h(key, digest)`` over its keys,
so a write changes one leaf in O(1) — subtract the old term, add the new — and marks its
parent dirty; inner nodes are rehashed lazily, only where dirty, when someone asks.

Exchange between two replicas of a partition (all decisions here, all I/O elsewhere)::

    level, ask = 0, [0]
    while ask:
        theirs = peer.level_hashes(level, ask)             # one round trip per level
        ask = mine.differing_children(level, ask, theirs)  # children of what differs
        if level == mine.depth:
            break                                          # ask = differing buckets
        level += 1

then each side lists its ``(key, digest)`` pairs in those buckets and :func:`diff_entries`
says which keys to exchange. :func:`diff` runs the same protocol between two local trees.

Keys are not kept in the tree. A per-bucket key set would cost some 60–100 bytes per key
(~100 MB per million keys) to duplicate what the store already indexes; instead the caller
filters the partition's keys with :meth:`MerkleTree.bucket_of` (:func:`keys_in_buckets`),
one hash per key, and only for a partition whose trees actually differ.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final, cast

import xxhash

from kvstore.errors import ConfigError, InvalidRequest

__all__ = [
    "DEFAULT_DEPTH",
    "DEFAULT_FANOUT",
    "MerkleTree",
    "diff",
    "diff_entries",
    "item_hash",
    "keys_in_buckets",
]

DEFAULT_FANOUT: Final = 32
DEFAULT_DEPTH: Final = 2
MAX_LEAVES: Final = 1 << 20

_hash64: Final = xxhash.xxh3_64_intdigest
_MASK64: Final = (1 << 64) - 1
# Inner hashes are taken over little-endian bytes on every machine so that peers agree.
_BIG_ENDIAN: Final = sys.byteorder == "big"

_MAGIC: Final = b"KVMT"
_LAYOUT: Final = 1
_HEADER: Final = struct.Struct("<4sBHBQ")  # magic, layout, fanout, depth, checksum of the leaves


def item_hash(key: bytes, digest: int) -> int:
    """The leaf term of one key at one version (``digest`` is vclock.digest, 64-bit)."""
    return _hash64(key, seed=digest)


class MerkleTree:
    """The hash tree of one partition's ``(key, digest)`` pairs."""

    __slots__ = ("_dirty", "_levels", "depth", "fanout", "leaves")

    def __init__(self, fanout: int = DEFAULT_FANOUT, depth: int = DEFAULT_DEPTH) -> None:
        if isinstance(fanout, bool) or not isinstance(fanout, int) or fanout < 2:
            raise ConfigError(f"merkle fanout must be an integer >= 2, got {fanout!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"merkle depth must be an integer >= 1, got {depth!r}")
        if fanout**depth > MAX_LEAVES:
            raise ConfigError(f"merkle tree of {fanout}**{depth} leaves exceeds {MAX_LEAVES}")
        self.fanout = fanout
        self.depth = depth
        self.leaves: int = fanout**depth
        self._levels: list[array[int]] = [
            array("Q", bytes(8 * fanout**d)) for d in range(depth + 1)
        ]
        # Level depth-1 nodes whose children changed since they were last hashed.
        self._dirty: set[int] = set()

    # ------------------------------------------------------------------ building

    @classmethod
    def from_items(
        cls,
        items: Iterable[tuple[bytes, int]],
        fanout: int = DEFAULT_FANOUT,
        depth: int = DEFAULT_DEPTH,
    ) -> MerkleTree:
        """A tree built from scratch (on start, from the store's contents)."""
        t = cls(fanout, depth)
        for key, dg in items:
            t.update(key, None, dg)
        return t

    def bucket_of(self, key: bytes) -> int:
        """The leaf bucket holding ``key``."""
        return _hash64(key) % self.leaves

    def update(self, key: bytes, old_digest: int | None, new_digest: int | None) -> None:
        """Record that ``key`` went from ``old_digest`` to ``new_digest`` (None = absent).

        O(1). The caller must pass the digest the tree last saw for this key as
        ``old_digest``; a wrong one leaves a stale term that no later update removes.
        """
        if old_digest == new_digest:
            return
        b = _hash64(key) % self.leaves
        leaves = self._levels[-1]
        v = leaves[b]
        # Positional seeds: xxhash's keyword parsing costs as much as the hash of a short key.
        if old_digest is not None:
            v -= _hash64(key, old_digest)
        if new_digest is not None:
            v += _hash64(key, new_digest)
        leaves[b] = v & _MASK64
        self._dirty.add(b // self.fanout)

    # ------------------------------------------------------------------ hashes

    def _refresh(self) -> None:
        dirty = self._dirty
        if not dirty:
            return
        f = self.fanout
        for level in range(self.depth - 1, -1, -1):
            below, here = self._levels[level + 1], self._levels[level]
            for i in dirty:
                here[i] = _node_hash(below, i * f, f)
            dirty = {i // f for i in dirty}
        self._dirty = set()

    def root(self) -> int:
        """Hash of the whole tree; 0 for an empty one."""
        self._refresh()
        return self._levels[0][0]

    # Peer input arrives here as it was decoded: the parameters are ``object`` so that a bool
    # or a str is refused by the checks below, compiled (mypyc) or not.
    def level_hashes(self, level: object, indices: Iterable[object]) -> list[int]:
        """Hashes of the nodes ``indices`` at ``level`` (0 = root, depth = leaves)."""
        lv = self._check_level(level)
        self._refresh()
        row = self._levels[lv]
        out = []
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(row):
                raise InvalidRequest(f"merkle: no node {i!r} at level {level}")
            out.append(row[i])
        return out

    def children(self, level: int, index: int) -> range:
        """Indices at ``level + 1`` of the children of node ``index`` at ``level``."""
        if self._check_level(level) == self.depth:
            return range(0)
        return range(index * self.fanout, (index + 1) * self.fanout)

    def differing_children(
        self, level: object, indices: Sequence[object], theirs: Sequence[object]
    ) -> list[int]:
        """Given the peer's hashes of ``indices`` at ``level``, what to compare next.

        Above the leaves: the children (at ``level + 1``) of every node that differs.
        At the leaves: the differing buckets themselves.
        """
        if len(indices) != len(theirs):
            raise InvalidRequest(
                f"merkle: {len(theirs)} hashes for {len(indices)} nodes at level {level}"
            )
        mine = self.level_hashes(level, indices)
        # level_hashes has checked every index.
        differ = [cast(int, i) for i, a, b in zip(indices, mine, theirs, strict=True) if a != b]
        if level == self.depth:
            return differ
        f = self.fanout
        return [c for i in differ for c in range(i * f, (i + 1) * f)]

    def _check_level(self, level: object) -> int:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= self.depth:
            raise InvalidRequest(f"merkle: level {level!r} outside 0..{self.depth}")
        return level

    # ------------------------------------------------------------------ identity

    def same_shape(self, other: MerkleTree) -> bool:
        return self.fanout == other.fanout and self.depth == other.depth

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MerkleTree):
            return NotImplemented
        return self.same_shape(other) and self._levels[-1] == other._levels[-1]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MerkleTree(fanout={self.fanout}, depth={self.depth}, root={self.root():#x})"

    # ------------------------------------------------------------------ snapshots

    def to_bytes(self) -> bytes:
        """Leaves only (inner nodes are recomputed on load), with a checksum."""
        leaves = _le_bytes(self._levels[-1])
        return _HEADER.pack(_MAGIC, _LAYOUT, self.fanout, self.depth, _hash64(leaves)) + leaves

    @classmethod
    def from_bytes(cls, data: bytes) -> MerkleTree:
        """Inverse of :meth:`to_bytes`; InvalidRequest unless the bytes are an intact snapshot."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidRequest("malformed merkle snapshot: expected bytes")
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise InvalidRequest("malformed merkle snapshot: truncated header")
        magic, layout, fanout, depth, checksum = _HEADER.unpack_from(data)
        if magic != _MAGIC or layout != _LAYOUT:
            raise InvalidRequest("malformed merkle snapshot: bad magic or layout")
        try:
            t = cls(fanout, depth)
        except ConfigError as e:
            raise InvalidRequest(f"malformed merkle snapshot: {e}") from None
        body = data[_HEADER.size :]
        if len(body) != 8 * t.leaves:
            raise InvalidRequest("malformed merkle snapshot: wrong length")
        if _hash64(body) != checksum:
            raise InvalidRequest("malformed merkle snapshot: checksum mismatch")
        leaves = array("Q", body)
        if _BIG_ENDIAN:
            leaves.byteswap()
        t._levels[-1] = leaves
        t._dirty = set(range(t.leaves // t.fanout))
        return t


def _le_bytes(a: array[int]) -> bytes:
    if _BIG_ENDIAN:
        a = array("Q", a)
        a.byteswap()
    return a.tobytes()


def _node_hash(row: array[int], start: int, n: int) -> int:
    chunk = row[start : start + n]
    if not any(chunk):
        return 0  # empty subtrees hash to 0, so an empty tree's root is 0
    if _BIG_ENDIAN:
        chunk.byteswap()
    return _hash64(chunk)


def diff(a: MerkleTree, b: MerkleTree) -> list[int]:
    """Buckets where ``a`` and ``b`` differ, found the way two replicas would find them."""
    if not a.same_shape(b):
        raise InvalidRequest("merkle: trees of different shapes cannot be compared")
    level, ask = 0, [0]
    while ask:
        ask = a.differing_children(level, ask, b.level_hashes(level, ask))
        if level == a.depth:
            break
        level += 1
    return ask


def keys_in_buckets(
    tree: MerkleTree, keys: Iterable[bytes], buckets: Iterable[int]
) -> Iterator[bytes]:
    """The ``keys`` that fall in ``buckets`` (the leaf stage of an exchange)."""
    wanted = set(buckets)
    n = tree.leaves
    return (k for k in keys if _hash64(k) % n in wanted)


def diff_entries(ours: Mapping[bytes, int], theirs: Mapping[bytes, int]) -> list[bytes]:
    """Keys whose digests differ, or that one side lacks, sorted.

    Both maps are the ``(key -> digest)`` pairs of the differing buckets on each side.
    """
    out = {k for k, d in ours.items() if theirs.get(k) != d}
    out.update(k for k in theirs if k not in ours)
    return sorted(out)
