"""What travels between clients, coordinators and replicas: method names and the typed,
validated form of each request's parameters.

Parsing happens once, at the edge (the RPC handler), so everything past it works with
checked values: bytes keys within limits, sane R/W, a decoded causal context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from kvstore.core.vclock import Obj, sibling_count
from kvstore.errors import InvalidRequest, TooLarge

# Every RPC method name, defined here once.

# Public API: what any msgpack-RPC client may call.
GET: Final = "get"
PUT: Final = "put"
DELETE: Final = "delete"
PING: Final = "ping"
RING: Final = "cluster.ring"
RESTART: Final = "node.restart"
STOP: Final = "node.stop"
STATUS: Final = "cluster.status"

# Coordinator-to-coordinator (handle-or-forward): same params as the public call.
FWD_GET: Final = "coord.get"
FWD_PUT: Final = "coord.put"
FWD_DELETE: Final = "coord.delete"

# Convergent data types (kvstore.runtime.datatypes): an update coordinated by a replica of
# the key (forwarded there like a put), and a read that merges the siblings' states.
DT_UPDATE: Final = "dt.update"
DT_FETCH: Final = "dt.fetch"
FWD_DT_UPDATE: Final = "coord.dt.update"

# Coordinator-to-replica.
REPLICA_GET: Final = "replica.get"
REPLICA_PUT: Final = "replica.put"

# Coordinator-to-replica: every replica.get and replica.put of one loop turn for one peer,
# in one frame: ``[[0, p, key] | [1, p, key, record, hint_for], ...]``; the reply lists each
# op's outcome in order, ``[0, result]`` or ``[1, error]`` (error as kvstore.errors.to_wire).
REPLICA_MANY: Final = "replica.many"
MANY_GET: Final = 0
MANY_PUT: Final = 1
# Most ops in one replica.many (a frame stays well inside the element and byte limits).
MAX_MANY_OPS: Final = 4096

# Coordinator-to-replica: a batch of versions to merge (hint delivery).
REPLICA_PUT_BATCH: Final = "replica.put_batch"

# Cluster management.
JOIN: Final = "cluster.join"
LEAVE: Final = "cluster.leave"
RING_UPDATE: Final = "cluster.ring_update"
HINTS: Final = "cluster.hints"

# Ownership handoff (kvstore.runtime.handoff).
HANDOFF_FETCH: Final = "handoff.fetch"
HANDOFF_STATUS: Final = "handoff.status"

# Active anti-entropy (kvstore.runtime.antientropy).
AAE_ROOT: Final = "aae.root"
AAE_ROOTS: Final = "aae.roots"
AAE_LEVEL: Final = "aae.level"
AAE_ENTRIES: Final = "aae.entries"
AAE_FORGET: Final = "aae.forget"
AAE_STATUS: Final = "aae.status"

# A get whose reply also says whether a tombstone sibling stands beside the values
# (kvstore.runtime.tombstones): same params as get, reply get's plus ``"tombstone": bool``.
GET_MARKED: Final = "get.marked"

# Key listing (kvstore.runtime.keylist): one page of a partition's live keys, in key order,
# ``[partition, after_key | None, prefix, count]`` -> ``{"keys": [...], "next": key | None}``.
KEYS_LIST: Final = "keys.list"

# Membership (kvstore.runtime.gossip): a full-state exchange over TCP.
GOSSIP_PUSH_PULL: Final = "gossip.push_pull"

# Buckets (kvstore.runtime.buckets): public admin calls, and the registry's exchange.
BUCKET_CREATE: Final = "bucket.create"
BUCKET_SET: Final = "bucket.set"
BUCKET_SHOW: Final = "bucket.show"
BUCKET_LIST: Final = "bucket.list"
BUCKET_SYNC: Final = "bucket.sync"  # node to node: [digest, doc or None] -> doc or None
BUCKET_COUNT: Final = "bucket.count"  # node to node: keys of a bucket stored here (an emptiness check)

# Batches (kvstore.runtime.batch): several gets or puts in one call to one coordinator.
GET_MANY: Final = "get_many"
PUT_MANY: Final = "put_many"
# Most items in one batch call: bounds the work one frame can start on a node.
MAX_BATCH_ITEMS: Final = 1000

# Storage keys of named buckets start with these bytes (kvstore.core.bucket); a key of the
# default bucket may not, so the two key spaces never meet.
RESERVED_KEY_PREFIX: Final = b"\x00\xffkvb"


@dataclass(frozen=True, slots=True)
class Limits:
    """The settings of the same names (kvstore.config documents them); built by
    ``Settings.limits``."""

    max_key_bytes: int
    max_value_bytes: int
    n_replicas: int
    max_record_bytes: int = field(kw_only=True)
    max_siblings: int = field(kw_only=True)
    warn_siblings: int = field(kw_only=True)


def as_str(x: Any, what: str = "value") -> str:
    """``x`` as str: str as is, bin decoded as UTF-8 (invalid bytes kept as surrogates, so a
    name round-trips); old msgpack clients send str where new ones send bin."""
    if type(x) is str:
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x).decode("utf-8", "surrogateescape")
    if isinstance(x, str):
        return str(x)
    raise InvalidRequest(f"{what} must be a string, got {type(x).__name__}")


def as_bytes(x: Any, what: str = "value") -> bytes:
    """Keys and values may arrive as str from old msgpack clients: UTF-8 encode them
    (lossless for str that was decoded from invalid UTF-8 with surrogateescape)."""
    if type(x) is bytes:
        return x
    if isinstance(x, str):
        try:
            return x.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise InvalidRequest(f"{what} is not encodable as UTF-8") from None
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    raise InvalidRequest(f"{what} must be bytes or str, got {type(x).__name__}")


def check_partition(p: Any) -> int:
    """A partition number from the wire (its range is the receiver's to check)."""
    if isinstance(p, bool) or not isinstance(p, int) or p < 0:
        raise InvalidRequest(f"partition must be a non-negative integer, got {p!r}")
    return p


def check_key(raw: Any, limits: Limits) -> bytes:
    key = as_bytes(raw, "key")
    if not key:
        raise InvalidRequest("key must not be empty")
    if len(key) > limits.max_key_bytes:
        raise TooLarge(f"key is {len(key)} bytes, over the limit of {limits.max_key_bytes}")
    if key[0] == 0 and key.startswith(RESERVED_KEY_PREFIX):
        raise InvalidRequest(f"keys may not start with the reserved bytes {RESERVED_KEY_PREFIX!r}")
    return key


def check_value(raw: Any, limits: Limits) -> bytes:
    value = as_bytes(raw, "value")
    if len(value) > limits.max_value_bytes:
        raise TooLarge(f"value is {len(value)} bytes, over the limit of {limits.max_value_bytes}")
    return value


def _show_key(key: bytes) -> str:
    return repr(key) if len(key) <= 64 else repr(key[:64])[:-1] + "…'"


def check_record(key: bytes, obj: Obj, record_bytes: int, limits: Limits) -> str | None:
    """Judge the version a write would leave on ``key`` (``record_bytes`` is its encoded size)
    before it is stored anywhere: TooLarge past ``max_siblings`` or ``max_record_bytes``, a
    warning to log at ``warn_siblings`` or more, else None.

    Bounding here, at the one place a version is minted, is what keeps every record small
    enough for replica.put, read repair, anti-entropy and hints to carry in one frame.
    """
    n = sibling_count(obj)
    how = "; read the key and write back with its context to resolve the siblings"
    if n > limits.max_siblings:
        raise TooLarge(
            f"write to key {_show_key(key)} refused: it would leave {n} siblings, over the limit of "
            f"{limits.max_siblings} (max_siblings){how}",
            siblings=n, limit=limits.max_siblings,
        )
    if record_bytes > limits.max_record_bytes:
        raise TooLarge(
            f"write to key {_show_key(key)} refused: its record would be {record_bytes} bytes "
            f"({n} siblings), over the limit of {limits.max_record_bytes} (max_record_bytes){how}",
            siblings=n, record_bytes=record_bytes, limit=limits.max_record_bytes,
        )
    if n >= limits.warn_siblings:
        return (
            f"key {_show_key(key)} has {n} siblings ({record_bytes} bytes); writes are refused past "
            f"{limits.max_siblings}{how}"
        )
    return None


def check_context(raw: Any) -> bytes:
    if raw is None:
        return b""
    return as_bytes(raw, "context")


@dataclass(frozen=True, slots=True)
class Options:
    """Per-request overrides. ``quorum`` is R for reads and W for writes; ``strict`` counts only
    primaries (Riak's pr/pw); ``timeout_s`` caps the coordinator's wait."""

    quorum: int | None = None
    strict: bool = False
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class DataOptions(Options):
    """Options of a request that uses the data model (README "Data model"): ``bucket``
    (None: the default bucket), ``if_none_match`` (create only if absent), ``if_not_modified``
    (a context: write only if the key is still as that read saw it), ``ttl_s`` (expire the
    write after this long; 0: never, overriding the bucket's default). A subclass, so that
    plain requests build and check only the three fields above: the coordinator sends a
    request here only when its options are of this class."""

    bucket: str | None = None
    if_none_match: bool = False
    if_not_modified: bytes | None = None
    ttl_s: float | None = None




def _opt_int(opts: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = opts.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidRequest(f"option {name} must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise InvalidRequest(f"option {name} must be in {lo}..{hi}, got {v}")
    return v


_DEFAULT_OPTIONS: Final = Options()  # immutable: shared by every request without options


def parse_options(raw: Any, kind: str, limits: Limits) -> Options:
    """``kind`` is "r" or "w": which quorum override this request may carry."""
    if raw is None or (type(raw) is dict and not raw):
        return _DEFAULT_OPTIONS
    if not isinstance(raw, dict):
        raise InvalidRequest(f"options must be a map, got {type(raw).__name__}")
    opts = {(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): v for k, v in raw.items()}
    unknown = set(opts) - _KNOWN_OPTIONS
    if unknown:
        raise InvalidRequest(f"unknown option(s): {', '.join(sorted(unknown))}")
    other = "w" if kind == "r" else "r"
    if opts.get(other) is not None:
        raise InvalidRequest(f"option {other} does not apply to this request")
    quorum = _opt_int(opts, kind, 1, limits.n_replicas)
    strict = opts.get("strict", False)
    if not isinstance(strict, bool):
        raise InvalidRequest(f"option strict must be true or false, got {strict!r}")
    t = _opt_int(opts, "timeout_ms", 1, 600_000)
    o = Options(quorum, strict, None if t is None else t / 1000.0)
    if not opts.keys() <= _BASE_OPTIONS:
        return _data_model_options(o, opts, kind)
    return o


_BASE_OPTIONS: Final = frozenset({"r", "w", "strict", "timeout_ms"})
_DATA_MODEL_OPTIONS: Final = frozenset({"bucket", "if_none_match", "if_not_modified", "ttl_ms"})
_KNOWN_OPTIONS: Final = _BASE_OPTIONS | _DATA_MODEL_OPTIONS
MAX_TTL_MS: Final = 10 * 365 * 86400 * 1000


def _data_model_options(o: Options, opts: dict[str, Any], kind: str) -> DataOptions:
    bucket = opts.get("bucket")
    if bucket is not None:
        bucket = as_str(bucket, "option bucket")
        if bucket == "default":
            bucket = None
    inm = opts.get("if_none_match", False)
    if not isinstance(inm, bool):
        raise InvalidRequest(f"option if_none_match must be true or false, got {inm!r}")
    inm_ctx = opts.get("if_not_modified")
    ctx = None if inm_ctx is None else as_bytes(inm_ctx, "option if_not_modified")
    ttl = _opt_int(opts, "ttl_ms", 0, MAX_TTL_MS)
    if kind == "r" and (inm or ctx is not None or ttl is not None):
        raise InvalidRequest("if_none_match, if_not_modified and ttl_ms apply to writes only")
    if inm and ctx is not None:
        raise InvalidRequest("if_none_match and if_not_modified cannot be combined")
    return DataOptions(
        o.quorum, o.strict, o.timeout_s, bucket, inm, ctx, None if ttl is None else ttl / 1000.0
    )


def options_to_wire(o: Options, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if o.quorum is not None:
        out[kind] = o.quorum
    if o.strict:
        out["strict"] = True
    if o.timeout_s is not None:
        out["timeout_ms"] = max(1, int(o.timeout_s * 1000))
    if not isinstance(o, DataOptions):
        return out
    if o.bucket is not None:
        out["bucket"] = o.bucket
    if o.if_none_match:
        out["if_none_match"] = True
    if o.if_not_modified is not None:
        out["if_not_modified"] = o.if_not_modified
    if o.ttl_s is not None:
        out["ttl_ms"] = round(o.ttl_s * 1000)
    return out
