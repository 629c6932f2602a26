"""Convergent data types: state-based CRDTs that merge siblings by themselves (Riak's data types).

Every type is a *causal* CRDT (Almeida, Shoker, Baquero, "Delta State Replicated Data
Types", 2018): a **dot store** plus one **causal context** for the whole object. A dot is
``(actor, counter)``, one event of one actor; the context is a version vector covering every
dot the state has seen, kept or since removed. Joining two states keeps a dot when both hold
it or when the other side has not seen it (it is not covered by the other's context), so a
removal is simply "a dot I have seen and no longer hold", and an add the other side never saw
survives: add-wins.

    counter   dot -> (p, n)         one entry per actor: its running increments/decrements
    register  dot -> (ts, value)    concurrent sets kept; the read shows the greatest (ts, dot)
    flag      dot -> None           enable-wins: enabled while any dot is held
    set       member -> flag        add-wins observed-remove set (an OR-set of dots)
    map       (name, type) -> store fields of any type, nested maps up to MAX_DEPTH

Actors are the replica's ``name~epoch`` (kvstore.runtime.replica), which changes whenever the
node may have forgotten what it coordinated, and dot counters are drawn above a node-wide
``floor``, so a dot is never minted twice, even for a key whose tombstone was collected.

Removing a map field removes every dot it holds that the remover saw: a counter field is
reset to the increments made concurrently with the removal (add-wins), a set loses the adds
it observed, a register or flag is cleared. A remove with a client's **context** (the one a
read returned) removes only the dots that context covers; dots it covers that this replica
has not seen yet are recorded as a *deferred* remove and applied as they arrive (Riak's
ORSWOT does the same); a deferred remove keeps only the actors whose dots it covers beyond
the state's context, and is dropped once there are none (see :func:`_settle`).

Merge is commutative, associative and idempotent (tests/property/test_crdt_props.py). States
are plain immutable values: every operation returns a new :class:`State`.

Encoding: ``MAGIC`` + msgpack ``[version, type, [actor...], [counter...], store, deferred]``;
dots are ``actor index, counter`` pairs into the one actor table, so names are written once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import msgpack
import msgspec

from kvstore.errors import InvalidRequest, TooLarge

__all__ = [
    "MAGIC",
    "TYPES",
    "Op",
    "State",
    "apply",
    "context",
    "decode",
    "encode",
    "from_siblings",
    "is_state",
    "merge",
    "merge_all",
    "parse_op",
    "value",
]

TYPES = ("counter", "set", "map", "register", "flag")
# Types a key may hold (flags live in maps only: a bare flag is a one-member set).
TOP_TYPES = ("counter", "set", "map", "register")
_LEAVES = ("counter", "register", "flag")

MAGIC = b"\x00kvdt"
# msgpack's defaults (raw=False, use_list=True, strict_map_key=True) are the ones wanted: a
# call without keywords skips their parsing on every state read.
_unpackb: Final = msgpack.unpackb
# States are packed with msgspec's encoder: the same bytes as msgpack.packb(use_bin_type=True)
# for what a state holds (as records, kvstore/core/vclock.py), where packb built a Packer and
# parsed its keyword on every call (callgrind: 21k of a counter increment's 133k instructions
# at its coordinator). Its bytes order deferred removes and break dot ties, so they must not
# change: tests/unit/test_crdt.py holds the two encoders to the same bytes.
_pack: Final[Callable[[Any], bytes]] = msgspec.msgpack.Encoder().encode
_VERSION = 1
_TYPE_CODE = {t: i for i, t in enumerate(TYPES)}

# Bounds that keep a forged state or op from hurting a node (the encoded size is bounded by
# max_value_bytes where states are stored).
MAX_DEPTH = 4              # maps nested in maps
MAX_ACTORS = 1024          # distinct actors an update may leave in one state (each unclean
                           # restart of a coordinator adds one; the encoded size bounds reads)
MAX_DEFERRED = 256         # pending removes whose dots have not arrived yet
MAX_NAME_CHARS = 255       # map field names
MAX_OPS = 1000             # members or fields one update may touch
MAX_COUNTER = 2**63        # dot counters and counter totals stay inside msgpack's int64
MAX_INCR = 2**53

Dot = tuple[str, int]
Clock = Mapping[str, int]
Path = tuple[Any, ...]  # member bytes (in a set) or (name, type) (in a map), root first


class State:
    """One data type's value: ``store`` is the dot store of ``type`` (see the module doc),
    ``clock`` the causal context, ``deferred`` the removes waiting for dots not seen yet.

    Immutable by convention (nothing assigns to a built one). A plain slotted class, as
    vclock.Obj is, rather than a frozen dataclass: compiled, the dataclass's init set each
    field through ``object.__setattr__`` (callgrind: ~12k instructions of a counter
    increment's ~190k went to building States, ~11k to building its Op). The clocks are
    dicts, not Mappings: compiled, a Mapping's ``get`` and ``items`` are generic method
    calls, a dict's are direct (every state this module builds holds dicts)."""

    __slots__ = ("clock", "deferred", "store", "type")

    def __init__(
        self, type: str, store: Any, clock: dict[str, int], deferred: dict[Path, dict[str, int]] | None = None
    ) -> None:
        self.type = type
        self.store = store
        self.clock = clock
        self.deferred: dict[Path, dict[str, int]] = {} if deferred is None else deferred

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return (
            self.type == other.type and self.store == other.store
            and self.clock == other.clock and self.deferred == other.deferred
        )

    def __repr__(self) -> str:
        return f"State(type={self.type!r}, store={self.store!r}, clock={self.clock!r}, deferred={self.deferred!r})"


def empty(type_: str) -> State:
    if type_ not in TOP_TYPES:
        raise InvalidRequest(f"unknown data type {type_!r}; one of {', '.join(TOP_TYPES)}")
    return State(type_, {}, {}, {})


# ---------------------------------------------------------------------- merge

def _covered(d: Dot, c: Clock) -> bool:
    return d[1] <= c.get(d[0], 0)


def _leq(a: Clock, b: Clock) -> bool:
    return all(v <= b.get(k, 0) for k, v in a.items())


def _join_clock(a: Clock, b: Clock) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        if v > out.get(k, 0):
            out[k] = v
    return out


def _child_kind(kind: str, key: Any) -> str:
    return "flag" if kind == "set" else str(key[1])


def _pick(x: Any, y: Any) -> Any:
    # One dot, two payloads: only a dot minted twice does that. Either choice is a bug's
    # outcome; choosing by bytes keeps the merge commutative whatever the order.
    if x == y:
        return x
    return max(x, y, key=_pack)


def _join_store(kind: str, a: Any, b: Any, ca: Clock, cb: Clock) -> Any:
    if kind in _LEAVES:
        out = {d: (v if d not in b else _pick(v, b[d])) for d, v in a.items() if d in b or not _covered(d, cb)}
        for d, v in b.items():
            if d not in a and not _covered(d, ca):
                out[d] = v
        return out
    res: dict[Any, Any] = {}
    for k in a.keys() | b.keys():
        sub = _join_store(_child_kind(kind, k), a.get(k, {}), b.get(k, {}), ca, cb)
        if sub:
            res[k] = sub
    return res


def _strip(kind: str, store: Any, path: Path, ctx: Clock | None) -> Any:
    """``store`` without the dots under ``path`` that ``ctx`` covers (every dot when None)."""
    if not path:
        if kind in _LEAVES:
            return {} if ctx is None else {d: v for d, v in store.items() if not _covered(d, ctx)}
        out = {}
        for k, sub in store.items():
            s = _strip(_child_kind(kind, k), sub, (), ctx)
            if s:
                out[k] = s
        return out
    head = path[0]
    if kind in _LEAVES or head not in store:
        return store
    sub = _strip(_child_kind(kind, head), store[head], path[1:], ctx)
    out = dict(store)
    if sub:
        out[head] = sub
    else:
        del out[head]
    return out


def _settle(type_: str, store: Any, clock: dict[str, int], deferred: Mapping[Path, Clock]) -> State:
    """Apply the deferred removes, then keep of each only the actors whose dots it covers
    beyond ``clock``, and forget it when there are none.

    The dots a remove covers that the clock covers too are gone from the store under its
    path (just stripped) and cannot come back (a join keeps a dot its clock covers only if
    both sides hold it), so those entries say nothing more. Dropping them actor by actor,
    not only once the whole remove is covered, is what makes the result a function of the
    merged contents alone: a remove whose entry for actor ``a`` was dropped on one merge
    path but joined into a still pending remove on another would otherwise come out with
    and without ``a``, and merge would not be associative."""
    keep: dict[Path, dict[str, int]] = {}
    if not deferred:  # the usual state: nothing to strip or keep
        return State(type_, store, clock, keep)
    for path, ctx in deferred.items():
        store = _strip(type_, store, path, ctx)
        rest = {a: c for a, c in ctx.items() if c > clock.get(a, 0)}
        if rest:
            keep[path] = rest
    return State(type_, store, clock, keep)


def merge(a: State, b: State) -> State:
    """Join two states of one type: commutative, associative, idempotent."""
    if a.type != b.type:
        raise InvalidRequest(f"cannot merge a {a.type} with a {b.type}")
    if a == b:
        return a
    store = _join_store(a.type, a.store, b.store, a.clock, b.clock)
    deferred = {p: dict(c) for p, c in a.deferred.items()}
    for p, c in b.deferred.items():
        deferred[p] = _join_clock(deferred.get(p, {}), c)
    return _settle(a.type, store, _join_clock(a.clock, b.clock), deferred)


def merge_all(states: Iterable[State]) -> State | None:
    out: State | None = None
    for s in states:
        out = s if out is None else merge(out, s)
    return out


def from_siblings(values: Iterable[bytes]) -> State | None:
    """The merge of a key's sibling values (tombstones left out by the caller), which must
    all be data type states; None when there are none."""
    states = []
    for v in values:
        if not is_state(v):
            raise InvalidRequest("the key holds a plain value, not a data type")
        states.append(decode(v))
    return merge_all(states)


# ---------------------------------------------------------------------- reading

def _plain(kind: str, store: Any) -> Any:
    if kind == "counter":
        entries: dict[Dot, tuple[int, int]] = store
        total = 0
        for p, n in entries.values():  # a loop, not sum() over a generator: no object per read
            total += p - n
        return total
    if kind == "register":
        if not store:
            return None
        return max(store.items(), key=lambda kv: (kv[1][0], kv[0]))[1][1]
    if kind == "flag":
        return bool(store)
    if kind == "set":
        return sorted(store)
    return {f"{name}_{t}": _plain(t, sub) for (name, t), sub in sorted(store.items())}


def value(s: State | None, type_: str | None = None) -> Any:
    """The plain value: an int, a sorted list of bytes, bytes or None, a dict ("name_type")."""
    if s is None:
        return _plain(type_ or "map", {})
    return _plain(s.type, s.store)


def context(s: State | None) -> dict[str, int]:
    """What a reader saw: give it back with a remove so that only those adds are removed."""
    return {} if s is None else dict(s.clock)


# ---------------------------------------------------------------------- operations

class Op:
    """A checked operation on one data type (:func:`parse_op` builds it from the wire).

    counter: ``incr``; set: ``add`` / ``remove`` members; register: ``set``; flag:
    ``enable`` (True/False); map: ``update`` ((name, type, Op) ...) and ``remove`` ((name, type) ...).
    Immutable by convention, slotted like :class:`State` (and for the same reason).
    """

    __slots__ = ("add", "enable", "incr", "remove", "set", "type", "update")

    def __init__(
        self,
        type: str,
        incr: int = 0,
        add: tuple[bytes, ...] = (),
        remove: tuple[Any, ...] = (),
        set: bytes | None = None,
        enable: bool | None = None,
        update: tuple[tuple[str, str, Op], ...] = (),
    ) -> None:
        self.type = type
        self.incr = incr
        self.add = add
        self.remove = remove
        self.set = set
        self.enable = enable
        self.update = update

    def _fields(self) -> tuple[Any, ...]:
        return (self.type, self.incr, self.add, self.remove, self.set, self.enable, self.update)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Op):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Op(type={self.type!r}, incr={self.incr!r}, add={self.add!r}, remove={self.remove!r}, "
            f"set={self.set!r}, enable={self.enable!r}, update={self.update!r})"
        )


class _Minter:
    """Mints dots for one operation, all above the node-wide floor."""

    __slots__ = ("actor", "clock", "floor")

    def __init__(self, actor: str, clock: Clock, floor: int) -> None:
        self.actor = actor
        self.clock = dict(clock)
        self.floor = floor

    def dot(self) -> Dot:
        c = max(self.clock.get(self.actor, 0), self.floor) + 1
        if c >= MAX_COUNTER:
            raise InvalidRequest("dot counter exhausted")
        self.clock[self.actor] = self.floor = c
        return (self.actor, c)


def apply(s: State | None, op: Op, *, actor: str, floor: int = 0, ts: int = 0, ctx: Clock | None = None) -> State:
    """``op`` applied by ``actor`` on ``s`` (None: the key holds nothing yet).

    ``floor`` is the highest counter ``actor`` has minted anywhere (new dots go above it),
    ``ts`` the coordinator's wall clock in ms (registers), ``ctx`` the context of the read the
    client's removes are based on (None: remove whatever this state holds).
    """
    if s is None:
        s = empty(op.type)
    if s.type != op.type:
        raise InvalidRequest(f"the key holds a {s.type}, not a {op.type}")
    m = _Minter(actor, s.clock, floor)
    deferred: dict[Path, Clock] = {p: dict(c) for p, c in s.deferred.items()}
    store = _apply(op.type, s.store, op, m, ts, ctx, (), deferred, 0)
    if len(deferred) > MAX_DEFERRED:
        raise TooLarge(f"more than {MAX_DEFERRED} removes wait for adds this replica has not seen; retry later")
    out = _settle(op.type, store, m.clock, deferred)
    if len(out.clock) > MAX_ACTORS:
        raise TooLarge(f"the {op.type} would carry more than {MAX_ACTORS} actors")
    return out


def _remove(kind: str, store: Any, path: Path, m: _Minter, ctx: Clock | None, deferred: dict[Path, Clock], full: Path) -> Any:
    out = _strip(kind, store, path, ctx)
    if ctx is not None and not _leq(ctx, m.clock):
        # The reader saw adds this replica has not: remove them when they arrive.
        deferred[full + path] = _join_clock(deferred.get(full + path, {}), ctx)
    return out


def _apply(
    kind: str, store: Any, op: Op, m: _Minter, ts: int, ctx: Clock | None,
    here: Path, deferred: dict[Path, Clock], depth: int,
) -> Any:
    if kind == "counter":
        # One pass over typed entries (compiled: no generic ops): the other actors' kept,
        # this actor's newest read (it holds one after any update of its own).
        entries: dict[Dot, tuple[int, int]] = store
        actor = m.actor
        kept: dict[Dot, tuple[int, int]] = {}
        mine = 0
        p = n = 0
        for d, pn in entries.items():
            if d[0] == actor:
                if d[1] > mine:
                    mine = d[1]
                    p, n = pn
            else:
                kept[d] = pn
        if op.incr >= 0:
            p += op.incr
        else:
            n -= op.incr
        if p >= MAX_COUNTER or n >= MAX_COUNTER:
            raise InvalidRequest("counter out of range")
        kept[m.dot()] = (p, n)
        return kept
    if kind == "register":
        if op.set is None:
            return store
        newest = max((v[0] for v in store.values()), default=ts - 1)
        # Above everything it replaces, so a set always wins over what its coordinator saw,
        # whatever the clocks' skew.
        return {m.dot(): (max(ts, newest + 1), op.set)}
    if kind == "flag":
        if op.enable is None:
            return store
        if op.enable:
            return {m.dot(): None}
        return _remove(kind, store, (), m, ctx, deferred, here)
    if kind == "set":
        out = store
        for member in op.remove:
            out = _remove(kind, out, (member,), m, ctx, deferred, here)
        out = dict(out)
        for member in op.add:
            out[member] = {m.dot(): None}
        return out
    # map
    out = store
    for name, t in op.remove:
        out = _remove(kind, out, ((name, t),), m, ctx, deferred, here)
    out = dict(out)
    for name, t, sub_op in op.update:
        if t == "map" and depth + 1 >= MAX_DEPTH:
            raise InvalidRequest(f"maps nest at most {MAX_DEPTH} deep")
        k = (name, t)
        sub = _apply(t, out.get(k, {}), sub_op, m, ts, ctx, (*here, k), deferred, depth + 1)
        if sub:
            out[k] = sub
        else:
            out.pop(k, None)
    return out


# ---------------------------------------------------------------------- parsing ops

def _as_bytes(x: Any, what: str) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode("utf-8", "surrogateescape")
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    raise InvalidRequest(f"{what} must be bytes or str, got {type(x).__name__}")


def _name(x: Any) -> str:
    if isinstance(x, (bytes, bytearray)):
        x = bytes(x).decode("utf-8", "surrogateescape")
    if not isinstance(x, str) or not 0 < len(x) <= MAX_NAME_CHARS:
        raise InvalidRequest(f"a map field name is 1 to {MAX_NAME_CHARS} characters, got {x!r}")
    return x


def _str(x: Any) -> str:
    return bytes(x).decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else str(x)


def _list(x: Any, what: str) -> list[Any]:
    if isinstance(x, (bytes, str)):
        return [x]
    if not isinstance(x, (list, tuple)):
        raise InvalidRequest(f"{what} must be a list")
    if len(x) > MAX_OPS:
        raise TooLarge(f"{what} has {len(x)} items, over the limit of {MAX_OPS}")
    return list(x)


_OP_KEYS = {
    "counter": {"incr"},
    "set": {"add", "remove"},
    "register": {"set"},
    "flag": {"enable"},
    "map": {"update", "remove"},
}


def parse_op(type_: Any, raw: Any, *, depth: int = 0) -> Op:
    """The wire form of an operation, checked: ``{"incr": 5}``, ``{"add": [...], "remove":
    [...]}``, ``{"set": value}``, ``{"enable": bool}``, ``{"update": [[name, type, op]...],
    "remove": [[name, type]...]}``."""
    if type_ == "counter" and depth < MAX_DEPTH and type(raw) is dict and len(raw) == 1:
        # The usual operation, {"incr": n}: what the general path below checks, without its
        # set arithmetic (a counter increment is a hot request).
        n = raw.get("incr", None)
        if type(n) is int and -MAX_INCR <= n <= MAX_INCR:
            return Op("counter", incr=n)
    t = _str(type_)
    if t not in TYPES or (depth == 0 and t not in TOP_TYPES):
        raise InvalidRequest(f"unknown data type {t!r}; one of {', '.join(TOP_TYPES if depth == 0 else TYPES)}")
    if depth >= MAX_DEPTH:
        raise InvalidRequest(f"maps nest at most {MAX_DEPTH} deep")
    if not isinstance(raw, dict):
        raise InvalidRequest(f"a {t} operation must be a map, got {type(raw).__name__}")
    ops = {_str(k): v for k, v in raw.items()}
    unknown = set(ops) - _OP_KEYS[t]
    if unknown or not ops:
        raise InvalidRequest(f"a {t} operation takes {' and/or '.join(sorted(_OP_KEYS[t]))}, got {sorted(ops)}")
    if t == "counter":
        n = ops["incr"]
        if isinstance(n, bool) or not isinstance(n, int) or not -MAX_INCR <= n <= MAX_INCR:
            raise InvalidRequest(f"incr takes an integer within ±2**53, got {n!r}")
        return Op(t, incr=n)
    if t == "register":
        return Op(t, set=_as_bytes(ops["set"], "register value"))
    if t == "flag":
        if not isinstance(ops["enable"], bool):
            raise InvalidRequest("enable takes true or false")
        return Op(t, enable=ops["enable"])
    if t == "set":
        add = tuple(dict.fromkeys(_as_bytes(x, "member") for x in _list(ops.get("add", []), "add")))
        rem = tuple(dict.fromkeys(_as_bytes(x, "member") for x in _list(ops.get("remove", []), "remove")))
        if set(add) & set(rem):
            raise InvalidRequest("one operation cannot add and remove the same member")
        return Op(t, add=add, remove=rem)
    updates: list[tuple[str, str, Op]] = []
    for item in _list(ops.get("update", []), "update"):
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise InvalidRequest("a map update is [name, type, operation]")
        name, ft, sub = item
        sub_op = parse_op(ft, sub, depth=depth + 1)
        updates.append((_name(name), sub_op.type, sub_op))
    removes: list[tuple[str, str]] = []
    for item in _list(ops.get("remove", []), "remove"):
        if not isinstance(item, (list, tuple)) or len(item) != 2 or _str(item[1]) not in TYPES:
            raise InvalidRequest("a map field to remove is [name, type]")
        removes.append((_name(item[0]), _str(item[1])))
    fields = [(n, ft) for n, ft, _ in updates]
    if len(set(fields)) != len(fields) or set(fields) & set(removes):
        raise InvalidRequest("one operation touches each map field once")
    return Op(t, update=tuple(updates), remove=tuple(removes))


# ---------------------------------------------------------------------- encoding

def is_state(b: bytes | None) -> bool:
    """Whether a stored value is a data type's state (and not an opaque value)."""
    return b is not None and b[:5] == MAGIC


def _actors_of(s: State) -> list[str]:
    if not s.deferred:  # the usual state: its clock names every actor
        return sorted(s.clock)
    names = set(s.clock)
    for ctx in s.deferred.values():
        names.update(ctx)
    return sorted(names)


def _enc_store(kind: str, store: Any, idx: dict[str, int]) -> list[Any]:
    flat: list[Any] = []
    if kind in _LEAVES:
        leaf: dict[Dot, Any] = store
        # A payload tuple goes to the encoder as it is (msgpack has no tuple: an array).
        for (a, c), v in sorted(leaf.items()) if len(leaf) > 1 else leaf.items():
            flat.append(idx[a])
            flat.append(c)
            flat.append(v)
        return flat
    for k in sorted(store):
        if kind == "set":
            flat.append(k)
        else:
            flat.append(k[0])
            flat.append(k[1])
        flat.append(_enc_store(_child_kind(kind, k), store[k], idx))
    return flat


def _enc_path(path: Path) -> list[Any]:
    return [list(p) if isinstance(p, tuple) else p for p in path]


def encode(s: State) -> bytes:
    actors = _actors_of(s)
    idx = {a: i for i, a in enumerate(actors)}
    deferred = []
    if s.deferred:  # most states have none: no sort (and no key function) per encode
        for path, ctx in sorted(s.deferred.items(), key=lambda pc: _pack(_enc_path(pc[0]))):
            flat: list[int] = []
            for a in sorted(ctx):
                flat.append(idx[a])
                flat.append(ctx[a])
            deferred.append([_enc_path(path), flat])
    body = [
        _VERSION, _TYPE_CODE[s.type], actors, [s.clock.get(a, 0) for a in actors],
        _enc_store(s.type, s.store, idx), deferred,
    ]
    return MAGIC + _pack(body)


def _bad(why: str) -> InvalidRequest:
    return InvalidRequest(f"malformed data type state: {why}")


def _dec_dot(actors: list[str], clock: dict[str, int], i: Any, c: Any) -> Dot:
    if type(i) is not int or not 0 <= i < len(actors) or type(c) is not int or c <= 0:
        raise _bad("bad dot")
    d = (actors[i], c)
    if not _covered(d, clock):
        raise _bad("dot not covered by its context")
    return d


def _dec_store(kind: str, flat: Any, actors: list[str], clock: dict[str, int], depth: int) -> Any:
    if type(flat) is not list:
        raise _bad("bad store")
    out: dict[Any, Any] = {}
    if kind in _LEAVES:
        if len(flat) % 3:
            raise _bad("bad leaf")
        for j in range(0, len(flat), 3):
            d = _dec_dot(actors, clock, flat[j], flat[j + 1])
            v = flat[j + 2]
            if kind == "flag":
                if v is not None:
                    raise _bad("bad flag")
                out[d] = None
            elif kind == "counter":
                # Spelled out, not all() over a generator: compiled, that is an object per entry.
                if type(v) is not list or len(v) != 2:
                    raise _bad("bad counter entry")
                x, y = v[0], v[1]
                if type(x) is not int or type(y) is not int or not 0 <= x < MAX_COUNTER or not 0 <= y < MAX_COUNTER:
                    raise _bad("bad counter entry")
                out[d] = (x, y)
            else:
                if type(v) is not list or len(v) != 2 or type(v[0]) is not int or type(v[1]) is not bytes:
                    raise _bad("bad register entry")
                out[d] = (v[0], v[1])
        return out
    step = 2 if kind == "set" else 3
    if len(flat) % step:
        raise _bad("bad map or set")
    for j in range(0, len(flat), step):
        if kind == "set":
            k: Any = flat[j]
            if type(k) is not bytes:
                raise _bad("bad member")
        else:
            name, t = flat[j], flat[j + 1]
            if type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS or t not in TYPES:
                raise _bad("bad field")
            if t == "map" and depth + 1 >= MAX_DEPTH:
                raise _bad("maps nested too deep")
            k = (name, t)
        sub = _dec_store(_child_kind(kind, k), flat[j + step - 1], actors, clock, depth + 1)
        if not sub or k in out:
            raise _bad("empty or repeated entry")
        out[k] = sub
    return out


def _dec_path(raw: Any) -> Path:
    if type(raw) is not list or not 0 < len(raw) <= MAX_DEPTH + 1:
        raise _bad("bad deferred path")
    out: list[Any] = []
    for p in raw:
        if type(p) is bytes:
            out.append(p)
        elif type(p) is list and len(p) == 2 and type(p[0]) is str and p[1] in TYPES:
            out.append((p[0], p[1]))
        else:
            raise _bad("bad deferred path")
    return tuple(out)


def decode(b: bytes) -> State:
    """Inverse of :func:`encode`; InvalidRequest on anything else (nodes read these from peers)."""
    if not is_state(b):
        raise _bad("not a data type")
    try:
        d = _unpackb(b[len(MAGIC):])
    except Exception:
        raise _bad("not msgpack") from None
    if type(d) is not list or len(d) != 6 or d[0] != _VERSION or type(d[1]) is not int or not 0 <= d[1] < len(TYPES):
        raise _bad("unknown layout or version")
    _, code, actors, counters, store, deferred = d
    type_ = TYPES[code]
    if type_ not in TOP_TYPES:
        raise _bad("not a top-level type")
    if (
        type(actors) is not list or type(counters) is not list or len(actors) != len(counters)
        or type(deferred) is not list or len(deferred) > MAX_DEFERRED
    ):
        raise _bad("bad shape")
    clock: dict[str, int] = {}
    names: list[Any] = actors
    prev = ""
    for j in range(len(names)):
        a, c = names[j], counters[j]
        if type(a) is not str or not 0 < len(a) <= MAX_NAME_CHARS or type(c) is not int or not 0 <= c < MAX_COUNTER:
            raise _bad("bad context")
        # Strictly ascending: sorted and without repeats, checked in the same pass.
        if j and not prev < a:
            raise _bad("bad actor table")
        prev = a
        if c:
            clock[a] = c
    st = _dec_store(type_, store, actors, clock, 0)
    pending: dict[Path, dict[str, int]] = {}
    for item in deferred:
        if type(item) is not list or len(item) != 2 or type(item[1]) is not list or len(item[1]) % 2:
            raise _bad("bad deferred remove")
        ctx: dict[str, int] = {}
        for j in range(0, len(item[1]), 2):
            i, c = item[1][j], item[1][j + 1]
            if type(i) is not int or not 0 <= i < len(actors) or type(c) is not int or not 0 < c < MAX_COUNTER:
                raise _bad("bad deferred context")
            ctx[actors[i]] = c
        pending[_dec_path(item[0])] = ctx
    return State(type_, st, clock, pending)
