"""What travels between clients, coordinators and replicas: method names and the typed,
validated form of each request's parameters.

Parsing happens once, at the edge (the RPC handler), so everything past it works with
checked values: bytes keys within limits, sane R/W, a decoded causal context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvstore.core.vclock import Obj
from kvstore.errors import InvalidRequest, TooLarge

# Every RPC method name, defined here once.

# Public API: what any msgpack-RPC client may call.
GET = "get"
PUT = "put"
DELETE = "delete"
PING = "ping"
RING = "cluster.ring"
RESTART = "node.restart"
STOP = "node.stop"
STATUS = "cluster.status"

# Coordinator-to-coordinator (handle-or-forward): same params as the public call.
FWD_GET = "coord.get"
FWD_PUT = "coord.put"
FWD_DELETE = "coord.delete"

# Convergent data types (kvstore.runtime.datatypes): an update coordinated by a replica of
# the key (forwarded there like a put), and a read that merges the siblings' states.
DT_UPDATE = "dt.update"
DT_FETCH = "dt.fetch"
FWD_DT_UPDATE = "coord.dt.update"

# Coordinator-to-replica.
REPLICA_GET = "replica.get"
REPLICA_PUT = "replica.put"

# Coordinator-to-replica: every replica.get and replica.put of one loop turn for one peer,
# in one frame: ``[[0, p, key] | [1, p, key, record, hint_for], ...]``; the reply lists each
# op's outcome in order, ``[0, result]`` or ``[1, error]`` (error as kvstore.errors.to_wire).
REPLICA_MANY = "replica.many"
MANY_GET = 0
MANY_PUT = 1
# Most ops in one replica.many (a frame stays well inside the element and byte limits).
MAX_MANY_OPS = 4096

# Coordinator-to-replica: a batch of versions to merge (hint delivery).
REPLICA_PUT_BATCH = "replica.put_batch"

# Cluster management.
JOIN = "cluster.join"
LEAVE = "cluster.leave"
RING_UPDATE = "cluster.ring_update"
HINTS = "cluster.hints"

# Ownership handoff (kvstore.runtime.handoff).
HANDOFF_FETCH = "handoff.fetch"
HANDOFF_STATUS = "handoff.status"

# Active anti-entropy (kvstore.runtime.antientropy).
AAE_ROOT = "aae.root"
AAE_ROOTS = "aae.roots"
AAE_LEVEL = "aae.level"
AAE_ENTRIES = "aae.entries"
AAE_FORGET = "aae.forget"
AAE_STATUS = "aae.status"

# Membership (kvstore.runtime.gossip): a full-state exchange over TCP.
GOSSIP_PUSH_PULL = "gossip.push_pull"


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
    if isinstance(x, bytes | bytearray | memoryview):
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
    n = len(obj.siblings)
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


def _opt_int(opts: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = opts.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidRequest(f"option {name} must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise InvalidRequest(f"option {name} must be in {lo}..{hi}, got {v}")
    return v


def parse_options(raw: Any, kind: str, limits: Limits) -> Options:
    """``kind`` is "r" or "w": which quorum override this request may carry."""
    if raw is None:
        return Options()
    if not isinstance(raw, dict):
        raise InvalidRequest(f"options must be a map, got {type(raw).__name__}")
    opts = {(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): v for k, v in raw.items()}
    unknown = set(opts) - {"r", "w", "strict", "timeout_ms"}
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
    return Options(quorum, strict, None if t is None else t / 1000.0)


def options_to_wire(o: Options, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if o.quorum is not None:
        out[kind] = o.quorum
    if o.strict:
        out["strict"] = True
    if o.timeout_s is not None:
        out["timeout_ms"] = max(1, int(o.timeout_s * 1000))
    return out
