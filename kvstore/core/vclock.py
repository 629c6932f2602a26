"""Dotted version vectors: the causal history of one key, with per-sibling dots.

The state of a key on a replica is an :class:`Obj`, a *dotted causal container*
(Preguiça et al., "Dotted Version Vectors"; Riak's DVV sets):

* ``siblings`` — the concurrent values still live, each tagged with the unique event
  (a :class:`Dot`, ``(node, counter)``) that wrote it; a ``None`` value is a tombstone;
* ``vv`` — a version vector ``node -> counter`` covering every dot this replica has seen,
  including ones it has since discarded as overwritten.

A dot ``(n, c)`` is *covered* by a vector ``v`` when ``c <= v[n]``. A client's context is
the ``vv`` of what it read; a write with that context replaces exactly the siblings the
context covers, so two writers with the same context produce two siblings (not a
cascade of them), and a read-modify-write replaces everything the read saw.

Entries are per coordinating node, never per client, so a clock has at most one entry per
node that ever coordinated a write of the key. Dots are minted by :func:`update` as
``max(local vv[node], context[node]) + 1``; that is unique only if the coordinator stores
the result locally before anyone else sees it (its own entry is then the largest it ever
issued). A node that lost its data must not coordinate under its old name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, final, overload

import msgpack
import msgspec
import xxhash

from kvstore.errors import DotConflict, InvalidRequest

__all__ = [
    "VV",
    "Dot",
    "Obj",
    "Sibling",
    "concurrent",
    "context_bytes",
    "context_of",
    "decode",
    "decode_context",
    "descends",
    "digest",
    "dominates",
    "encode",
    "encode_context",
    "is_deleted",
    "is_stale",
    "lww",
    "record_digest",
    "sibling_count",
    "sync",
    "sync_all",
    "update",
    "values",
    "values_at",
    "with_expiry",
]

VV = dict[str, int]
"""A version vector: node -> highest counter seen. Treated as immutable once built."""

_FORMAT: Final = 1
# Bounds that keep a forged or corrupt clock from hurting the store: a client's counters
# stay far below msgpack's uint64 ceiling (writes add 1 at a time, so a stored counter can
# never climb from MAX_CONTEXT_COUNTER to MAX_COUNTER), names stay short, and a context
# cannot smuggle in thousands of entries that every later write would carry.
MAX_CONTEXT_COUNTER: Final = 2**62
MAX_COUNTER: Final = 2**63
MAX_NODE_NAME_CHARS: Final = 255
MAX_CONTEXT_ENTRIES: Final = 1024
# The largest int a compiled (mypyc) module holds unboxed: both bounds above are past it, so
# ``c < MAX_COUNTER`` goes through Python's generic comparison (~150 instructions) even for
# a small ``c``. The checks compare with this first and fall back only for a larger ``c``.
_SHORT_MAX: Final = 2**62 - 1

_hash64: Final = xxhash.xxh3_64_intdigest
# Dot and Sibling are plain slotted classes, not NamedTuples: compiled (mypyc) they are native
# classes, built by one direct call with their fields read straight from the struct, where a
# NamedTuple went through ``tuple.__new__``'s argument parsing and two tuples per object
# (decoding a five-sibling record: 3.2 us with NamedTuples, 2.1 us native; a merge-free
# write's update 1.3 -> 0.9 us). They keep what the store relied on from tuples: equality
# and hashing by value, and ordering by dot.


@final
class Dot:
    """One write event: the ``counter``-th write coordinated by ``node`` for this key.

    Immutable by convention, compared and hashed by value, ordered by ``(node, counter)``."""

    __slots__ = ("counter", "node")

    def __init__(self, node: str, counter: int) -> None:
        self.node = node
        self.counter = counter

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dot):
            return NotImplemented
        return self.counter == other.counter and self.node == other.node

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Dot):
            return NotImplemented
        return self.counter != other.counter or self.node != other.node

    def __hash__(self) -> int:
        return hash((self.node, self.counter))

    def __lt__(self, other: Dot) -> bool:
        return self.node < other.node or (self.node == other.node and self.counter < other.counter)

    def __le__(self, other: Dot) -> bool:
        return self.node < other.node or (self.node == other.node and self.counter <= other.counter)

    def __gt__(self, other: Dot) -> bool:
        return other < self

    def __ge__(self, other: Dot) -> bool:
        return other <= self

    def __repr__(self) -> str:
        return f"Dot(node={self.node!r}, counter={self.counter!r})"


@final
class Sibling:
    """A live value (or tombstone, ``value is None``) and the write that produced it.

    ``ts`` is the coordinator's wall clock in ms; only last-write-wins mode looks at it.
    ``expires`` (wall clock ms, 0: never) is when the value expires (TTL): minted with the
    dot, so two copies of one dot always agree on it; reads leave an expired value out.

    Immutable by convention, compared and hashed by value, ordered as the tuple
    ``(dot, value, ts, expires)`` would be (by dot: a version never holds one dot twice).
    """

    __slots__ = ("dot", "expires", "ts", "value")

    def __init__(self, dot: Dot, value: bytes | None, ts: int, expires: int = 0) -> None:
        self.dot = dot
        self.value = value
        self.ts = ts
        self.expires = expires

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sibling):
            return NotImplemented
        return self.dot == other.dot and self.value == other.value and self.ts == other.ts and self.expires == other.expires

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Sibling):
            return NotImplemented
        return not (self == other)

    def __hash__(self) -> int:
        return hash((self.dot, self.value, self.ts, self.expires))

    def _rest(self) -> tuple[Any, ...]:
        return (self.value, self.ts, self.expires)

    def __lt__(self, other: Sibling) -> bool:
        if self.dot == other.dot:
            return bool(self._rest() < other._rest())
        return self.dot < other.dot

    def __le__(self, other: Sibling) -> bool:
        return self == other or self < other

    def __gt__(self, other: Sibling) -> bool:
        return other < self

    def __ge__(self, other: Sibling) -> bool:
        return other <= self

    def _replace(self, *, expires: int) -> Sibling:
        """This sibling with another expiry (the one field a version ever replaces)."""
        return Sibling(self.dot, self.value, self.ts, expires)

    def __repr__(self) -> str:
        return f"Sibling(dot={self.dot!r}, value={self.value!r}, ts={self.ts!r}, expires={self.expires!r})"


@final
class Obj:
    """A key's versioned state: siblings sorted by dot, and the vector covering them all.

    Immutable by convention (nothing assigns to a built one). A plain slotted class rather
    than a frozen dataclass: every read, write and merge builds a few, and a frozen
    dataclass's init (``object.__setattr__`` per field) costs several times as much.

    A version :func:`decode` read keeps its record's checked fields (``_nodes``, ``_flat``:
    what :func:`encode` writes, in its order) and bytes (``_rec``), and builds its
    :class:`Sibling` objects only when ``siblings`` is first asked for. A get answered from
    replicas in sync, a replica storing a write that descends its copy and the hooks after
    it read values, tombstones and dots straight from the checked fields: building the
    siblings of a five-sibling record was two thirds of its decode."""

    __slots__ = ("_flat", "_nodes", "_rec", "_sibs", "vv")

    def __init__(self, siblings: tuple[Sibling, ...], vv: VV) -> None:
        self._sibs: tuple[Sibling, ...] | None = siblings
        self.vv = vv
        self._nodes: list[str] | None = None
        self._flat: list[Any] | None = None
        self._rec: bytes | None = None

    @property
    def siblings(self) -> tuple[Sibling, ...]:
        sibs = self._sibs
        if sibs is None:
            nodes, flat = self._nodes, self._flat
            assert nodes is not None and flat is not None
            sibs = self._sibs = tuple(_build_siblings(nodes, flat))
        return sibs

    def __eq__(self, other: object) -> bool:
        # isinstance, not a class check: it narrows ``other``, so compiled the fields are
        # read directly rather than by a generic attribute lookup (Obj has no subclasses).
        if not isinstance(other, Obj):
            return NotImplemented
        if self is other:
            return True
        if self._rec is not None and other._rec is not None:
            # Both read from records in encode's order: equal states, equal bytes.
            return self._rec == other._rec
        return self.siblings == other.siblings and self.vv == other.vv

    def __hash__(self) -> int:
        return hash((self.siblings, tuple(sorted(self.vv.items()))))

    def __repr__(self) -> str:
        return f"Obj(siblings={self.siblings!r}, vv={self.vv!r})"


def _build_siblings(nodes: list[str], flat: list[Any]) -> list[Sibling]:
    """The siblings of a record's checked fields, in the record's order."""
    return [Sibling(Dot(nodes[flat[i]], flat[i + 1]), flat[i + 3], flat[i + 2]) for i in range(0, len(flat), 4)]


def _read(vv: VV, nodes: list[str], flat: list[Any], rec: bytes | None) -> Obj:
    """A version :func:`decode` checked: ``flat`` in encode's order, no expiries."""
    obj = Obj((), vv)
    obj._sibs = None
    obj._nodes = nodes
    obj._flat = flat
    obj._rec = rec
    return obj


# ---------------------------------------------------------------------- operations


def update(
    obj: Obj | None, context: VV, value: bytes | None, node: str, ts: int, floor: int = 0
) -> Obj:
    """A write coordinated by ``node``: replace what ``context`` covers, add one sibling.

    The new dot's counter is above ``floor``, the highest counter ``node`` has minted for any
    key: a coordinator that no longer holds a key (its tombstone was collected) cannot know
    which counters it used for it, and a copy of the old tombstone that survived elsewhere
    would cover a counter restarted from the context and swallow the write (Riak's KV679).
    Counters of one actor are then unique across all keys, and the new version's vector
    covers only this actor's own earlier events, which all happened before it.
    """
    if obj is None or obj._flat is not None:
        return _update_read(obj, context, value, node, ts, floor)
    # A version with its siblings built (one merged, or with expiries).
    ovv = obj.vv
    counter = max(ovv.get(node, 0), context.get(node, 0), floor) + 1
    keep = [s for s in obj.siblings if s.dot.counter > context.get(s.dot.node, 0)]
    vv = dict(ovv)
    for n, c in context.items():
        if c > vv.get(n, 0):
            vv[n] = c
    vv[node] = counter
    _insert_sorted(keep, Sibling(Dot(node, counter), value, ts))
    return Obj(tuple(keep), vv)


def _update_read(obj: Obj | None, context: VV, value: bytes | None, node: str, ts: int, floor: int) -> Obj:
    """:func:`update` of a version read from a record (no expiries), or of none, done on
    the record's checked fields: the new version comes out as a record in encode's order
    and its bytes, without building a sibling (the coordinator of a put needs only the
    bytes and the vector)."""
    if obj is None:
        old_nodes: list[str] = []
        old_flat: list[Any] = []
        ovv: VV = {}
    else:
        assert obj._nodes is not None and obj._flat is not None
        old_nodes, old_flat, ovv = obj._nodes, obj._flat, obj.vv
    # Compared one by one, not with max(): compiled, the builtin is a module lookup and a
    # call through Python's protocol (~1.5k instructions of a ~6k update).
    counter = ovv.get(node, 0)
    seen = context.get(node, 0)
    if seen > counter:
        counter = seen
    if floor > counter:
        counter = floor
    counter += 1
    vv = dict(ovv)
    for n, c in context.items():
        if c > vv.get(n, 0):
            vv[n] = c
    vv[node] = counter
    nodes = sorted(vv) if len(vv) > 1 else [node]
    new: list[Any] = [nodes.index(node), counter, ts, value]
    if old_flat:
        index = {n: i for i, n in enumerate(nodes)}
        flat: list[Any] = []
        placed = False
        for i in range(0, len(old_flat), 4):
            name: str = old_nodes[old_flat[i]]
            c = old_flat[i + 1]
            if c <= context.get(name, 0):
                continue  # the context covers it: replaced by the new value
            # Dots ascend; the new one is above every dot of its node (its counter is above
            # the vector's), so it goes before the first dot of a node that sorts after its own.
            if not placed and name > node:
                flat.extend(new)
                placed = True
            flat.append(index[name])
            flat.append(c)
            flat.append(old_flat[i + 2])
            flat.append(old_flat[i + 3])
        if not placed:
            flat.extend(new)
    else:
        flat = new
    return _read(vv, nodes, flat, _pack_stored([_FORMAT, nodes, [vv[n] for n in nodes], flat]))


def sibling_count(obj: Obj) -> int:
    """``len(obj.siblings)``, without building them for a version read from a record."""
    flat = obj._flat
    if flat is not None:
        return len(flat) // 4
    return len(obj.siblings)


def _ascending(sibs: list[Sibling] | tuple[Sibling, ...]) -> bool:
    """Whether the dots of ``sibs`` strictly ascend (sorted, no dot twice): what every
    version built here holds. Compared field by field: ``sorted`` compares siblings through
    their ``__lt__``, two Python-level calls per pair (a five-sibling encode: ~40% of it)."""
    prev_node = ""
    prev_counter = 0
    for s in sibs:
        d = s.dot
        node = d.node
        if node < prev_node or (node == prev_node and d.counter <= prev_counter):
            return False
        prev_node = node
        prev_counter = d.counter
    return True


def _insert_sorted(sibs: list[Sibling], new: Sibling) -> None:
    """Put ``new`` where sorting would: one pass from the end when ``sibs`` ascends (a new
    dot's counter is above all of its node's, so it goes after them), else a sort."""
    if not _ascending(sibs):
        sibs.append(new)
        sibs.sort()
        return
    node, counter = new.dot.node, new.dot.counter
    i = len(sibs)
    while i:
        d = sibs[i - 1].dot
        if d.node < node or (d.node == node and d.counter < counter):
            break
        if d.node == node and d.counter == counter:
            # The same dot twice (a state no merge lets through): leave the order to sort.
            sibs.append(new)
            sibs.sort()
            return
        i -= 1
    sibs.insert(i, new)


@overload
def sync(a: Obj, b: Obj | None) -> Obj: ...
@overload
def sync(a: Obj | None, b: Obj) -> Obj: ...
@overload
def sync(a: None, b: None) -> None: ...
@overload
def sync(a: Obj | None, b: Obj | None) -> Obj | None: ...
def sync(a: Obj | None, b: Obj | None) -> Obj | None:
    """Merge two replicas' states: keep every sibling the other side has not overwritten.

    Commutative, associative and idempotent, so replicas converge whatever the order.
    Raises :class:`~kvstore.errors.DotConflict` when both carry one dot with different
    contents: that can only follow a dot minted twice, and neither side may be dropped.
    """
    if a is None:
        return b
    if b is None or a is b or a == b:
        return a
    if _descends(b, a):
        return b
    return _sync_general(a, b)


def _sync_general(a: Obj, b: Obj) -> Obj:
    """:func:`sync` of two states without its shortcuts."""
    avv, bvv = a.vv, b.vv
    bdots = {s.dot: s for s in b.siblings}
    out: dict[Dot, Sibling] = {}
    for s in a.siblings:
        other = bdots.get(s.dot)
        if other is not None:
            out[s.dot] = s if s == other else _pick(s, other)
        elif s.dot.counter > bvv.get(s.dot.node, 0):
            out[s.dot] = s
    for s in b.siblings:
        if s.dot not in out and s.dot.counter > avv.get(s.dot.node, 0):
            out[s.dot] = s
    vv = dict(avv)
    for n, c in bvv.items():
        if c > vv.get(n, 0):
            vv[n] = c
    return Obj(tuple(sorted(out.values())), vv)


def _descends(b: Obj, a: Obj) -> bool:
    """Whether ``sync(a, b)`` is ``b`` (the usual merge at a replica: a write that saw the
    local version), decided without building the merge. Raises DotConflict as sync does.

    With ``a.vv <= b.vv`` every sibling of ``a`` is covered by ``b``'s vector, so the merge
    keeps of ``a`` only what ``b`` carries too; it then keeps all of ``b`` unless ``b`` holds
    a dot that ``a`` saw and dropped (one ``a``'s vector covers and ``a`` lacks)."""
    avv, bvv = a.vv, b.vv
    for n, c in avv.items():
        if c > bvv.get(n, 0):
            return False
    if a._flat is not None and b._flat is not None:
        return _descends_read(b, a)
    asibs = a.siblings
    for s in b.siblings:
        d = s.dot
        if d.counter > avv.get(d.node, 0):
            continue  # new to a: kept
        for o in asibs:
            if o.dot == d:
                if o != s:
                    _pick(o, s)
                break
        else:
            return False  # a dropped it: the merge drops it too, and is not b
    return True


def _descends_read(b: Obj, a: Obj) -> bool:
    """:func:`_descends` after its vector check, for two versions read from records (no
    expiries): their dots, timestamps and values compared in the checked fields, without
    building siblings (a replica storing a write that saw its copy: the usual merge)."""
    anodes, aflat, bnodes, bflat = a._nodes, a._flat, b._nodes, b._flat
    assert anodes is not None and aflat is not None and bnodes is not None and bflat is not None
    avv = a.vv
    n_a = len(aflat)
    for i in range(0, len(bflat), 4):
        node: str = bnodes[bflat[i]]
        counter: int = bflat[i + 1]
        if counter > avv.get(node, 0):
            continue  # new to a: kept
        for j in range(0, n_a, 4):
            if aflat[j + 1] == counter and anodes[aflat[j]] == node:
                if aflat[j + 2] != bflat[i + 2] or aflat[j + 3] != bflat[i + 3]:
                    _pick(a.siblings[j // 4], b.siblings[i // 4])
                break
        else:
            return False  # a dropped it: the merge drops it too, and is not b
    return True


def _pick(x: Sibling, y: Sibling) -> Sibling:
    # Two different values under one dot means a dot was minted twice. Keeping either one
    # would silently drop an acknowledged write, so the merge refuses and says which dot.
    raise DotConflict(
        f"two different versions carry the dot {x.dot.node}:{x.dot.counter} "
        "(a dot was minted twice); refusing to pick one",
        node=x.dot.node,
        counter=x.dot.counter,
    )


def sync_all(objs: Iterable[Obj | None]) -> Obj | None:
    """:func:`sync` of any number of states (None for a replica without the key)."""
    merged: Obj | None = None
    for o in objs:
        merged = sync(merged, o)
    return merged


def context_of(obj: Obj | None) -> dict[str, int]:
    """The causal context a reader gets: everything this state has seen."""
    return {} if obj is None else dict(obj.vv)


def values(obj: Obj | None) -> list[bytes]:
    """Live sibling values in dot order (tombstones left out); [] when absent or deleted."""
    if obj is None:
        return []
    flat = obj._flat
    if flat is not None:
        return _read_values(flat)
    return [s.value for s in obj.siblings if s.value is not None]


def values_at(obj: Obj | None, now_ms: int) -> list[bytes]:
    """:func:`values` as of ``now_ms``: values expired by then are left out too."""
    if obj is None:
        return []
    flat = obj._flat
    if flat is not None:
        return _read_values(flat)  # a record without expiries
    return [s.value for s in obj.siblings if s.value is not None and not 0 < s.expires <= now_ms]


def _read_values(flat: list[Any]) -> list[bytes]:
    out: list[bytes] = []
    for i in range(3, len(flat), 4):
        v = flat[i]
        if v is not None:
            out.append(v)
    return out


def with_expiry(obj: Obj, dot: Dot, expires_ms: int) -> Obj:
    """``obj`` with the sibling of ``dot`` (a write just minted) expiring at ``expires_ms``."""
    return Obj(
        tuple(s._replace(expires=expires_ms) if s.dot == dot else s for s in obj.siblings), obj.vv
    )


def next_expiry(obj: Obj | None) -> int:
    """The earliest expiry among live values (0: none expires)."""
    if obj is None:
        return 0
    return min((s.expires for s in obj.siblings if s.expires and s.value is not None), default=0)


def is_deleted(obj: Obj | None) -> bool:
    """True when the key exists only as tombstones (absent, None, is not 'deleted')."""
    if obj is None:
        return False
    flat = obj._flat
    if flat is not None:
        for i in range(3, len(flat), 4):
            if flat[i] is not None:
                return False
        return len(flat) > 0
    sibs = obj.siblings
    if len(sibs) == 1:  # the usual case, without a generator
        return sibs[0].value is None
    return bool(sibs) and all(s.value is None for s in sibs)


@overload
def lww(obj: Obj) -> Obj: ...
@overload
def lww(obj: None) -> None: ...
def lww(obj: Obj | None) -> Obj | None:
    """Last-write-wins: keep only the sibling with the greatest ``(ts, dot)``.

    The dot breaks ties between equal timestamps the same way on every replica.
    """
    if obj is None or len(obj.siblings) <= 1:
        return obj
    best = max(obj.siblings, key=lambda s: (s.ts, s.dot))
    return Obj((best,), obj.vv)


def _vv_leq(x: VV, y: VV) -> bool:
    return all(c <= y.get(n, 0) for n, c in x.items())


def descends(a: Obj | None, b: Obj | None) -> bool:
    """``a`` has seen everything ``b`` has (its vector is pointwise >= b's)."""
    if b is None:
        return True
    if a is None:
        return not any(b.vv.values())
    return _vv_leq(b.vv, a.vv)


def dominates(a: Obj | None, b: Obj | None) -> bool:
    """``a`` descends ``b`` and has seen strictly more."""
    return descends(a, b) and not descends(b, a)


def concurrent(a: Obj | None, b: Obj | None) -> bool:
    """Neither has seen all of the other: a merge will keep siblings from both."""
    return not descends(a, b) and not descends(b, a)


def is_stale(replica: Obj | None, merged: Obj | None) -> bool:
    """``merged`` has something ``replica`` lacks, so read repair should send it there."""
    if merged is None:
        return False
    if replica is None:
        return True
    if replica is merged:
        return False
    return sync(replica, merged) != replica


def digest(obj: Obj) -> int:
    """A stable 64-bit fingerprint of the whole state (siblings and vector): the hash of its
    canonical encoding (:func:`encode` sorts the vector's nodes and the siblings), so equal
    states give equal digests on every node and Python run. Merkle trees are built from it.
    """
    return _hash64(encode(obj))


def record_digest(rec: bytes) -> int:
    """:func:`digest` of a stored record, without decoding it: every record a replica
    stores is :func:`encode`'s output, so hashing its bytes is the same fingerprint. The
    write path and tree builds use this (one hash of bytes instead of a decode)."""
    return _hash64(rec)


def record_summary(rec: bytes) -> tuple[int, int | None]:
    """``(digest, newest sibling ts if only tombstones else None)`` of a stored record,
    without building an :class:`Obj` — what rebuilding Merkle trees over a whole store
    after a restart spends its time on. Falls back to the full decode (and its checks) for
    anything that is not a canonical record."""
    try:
        fmt, nodes, counters, flat = _unpackb(rec)
        if fmt != _FORMAT or len(nodes) != len(counters) or len(flat) % 4 or not flat:
            raise ValueError
        if nodes != sorted(nodes):
            raise ValueError  # not canonical: let the full decode judge it
        live = False
        newest = 0
        for i in range(2, len(flat), 4):
            ts, value = flat[i], flat[i + 1]
            if value is not None:
                live = True
            elif ts > newest:
                newest = ts
        return _hash64(rec), (None if live else newest)
    except Exception:
        obj = decode(rec)
        tomb = max((x.ts for x in obj.siblings), default=0) if is_deleted(obj) else None
        return digest(obj), tomb


# ---------------------------------------------------------------------- encoding

# msgspec's encoder writes the same bytes as msgpack's Packer(use_bin_type=True) for what a
# record holds (ints, str, bytes, None, lists: each in its smallest form), for about a third
# of the instructions (callgrind: ~1.6k against ~4.8k for a one-sibling record), and a record
# is packed on every write (tests/unit/test_vclock_codec.py holds the two to the same bytes).
# Records are packed on the event loop's thread only (the storage worker thread just writes
# batches), so one encoder serves them all.
_pack: Final[Callable[[Any], bytes]] = msgspec.msgpack.Encoder().encode


# A stored record is packed into this buffer and copied out at its size: msgspec's own bytes
# keep the spare room of its growing buffer (a 132-byte record held 239 bytes, against
# msgpack's 173: the store's memory per key went from 1.46x to 1.95x redis's), and a copy
# through a memoryview cost half as much again as the packing. One buffer serves all, as one
# encoder does: records are packed on the event loop's thread only, and nothing between the
# two steps below can run another packer.
_pack_into: Final[Callable[[Any, bytearray], None]] = msgspec.msgpack.Encoder().encode_into
_scratch: Final = bytearray()


def _pack_stored(x: Any) -> bytes:
    """``_pack`` for a record the table keeps: bytes of exactly its size."""
    _pack_into(x, _scratch)
    return bytes(_scratch)


def encode(obj: Obj) -> bytes:
    """Compact bytes for storage and replication.

    Layout (msgpack): ``[1, [node...], [counter...], [node_index, counter, ts, value, ...]]``
    — the node table is the vector's keys, sorted, so names are written once. A record with
    an expiring sibling has a fifth element, ``[expires, ...]`` (one per sibling, 0: never);
    records without one are byte for byte what they were before TTL existed.
    """
    if obj._rec is not None:
        return obj._rec  # read from a record in encode's order: these are its bytes
    vv, sibs = obj.vv, obj.siblings
    if len(vv) == 1 and len(sibs) == 1:
        # The usual record: one writer, one sibling (the same bytes as the general path).
        s = sibs[0]
        ((n, c),) = vv.items()
        if not s.expires and s.dot.node == n:
            return _pack_stored([_FORMAT, [n], [c], [0, s.dot.counter, s.ts, s.value]])
    nodes = sorted(vv)
    index = {n: i for i, n in enumerate(nodes)}
    flat: list[Any] = []
    expiring = False
    # Sorted here too (versions are built sorted; this keeps the encoding canonical for any
    # Obj), so equal states always encode to equal bytes.
    ordered = sibs if _ascending(sibs) else sorted(sibs)
    for s in ordered:
        flat.append(index[s.dot.node])
        flat.append(s.dot.counter)
        flat.append(s.ts)
        flat.append(s.value)
        if s.expires:
            expiring = True
    if expiring:
        exp = [s.expires for s in ordered]
        return _pack_stored([_FORMAT, nodes, [vv[n] for n in nodes], flat, exp])
    return _pack_stored([_FORMAT, nodes, [vv[n] for n in nodes], flat])


def has_expiry(rec: bytes) -> bool:
    """Whether an encoded record carries expiries, from its first byte (a msgpack fixarray
    of five): lets a start find the expiring keys without decoding every record."""
    return bool(rec) and rec[0] == 0x95


# msgpack's defaults (raw=False, use_list=True, strict_map_key=True) are the ones wanted: a call
# without keywords skips their parsing on every record.
_unpackb: Final[Callable[[Any], Any]] = msgpack.unpackb


# A static tuple: compiled, ``bytes | bytearray | memoryview`` is built anew at each use, and
# ``bytearray`` and ``memoryview`` are looked up on the builtins module.
_BUFFERS: Final = (bytes, bytearray, memoryview)


def _unpack(b: Any, what: str) -> Any:
    if not isinstance(b, _BUFFERS):
        raise InvalidRequest(f"malformed {what}: expected bytes, got {type(b).__name__}")
    try:
        return _unpackb(b)
    except Exception:
        # msgpack reports bad input through a handful of unrelated exception types.
        raise InvalidRequest(f"malformed {what}") from None


def decode(b: object, *, canonical: bool = False) -> Obj:
    """Inverse of :func:`encode`; InvalidRequest("malformed record: …") on anything else.

    With ``canonical``, also refuse a record whose nodes or siblings are not in the order
    :func:`encode` writes them: such bytes may be stored as they came, and a stored record's
    hash must be its version's :func:`digest`."""
    d = _unpack(b, "record")
    if _is_plain(d):
        # Typed: compiled, the lists are indexed directly, not through the object protocol.
        nodes: list[str] = d[1]
        counters: list[int] = d[2]
        return _read({nodes[0]: counters[0]}, nodes, d[3], b if type(b) is bytes else None)
    return _decode_other(d, b, canonical)


def read_plain(rec: bytes) -> tuple[list[bytes], bytes] | Obj:
    """What a read shows of a stored record: for the usual record (one writer, one
    sibling, no expiry) its values and context bytes as a tuple, ``values(decode(rec))``
    and ``context_bytes(decode(rec))``, without building an :class:`Obj` (about half the
    time of that decode and the answer built from it); for any other record, ``decode(rec)``.
    InvalidRequest as :func:`decode` for what is not a record."""
    d = _unpack(rec, "record")
    if _is_plain(d):
        nodes: list[str] = d[1]
        counters: list[int] = d[2]
        flat: list[Any] = d[3]
        value = flat[3]
        return ([] if value is None else [value]), _pack([_FORMAT, nodes[0], counters[0]])
    return _decode_other(d, rec, False)


def _is_plain(d: Any) -> bool:
    """Whether an unpacked record has the usual shape, checked as the general path of
    :func:`_decode_other` would: one writer in the vector, one sibling, no expiries."""
    # Every replica read goes through here, so the checks are inlined (``type(x) is int``
    # also rejects bools) rather than spread over helpers.
    if not (type(d) is list and len(d) == 4 and d[0] == _FORMAT and type(d[0]) is int):
        return False
    nodes, counters, flat = d[1], d[2], d[3]
    if not (
        type(nodes) is list and len(nodes) == 1 and type(counters) is list and len(counters) == 1
        and type(flat) is list and len(flat) == 4
    ):
        return False
    n, c = nodes[0], counters[0]
    idx, counter, ts, value = flat
    return (
        type(n) is str
        and 0 < len(n) <= MAX_NODE_NAME_CHARS
        and type(c) is int
        and c > 0
        and (c <= _SHORT_MAX or c < MAX_COUNTER)
        and idx == 0
        and type(idx) is int
        and type(counter) is int
        and 0 < counter <= c
        and type(ts) is int
        and (value is None or type(value) is bytes)
    )


def _decode_other(d: Any, b: object, canonical: bool) -> Obj:
    """:func:`decode` of an unpacked record that is not :func:`_is_plain`."""
    if type(d) is not list or not 4 <= len(d) <= 5 or type(d[0]) is not int or d[0] != _FORMAT:
        raise InvalidRequest("malformed record: unknown layout")
    if len(d) == 5:
        return _decode_expiring(d, canonical)
    _, nodes, counters, flat = d
    # isinstance (bools refused apart) rather than ``type(x) is``: compiled, it narrows a
    # value to a list, str or int, so what follows indexes, compares and unboxes it directly
    # instead of through the generic object protocol (a five-sibling record: 1.9 -> 1.4 us).
    if (
        not isinstance(nodes, list)
        or not isinstance(counters, list)
        or not isinstance(flat, list)
        or len(nodes) != len(counters)
        or len(flat) % 4
    ):
        raise InvalidRequest("malformed record: bad shape")
    n_nodes = len(nodes)
    vv: dict[str, int] = {}
    # Nodes strictly ascending (what encode writes) lets dots be ordered by node index below,
    # as ints, rather than by name.
    nodes_ascending = True
    prev_name = ""
    for j in range(n_nodes):
        n = nodes[j]
        c = counters[j]
        if (
            not isinstance(n, str)
            or not 0 < len(n) <= MAX_NODE_NAME_CHARS
            or not isinstance(c, int)
            or isinstance(c, bool)
            or c <= 0
            or not (c <= _SHORT_MAX or c < MAX_COUNTER)
            or n in vv
        ):
            raise InvalidRequest("malformed record: bad version vector")
        if n < prev_name:
            nodes_ascending = False
        prev_name = n
        vv[n] = c
    # Dots strictly ascending (what encode writes) means sorted and free of duplicates, so
    # the checks below are needed only for records that are not.
    ascending = nodes_ascending
    prev_idx = -1
    prev_counter = 0
    for i in range(0, len(flat), 4):
        # Indexed, not a slice of four: no list made per sibling.
        idx = flat[i]
        counter = flat[i + 1]
        ts = flat[i + 2]
        value = flat[i + 3]
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < n_nodes:
            raise InvalidRequest("malformed record: bad node index")
        # The vector's counter of the dot's node, by index: no name lookup.
        covered: int = counters[idx]
        if not isinstance(counter, int) or isinstance(counter, bool) or not 0 < counter <= covered:
            raise InvalidRequest("malformed record: dot not covered by its vector")
        if not isinstance(ts, int) or isinstance(ts, bool) or not (value is None or type(value) is bytes):
            raise InvalidRequest("malformed record: bad sibling")
        if idx < prev_idx or (idx == prev_idx and counter <= prev_counter):
            ascending = False
        prev_idx = idx
        prev_counter = counter
    if ascending:
        # In encode's order: the siblings are built when first asked for (Obj).
        return _read(vv, nodes, flat, b if type(b) is bytes else None)
    sibs = _build_siblings(nodes, flat)
    # Duplicates first: sorting equal dots would go on to compare None with bytes.
    if len({s.dot for s in sibs}) != len(sibs):
        raise InvalidRequest("malformed record: duplicate dot")
    if canonical:
        raise InvalidRequest("malformed record: not in canonical order")
    sibs.sort()
    return Obj(tuple(sibs), vv)


def _decode_expiring(d: list[Any], canonical: bool) -> Obj:
    """A record with expiries: the four-element record, then the expiry of each sibling in
    the order they are encoded."""
    exp = d.pop()
    obj = decode(_pack(d), canonical=canonical)
    flat, nodes = d[3], d[1]
    if type(exp) is not list or len(exp) != len(obj.siblings) or any(type(e) is not int or e < 0 for e in exp):
        raise InvalidRequest("malformed record: bad expiries")
    if not any(exp):
        if canonical:
            raise InvalidRequest("malformed record: expiries without an expiring sibling")
        return obj
    by_dot = {Dot(nodes[flat[4 * i]], flat[4 * i + 1]): e for i, e in enumerate(exp)}
    return Obj(tuple(s._replace(expires=by_dot[s.dot]) for s in obj.siblings), obj.vv)

def context_bytes(obj: Obj) -> bytes:
    """``encode_context(obj.vv)``; for a version read from a record (or minted from one) its
    node table is the vector's nodes already sorted, so nothing is sorted or copied."""
    nodes = obj._nodes
    if nodes is None:
        return encode_context(obj.vv)
    return _pack_context(obj.vv, nodes)


def encode_context(vv: VV) -> bytes:
    """Opaque bytes of a causal context for clients; empty context -> b""."""
    return _pack_context(vv, sorted(vv) if len(vv) > 1 else vv)


def _pack_context(vv: VV, ordered: Iterable[str]) -> bytes:
    """The context ``vv`` with its nodes in ``ordered`` (sorted); b"" when empty."""
    if not vv:
        return b""
    flat: list[Any] = [_FORMAT]
    for n in ordered:
        flat.append(n)
        flat.append(vv[n])
    return _pack(flat)


def decode_context(b: object) -> dict[str, int]:
    """Inverse of :func:`encode_context`; b"" is the empty context.

    Anything else that does not parse raises InvalidRequest("malformed context").
    """
    if isinstance(b, (bytes, bytearray)) and not b:
        return {}
    d = _unpack(b, "context")
    if (
        type(d) is not list
        or len(d) % 2 != 1
        or len(d) > 1 + 2 * MAX_CONTEXT_ENTRIES
        or type(d[0]) is not int
        or d[0] != _FORMAT
    ):
        raise InvalidRequest("malformed context")
    vv: dict[str, int] = {}
    for i in range(1, len(d), 2):
        n, c = d[i], d[i + 1]
        if (
            type(n) is not str
            or not 0 < len(n) <= MAX_NODE_NAME_CHARS
            or type(c) is not int
            or c <= 0
            or not (c <= _SHORT_MAX or c < MAX_CONTEXT_COUNTER)
            or n in vv
        ):
            raise InvalidRequest("malformed context")
        vv[n] = c
    return vv
