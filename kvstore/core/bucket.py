"""Buckets: named key spaces with their own replication, conflict and size properties.

Pure: the properties of a bucket (:class:`BucketProps`), their validation against the
cluster's settings, the registry document every node holds and its merge, and how a
bucket's key is stored. The runtime registry (kvstore.runtime.buckets) keeps the document
durable and spreads it; coordinators look a bucket up with ``props(bucket)``.

**The default bucket** is today's key space: requests without a bucket, raw keys on disk,
the cluster's N/R/W and conflict mode. Nothing about it changes.

**Storage keys.** A key ``k`` of bucket ``b`` is stored (and hashed onto the ring) as
``PREFIX + len(b) + b + k``. Every per-partition mechanism (Merkle trees, anti-entropy,
ownership handoff, hints, tombstone collection) works on those raw keys and needs no change;
a bucket's keys spread over the whole ring like any others. ``PREFIX`` starts with a zero
and a 0xff byte, which no UTF-8 text does; a default-bucket key that starts with it is
refused (kvstore.core.messages.check_key), so the two spaces can never meet.

**Per-bucket N** is at most the cluster's ``n_replicas``: a bucket's preference list is the
first N nodes of the ring's, so every replica of a bucket key is a replica of its partition
(ownership checks, handoff and hints hold as they are). Anti-entropy compares whole
partitions between the ring's N replicas, so over time it copies a key of a smaller-N bucket
onto the partition's remaining replicas as well: extra, causally consistent copies that are
never asked for a read or counted for a write. Safe, at the cost of their space.

**Registry merge.** Each bucket's entry carries a version ``(counter, node)``; two documents
merge by keeping, per bucket, the entry with the larger version (a last-writer-wins map, so
any order of exchanges converges). Changes are made by the ring's claimant, which makes the
counters of one cluster increase in one place.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import xxhash

from kvstore.core.messages import RESERVED_KEY_PREFIX, Limits
from kvstore.errors import InvalidRequest

__all__ = [
    "DATATYPES",
    "DEFAULT",
    "LIVE_ONLY_WHEN_EMPTY",
    "PREFIX",
    "BucketProps",
    "Entry",
    "check_name",
    "default_props",
    "merge",
    "new_props",
    "split_storage_key",
    "storage_key",
]

DEFAULT = "default"
CONFLICT_MODES = ("siblings", "lww")
DATATYPES = ("none", "counter", "set", "map", "register")
# Properties that change what is stored or where: refused on a bucket that holds keys.
LIVE_ONLY_WHEN_EMPTY = ("n", "datatype")

PREFIX = RESERVED_KEY_PREFIX
MAX_NAME_CHARS = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class BucketProps:
    """One bucket's properties. ``ttl_s`` 0 means keys do not expire unless a write says
    so; ``max_siblings`` and ``max_record_bytes`` bound a record as the settings of the same
    names do, and may only be tighter than the cluster's."""

    name: str
    n: int
    r: int
    w: int
    conflict: str = "siblings"
    max_siblings: int = 100
    max_record_bytes: int = 4 * 1024 * 1024
    ttl_s: float = 0.0
    datatype: str = "none"

    @property
    def lww(self) -> bool:
        return self.conflict == "lww"

    def limits(self, cluster: Limits) -> Limits:
        """The cluster's limits, with this bucket's bounds."""
        return replace(
            cluster,
            n_replicas=self.n,
            max_siblings=self.max_siblings,
            max_record_bytes=self.max_record_bytes,
            warn_siblings=min(cluster.warn_siblings, self.max_siblings),
        )

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


_PROP_TYPES: dict[str, type] = {"n": int, "r": int, "w": int, "conflict": str, "max_siblings": int,
                                "max_record_bytes": int, "ttl_s": float, "datatype": str}
PROPERTIES = tuple(_PROP_TYPES)


def check_name(raw: Any) -> str:
    """A bucket name: 1 to 64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)."""
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("bucket name must be UTF-8 text") from None
    if not isinstance(raw, str) or not _NAME.fullmatch(raw):
        raise InvalidRequest(
            f"bad bucket name {raw!r}: 1 to {MAX_NAME_CHARS} characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return raw


def default_props(cluster: Limits, r: int, w: int, conflict: str) -> BucketProps:
    """The default bucket: today's settings."""
    return BucketProps(
        DEFAULT, cluster.n_replicas, r, w, conflict,
        max_siblings=cluster.max_siblings, max_record_bytes=cluster.max_record_bytes,
    )


def _coerce(name: str, raw: Any) -> Any:
    typ = _PROP_TYPES.get(name)
    if typ is None:
        raise InvalidRequest(f"unknown bucket property {name!r} (known: {', '.join(PROPERTIES)})")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        if typ is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)
        if typ is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if not isinstance(raw, str):
            raise ValueError
        return raw
    except (TypeError, ValueError):
        raise InvalidRequest(f"bucket property {name} must be {typ.__name__}, got {raw!r}") from None


def validate(p: BucketProps, cluster: Limits) -> BucketProps:
    """``p`` if every property is in range for this cluster, else InvalidRequest naming each
    problem."""
    problems = []
    if not 1 <= p.n <= cluster.n_replicas:
        problems.append(f"n must be in 1..{cluster.n_replicas} (the cluster's n_replicas), got {p.n}")
    for q in ("r", "w"):
        v = getattr(p, q)
        if not 1 <= v <= max(1, p.n):
            problems.append(f"{q} must be in 1..n ({p.n}), got {v}")
    if p.conflict not in CONFLICT_MODES:
        problems.append(f"conflict must be one of {', '.join(CONFLICT_MODES)}, got {p.conflict!r}")
    if p.datatype not in DATATYPES:
        problems.append(f"datatype must be one of {', '.join(DATATYPES)}, got {p.datatype!r}")
    if p.datatype != "none" and p.conflict != "siblings":
        problems.append(f"a datatype needs conflict = siblings (lww would drop concurrent updates), got {p.conflict!r}")
    if not 1 <= p.max_siblings <= cluster.max_siblings:
        problems.append(f"max_siblings must be in 1..{cluster.max_siblings} (the cluster's), got {p.max_siblings}")
    if not cluster.max_value_bytes <= p.max_record_bytes <= cluster.max_record_bytes:
        problems.append(
            f"max_record_bytes must be in {cluster.max_value_bytes}..{cluster.max_record_bytes} "
            f"(max_value_bytes..the cluster's max_record_bytes), got {p.max_record_bytes}"
        )
    if not 0 <= p.ttl_s <= 10 * 365 * 86400 or p.ttl_s != p.ttl_s:
        problems.append(f"ttl_s must be in 0..{10 * 365 * 86400} seconds (0: no expiry), got {p.ttl_s}")
    if problems:
        raise InvalidRequest(f"bucket {p.name!r}: " + "; ".join(problems))
    return p


def new_props(name: str, changes: dict[str, Any], base: BucketProps) -> BucketProps:
    """``base`` with ``changes`` (property name -> raw value) applied, not yet validated."""
    vals = {k: _coerce(str(k), v) for k, v in changes.items()}
    if "n" in vals:
        # r and w follow a smaller n unless given, so `create b n=1` just works.
        for q in ("r", "w"):
            if q not in vals:
                vals[q] = min(getattr(base, q), vals["n"])
    return replace(base, name=name, **vals)


def props_from_wire(doc: Any) -> BucketProps:
    if not isinstance(doc, dict):
        raise InvalidRequest("bucket properties must be a map")
    d = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in doc.items()}
    name = check_name(d.pop("name", None))
    known = {f.name for f in fields(BucketProps)}
    vals = {k: _coerce(k, v) for k, v in d.items() if k in known}
    try:
        return BucketProps(name=name, **vals)
    except TypeError as e:
        raise InvalidRequest(f"bucket {name!r}: {e}") from None


# ---------------------------------------------------------------------- registry document


@dataclass(frozen=True, slots=True)
class Entry:
    """A bucket's properties at one version ``(counter, node)``; the larger version wins."""

    props: BucketProps
    counter: int
    node: str

    @property
    def version(self) -> tuple[int, str]:
        return (self.counter, self.node)

    def to_wire(self) -> list[Any]:
        return [self.props.to_wire(), self.counter, self.node]

    @staticmethod
    def from_wire(raw: Any) -> Entry:
        if not isinstance(raw, list | tuple) or len(raw) != 3:
            raise InvalidRequest("bucket entry must be [props, counter, node]")
        props, counter, node = raw
        if isinstance(counter, bool) or not isinstance(counter, int) or counter < 1:
            raise InvalidRequest("bucket entry counter must be a positive integer")
        if isinstance(node, bytes):
            node = node.decode("utf-8", "replace")
        return Entry(props_from_wire(props), counter, str(node))


def merge(a: dict[str, Entry], b: dict[str, Entry]) -> dict[str, Entry]:
    """Per bucket, the entry with the larger version. Commutative, associative, idempotent."""
    out = dict(a)
    for name, e in b.items():
        mine = out.get(name)
        if mine is None or e.version > mine.version:
            out[name] = e
    return out


def doc_to_wire(doc: dict[str, Entry]) -> dict[str, Any]:
    return {name: e.to_wire() for name, e in sorted(doc.items())}


def doc_from_wire(raw: Any) -> dict[str, Entry]:
    if not isinstance(raw, dict):
        raise InvalidRequest("bucket registry must be a map")
    out: dict[str, Entry] = {}
    for k, v in raw.items():
        e = Entry.from_wire(v)
        if check_name(k) != e.props.name:
            raise InvalidRequest(f"bucket entry {k!r} names {e.props.name!r}")
        out[e.props.name] = e
    return out


def digest(doc: dict[str, Entry]) -> int:
    """A cheap fingerprint of the document: equal documents give equal digests (peers
    exchange the whole document only when these differ)."""
    h = 0
    for name, e in doc.items():
        h ^= xxhash.xxh3_64_intdigest(f"{name}\0{e.counter}\0{e.node}".encode())
    return h ^ len(doc)


# ---------------------------------------------------------------------- storage keys


def storage_key(bucket: str | None, key: bytes) -> bytes:
    """The key as stored and placed on the ring (the default bucket's keys are raw)."""
    if bucket is None or bucket == DEFAULT:
        return key
    b = bucket.encode()
    return PREFIX + bytes((len(b),)) + b + key


def split_storage_key(skey: bytes) -> tuple[str, bytes]:
    """Inverse of :func:`storage_key`: ``(bucket, key)``."""
    if not skey.startswith(PREFIX) or len(skey) <= len(PREFIX):
        return DEFAULT, skey
    n = skey[len(PREFIX)]
    start = len(PREFIX) + 1
    return skey[start : start + n].decode("utf-8", "replace"), skey[start + n :]
