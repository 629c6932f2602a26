"""The consistent-hash ring: Q equal partitions, their owners, and preference lists.

Placement is Dynamo's strategy 3: the 64-bit hash space is cut into Q (a power of two)
equal ranges; a key's partition is the top log2(Q) bits of ``xxh3_64(key)``, so partition
``p`` covers one contiguous slice of the hash space and a change of ownership moves whole
partitions, never individual keys.

A :class:`Ring` is an immutable value (owners, zones, version, checksum). :func:`claim`
computes the next ring from the members, their zones and the previous ring; it is
deterministic, so every node that applies the same membership change arrives at the same
ring and checksum.

Zones (kvstore/core/zones.py): the ring records each member's zone. A preference list is the
clockwise walk of distinct nodes put in "distinct zones first" order, so it spans
min(N, zones) zones whatever the owners look like; the claim also spaces zones along the
ring, so that in the common case that order is just the next N owners and every node
carries its share of replicas. A ring whose members all share one zone places exactly
as a ring without zones (and without a zone table its checksum and wire form are the same
as ever).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

from kvstore.core.zones import DEFAULT_ZONE, spread, zone_problem
from kvstore.errors import ConfigError, InvalidRequest

__all__ = [
    "TARGET_N",
    "Ring",
    "claim",
    "crowded_partitions",
    "partition_of",
    "zone_crowded_partitions",
]

# Riak's target_n_val: claim tries to keep this many consecutive partitions on distinct
# nodes, so a preference list of N <= TARGET_N is just the next N partitions' owners.
TARGET_N = 3

# A key's partition is ``partition_hash(key) >> partition_shift(q)``: the top log2(q) bits
# of its xxh3_64. Both halves are public so that compiled callers (the node's cluster view)
# can hold the shift per ring and skip a call into this interpreted module per request.
partition_hash = xxhash.xxh3_64_intdigest
_hash64 = partition_hash  # the same hash, for the ring's checksum


def _is_pow2(q: int) -> bool:
    return q >= 1 and q & (q - 1) == 0


def partition_shift(q: int) -> int:
    """The shift of :func:`partition_of` for a ring of ``q`` partitions (a power of two, so
    bit_length - 1 == log2(q); for q == 1 the shift is 64 and every key lands in 0)."""
    return 65 - q.bit_length()


def partition_of(key: bytes, q: int) -> int:
    """Partition of ``key`` in a ring of ``q`` partitions (top log2(q) bits of xxh3_64)."""
    return partition_hash(key) >> partition_shift(q)


def _checksum(
    partitions: int, owners: tuple[str, ...], zones: tuple[tuple[str, str], ...] = ()
) -> int:
    # Length-prefixed so that no choice of node names can make two owner lists collide
    # by concatenation; the version is deliberately left out (same owners, same checksum).
    # The zone table follows the Q owners (so it cannot be confused with one), and only when
    # there is one: a ring without zones keeps the checksum it always had.
    parts = [partitions.to_bytes(4, "big")]
    for o in (*owners, *(x for pair in zones for x in pair)):
        b = o.encode()
        parts.append(len(b).to_bytes(4, "big"))
        parts.append(b)
    return _hash64(b"".join(parts))


@dataclass(frozen=True, slots=True)
class Ring:
    """Who owns which partition. Build one with :func:`claim` or :meth:`Ring.from_wire`."""

    partitions: int
    owners: tuple[str, ...]
    version: int
    # (member, zone) pairs, sorted, for members outside DEFAULT_ZONE only; normalized on
    # construction (a mapping is accepted too), so equal placements compare equal.
    zones: tuple[tuple[str, str], ...] = ()
    checksum: int = field(init=False)
    # Derived, lazily filled caches; excluded from eq/hash/repr so they never leak into
    # identity. Preference lists are asked for on every request, hence the memo.
    _members: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _zone: dict[str, str] = field(init=False, repr=False, compare=False)
    _zoned: bool = field(init=False, repr=False, compare=False)
    _shift: int = field(init=False, repr=False, compare=False)
    _walks: dict[int, tuple[str, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _prefs: dict[tuple[int, int], tuple[str, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _falls: dict[tuple[int, int], tuple[str, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        q = self.partitions
        if isinstance(q, bool) or not isinstance(q, int) or not _is_pow2(q):
            raise InvalidRequest(f"ring: partitions must be a power of two, got {q!r}")
        owners = self.owners
        if not isinstance(owners, tuple):
            owners = tuple(owners)
            object.__setattr__(self, "owners", owners)
        if len(owners) != q:
            raise InvalidRequest(f"ring: {len(owners)} owners for {q} partitions")
        for o in owners:
            if not isinstance(o, str) or not o:
                raise InvalidRequest(f"ring: owner {o!r} is not a non-empty string")
        v = self.version
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidRequest(f"ring: version must be a non-negative int, got {v!r}")
        members = tuple(sorted(set(owners)))
        zones = _zone_table(self.zones, members)
        object.__setattr__(self, "zones", zones)
        object.__setattr__(self, "checksum", _checksum(q, owners, zones))
        object.__setattr__(self, "_members", members)
        object.__setattr__(self, "_zone", dict(zones))
        # Placement looks at zones only when there are two or more: one zone for everyone
        # (named or not) places exactly as no zones.
        object.__setattr__(
            self, "_zoned", len({self._zone.get(m, DEFAULT_ZONE) for m in members}) > 1
        )
        object.__setattr__(self, "_shift", partition_shift(q))

    # ------------------------------------------------------------------ queries

    @property
    def members(self) -> tuple[str, ...]:
        """Distinct owners, sorted. A node that owns no partition is not a member."""
        return self._members

    def zone_of(self, node: str) -> str:
        """The zone this ring places ``node`` in (DEFAULT_ZONE for one it has none for)."""
        return self._zone.get(node, DEFAULT_ZONE)

    @property
    def zone_map(self) -> dict[str, str]:
        """Every member's zone (a fresh dict)."""
        return {m: self.zone_of(m) for m in self._members}

    @property
    def zone_names(self) -> tuple[str, ...]:
        """Distinct zones of the members, sorted."""
        return tuple(sorted({self.zone_of(m) for m in self._members}))

    def partition_of(self, key: bytes) -> int:
        """Partition of ``key`` in this ring."""
        return partition_hash(key) >> self._shift

    def owned_by(self, node: str) -> list[int]:
        """Partitions whose primary owner is ``node``, ascending."""
        return [p for p, o in enumerate(self.owners) if o == node]

    def _walk(self, partition: int) -> tuple[str, ...]:
        """Every member once, in clockwise order of first appearance from ``partition``,
        then (with more than one zone) in distinct-zones-first order (zones.spread)."""
        w = self._walks.get(partition)
        if w is None:
            if not 0 <= partition < self.partitions:
                raise InvalidRequest(
                    f"partition {partition} out of range 0..{self.partitions - 1}"
                )
            seen: dict[str, None] = {}
            owners = self.owners
            q = self.partitions
            want = len(self._members)
            for i in range(q):
                seen.setdefault(owners[(partition + i) % q])
                if len(seen) == want:
                    break
            w = tuple(seen)
            if self._zoned:
                w = spread(w, self.zone_of)
            self._walks[partition] = w
        return w

    def preference_list(self, partition: int, n: int) -> tuple[str, ...]:
        """Owners of ``partition``, ``partition+1``, … on distinct nodes, up to ``n`` of them;
        with zones, the first node of each zone met on that walk comes before any second
        node of a zone, so the list spans min(n, zones) zones.

        Shorter than ``n`` only when the ring has fewer than ``n`` members.
        """
        key = (partition, n)
        pl = self._prefs.get(key)
        if pl is None:
            pl = self._walk(partition)[: max(n, 0)]
            self._prefs[key] = pl
        return pl

    def fallbacks(self, partition: int, n: int) -> tuple[str, ...]:
        """Members after the preference list, clockwise (zones round-robin, as the
        preference list): where a sloppy quorum goes next."""
        key = (partition, n)
        fb = self._falls.get(key)
        if fb is None:
            fb = self._walk(partition)[max(n, 0) :]
            self._falls[key] = fb
        return fb

    def key_preference_list(self, key: bytes, n: int) -> tuple[str, ...]:
        """Preference list of the partition holding ``key``."""
        return self.preference_list(partition_hash(key) >> self._shift, n)

    def replicas_of(self, node: str, n: int) -> set[int]:
        """Partitions whose preference list (of length ``n``) includes ``node``."""
        return {p for p in range(self.partitions) if node in self.preference_list(p, n)}

    # ------------------------------------------------------------------ wire form

    def to_wire(self) -> dict[str, Any]:
        """msgpack-friendly form; owners go as indices into a node table (names repeat Q times)."""
        index = {m: i for i, m in enumerate(self._members)}
        doc: dict[str, Any] = {
            "partitions": self.partitions,
            "version": self.version,
            "nodes": list(self._members),
            "owners": [index[o] for o in self.owners],
            "checksum": self.checksum,
        }
        if self.zones:
            # One zone per entry of the node table; left out when there are no zones, so a
            # ring without them reads the same to a node that predates zones.
            doc["zones"] = [self.zone_of(m) for m in self._members]
        return doc

    @classmethod
    def from_wire(cls, d: Any) -> Ring:
        """Inverse of :meth:`to_wire`; accepts bytes or str for keys and names.

        Raises InvalidRequest on any malformed shape or when the checksum does not match.
        """
        if not isinstance(d, Mapping):
            raise InvalidRequest("ring: expected a map")
        fields_ = {_text(k, "key"): v for k, v in d.items()}
        for name in ("partitions", "version", "nodes", "owners", "checksum"):
            if name not in fields_:
                raise InvalidRequest(f"ring: missing field {name!r}")
        q = _int(fields_["partitions"], "partitions")
        version = _int(fields_["version"], "version")
        checksum = _int(fields_["checksum"], "checksum")
        nodes_raw = fields_["nodes"]
        owners_raw = fields_["owners"]
        if not isinstance(nodes_raw, list | tuple) or not isinstance(owners_raw, list | tuple):
            raise InvalidRequest("ring: nodes and owners must be lists")
        nodes = [_text(n, "node name") for n in nodes_raw]
        owners: list[str] = []
        for i in owners_raw:
            idx = _int(i, "owner index")
            if not 0 <= idx < len(nodes):
                raise InvalidRequest(f"ring: owner index {idx} outside the node table")
            owners.append(nodes[idx])
        zones: list[tuple[str, str]] = []
        zones_raw = fields_.get("zones")
        if zones_raw is not None:
            if not isinstance(zones_raw, list | tuple) or len(zones_raw) != len(nodes):
                raise InvalidRequest("ring: zones must be a list with one zone per node")
            zones = [(n, _text(z, "zone")) for n, z in zip(nodes, zones_raw, strict=True)]
        ring = cls(q, tuple(owners), version, tuple(zones))
        if ring.checksum != checksum:
            raise InvalidRequest("ring: checksum mismatch")
        return ring


def _zone_table(raw: Any, members: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Normalize a zone table: pairs (or a mapping) -> sorted pairs of members outside
    DEFAULT_ZONE (entries for non-members are dropped: they place nothing)."""
    items = raw.items() if isinstance(raw, Mapping) else raw
    if not isinstance(items, Iterable) or isinstance(items, str | bytes):
        raise InvalidRequest("ring: zones must be (node, zone) pairs")
    table: dict[str, str] = {}
    for pair in items:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise InvalidRequest(f"ring: zone entry {pair!r} is not a (node, zone) pair")
        node, zone = pair
        why = zone_problem(zone)
        if why is not None:
            raise InvalidRequest(f"ring: {why}")
        if not isinstance(node, str):
            raise InvalidRequest(f"ring: zone entry for {node!r}: node is not a string")
        table[node] = zone
    member_set = set(members)
    return tuple(sorted((n, z) for n, z in table.items() if n in member_set and z != DEFAULT_ZONE))


def _text(v: Any, what: str) -> str:
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            raise InvalidRequest(f"ring: {what} is not UTF-8") from None
    if isinstance(v, str):
        return v
    raise InvalidRequest(f"ring: {what} must be a string, got {type(v).__name__}")


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidRequest(f"ring: {what} must be an integer, got {type(v).__name__}")
    return v


# ---------------------------------------------------------------------- claim


def claim(
    members: Iterable[str],
    partitions: int,
    prev: Ring | None = None,
    *,
    target_n: int = TARGET_N,
    zones: Mapping[str, str] | None = None,
) -> Ring:
    """The ring for ``members``, moving as few partitions of ``prev`` as balance allows.

    ``zones`` gives members' zones; a member not in it keeps the zone ``prev`` has for it,
    else DEFAULT_ZONE (so a join passes the joiner's zone, a leave passes nothing).

    Priorities, in order:

    1. Balance: every member gets ⌊Q/S⌋ or ⌈Q/S⌉ partitions (with S > Q some get none).
    2. Minimal movement: a partition changes owner only if its owner left or holds more
       than its new share; the ⌈Q/S⌉ shares go to the members that held most before. So
       moves == Σ max(0, new_count - old_count), and a leave moves only the leaver's.
    3. Spacing: any ``target_n`` consecutive partitions on distinct nodes, and any
       min(target_n, Z) consecutive ones in distinct zones (Z zones), where 1 and 2 allow,
       so preference lists are the next N owners and replicas are spread evenly. Not always
       possible (e.g. S = 3 needs 3 | Q; zones of unequal size), hence best effort: greedy
       fill, then owner swaps that cost no moves. Node spacing comes before zone spacing;
       zones never cost balance or movement. (Preference lists span min(N, Z) zones
       whatever the spacing: see Ring.preference_list.)

    Deterministic: depends only on the set of members, their zones, Q and ``prev``'s owners
    and zones.
    """
    nodes = sorted(set(members))
    if not nodes:
        raise ConfigError("claim: a ring needs at least one member, got none")
    for n in nodes:
        if not isinstance(n, str) or not n:
            raise ConfigError(f"claim: member {n!r} is not a non-empty string")
    if isinstance(partitions, bool) or not isinstance(partitions, int) or not _is_pow2(partitions):
        raise ConfigError(f"claim: partitions must be a power of two, got {partitions!r}")
    if prev is not None and prev.partitions != partitions:
        raise ConfigError(
            f"claim: the ring has {prev.partitions} partitions; Q is fixed for a cluster's"
            f" life and cannot become {partitions}"
        )
    zone_of = {n: prev.zone_of(n) if prev is not None else DEFAULT_ZONE for n in nodes}
    for n, z in (zones or {}).items():
        why = zone_problem(z)
        if why is not None:
            raise ConfigError(f"claim: {n}: {why}")
        if n in zone_of:
            zone_of[n] = z
    q = partitions
    s = len(nodes)
    # Window within which owners should differ; never wider than the ring or the member set.
    w = max(1, min(target_n, s, q))
    sp = _Spacing(w, q, zone_of, target_n)

    prev_owners: tuple[str, ...] | None = prev.owners if prev is not None else None
    old_count = dict.fromkeys(nodes, 0)
    if prev_owners is not None:
        for o in prev_owners:
            if o in old_count:
                old_count[o] += 1

    base, extra = divmod(q, s)
    # Larger shares to those who held most, so nobody must give up what they may keep.
    by_holding = sorted(nodes, key=lambda n: (-old_count[n], n))
    target = {n: base + (1 if i < extra else 0) for i, n in enumerate(by_holding)}

    owners: list[str | None] = (
        [o if o in target else None for o in prev_owners] if prev_owners else [None] * q
    )

    # Surplus members give back partitions; prefer ones that crowd a same-owner neighbour.
    for n in nodes:
        surplus = old_count[n] - target[n]
        if surplus <= 0:
            continue
        mine = [p for p, o in enumerate(owners) if o == n]
        mine.sort(key=lambda p: (-sp.cost(owners, p, n), p))
        # First pass spreads the freed slots out (a newcomer taking two adjacent ones
        # would crowd itself); the second takes whatever is still needed.
        for spread_out in (True, False):
            for p in mine:
                if surplus == 0:
                    break
                if owners[p] is None or (spread_out and _near_free(owners, p, w, q)):
                    continue
                owners[p] = None
                surplus -= 1

    # Hand the free partitions to members below their share.
    deficit = {n: target[n] - sum(1 for o in owners if o == n) for n in nodes}
    for p in range(q):
        if owners[p] is not None:
            continue
        candidates = [n for n in nodes if deficit[n] > 0]
        owner = min(
            candidates,
            key=lambda n: (sp.cost(owners, p, n), -deficit[n], n),
        )
        owners[p] = owner
        deficit[owner] -= 1

    final: list[str] = [o for o in owners if o is not None]
    assert len(final) == q
    _improve_spacing(final, prev_owners, sp)
    return Ring(
        q,
        tuple(final),
        prev.version + 1 if prev is not None else 1,
        tuple(zone_of.items()),
    )


class _Spacing:
    """How badly a node would sit at a partition: the claim's spacing cost.

    ``cost = weight * same-node neighbours within w - 1 + same-zone neighbours within
    wz - 1`` (either side), with wz = min(target_n, zones, Q). The weight exceeds the most
    the zone term can reach, so node spacing always comes first. With fewer than two zones
    wz is 1, the zone term is 0 and the cost is the plain node crowding: a claim without
    zones makes exactly the decisions it always made.
    """

    __slots__ = ("q", "w", "weight", "wz", "zone_of")

    def __init__(self, w: int, q: int, zone_of: Mapping[str, str], target_n: int) -> None:
        self.w = w
        self.q = q
        self.zone_of = zone_of
        self.wz = max(1, min(target_n, len(set(zone_of.values())), q))
        # wz <= w always (zones <= members), so the node window bounds every interaction.
        # Times 4: a swap compares sums of two costs, whose zone terms can differ by 4(wz - 1).
        self.weight = 4 * self.wz if self.wz > 1 else 1

    def cost(self, owners: Sequence[str | None], p: int, node: str) -> int:
        q = self.q
        c = 0
        for d in range(1, self.w):
            if owners[(p + d) % q] == node:
                c += 1
            if owners[(p - d) % q] == node:
                c += 1
        if self.wz < 2:
            return c
        c *= self.weight
        zone_of = self.zone_of
        zone = zone_of[node]
        for d in range(1, self.wz):
            a = owners[(p + d) % q]
            if a is not None and zone_of[a] == zone:
                c += 1
            b = owners[(p - d) % q]
            if b is not None and zone_of[b] == zone:
                c += 1
        return c


def _near_free(owners: Sequence[str | None], p: int, w: int, q: int) -> bool:
    return any(owners[(p + d) % q] is None or owners[(p - d) % q] is None for d in range(1, w))


def _improve_spacing(owners: list[str], prev: tuple[str, ...] | None, sp: _Spacing) -> None:
    """Swap owners of two partitions when it lowers the spacing cost without adding a move.

    A swap keeps every member's count (balance holds); it is taken only if the number of
    partitions whose owner differs from ``prev`` does not grow, and only if it strictly
    lowers the total spacing cost (same-owner pairs closer than ``w``, then same-zone pairs
    closer than ``wz``), a non-negative integer, so this terminates.
    """
    w, q = sp.w, sp.q
    if w < 2:
        return
    cost = sp.cost

    def moved(p: int) -> bool:
        return prev is None or prev[p] != owners[p]

    improved = True
    while improved:
        improved = False
        for i in range(q):
            oi = owners[i]
            ci = cost(owners, i, oi)
            if ci == 0:
                continue
            i_moved = moved(i)
            crowd_here: dict[str, int] = {}
            for j in range(q):
                oj = owners[j]
                if oj == oi:
                    continue
                # Legal swaps: both already moved; or the one that stays put gets back its
                # previous owner. Anything else would add a move.
                j_moved = moved(j)
                if prev is not None:
                    if i_moved and not j_moved and prev[i] != oj:
                        continue
                    if not i_moved and not (j_moved and prev[j] == oi):
                        continue
                if (i - j) % q < w or (j - i) % q < w:
                    # Overlapping windows: count the pairs exactly before and after.
                    before = cost(owners, i, oi) + cost(owners, j, oj)
                    owners[i], owners[j] = oj, oi
                    after = cost(owners, i, oj) + cost(owners, j, oi)
                    if after < before:
                        improved = True
                        break
                    owners[i], owners[j] = oi, oj
                    continue
                cij = crowd_here.get(oj)
                if cij is None:
                    cij = crowd_here[oj] = cost(owners, i, oj)
                if cij >= ci:
                    continue
                if cij + cost(owners, j, oi) < ci + cost(owners, j, oj):
                    owners[i], owners[j] = oj, oi
                    improved = True
                    break


def crowded_partitions(ring: Ring, n: int = TARGET_N) -> int:
    """Partitions whose next ``n`` owners (itself included) are not all distinct."""
    q = ring.partitions
    w = min(n, len(ring.members), q)
    o = ring.owners
    return sum(1 for p in range(q) if len({o[(p + d) % q] for d in range(w)}) < w)


def zone_crowded_partitions(ring: Ring, n: int = TARGET_N) -> int:
    """Partitions whose next min(``n``, zones) owners (itself included) are not all in
    distinct zones: where a preference list must reach past the next N owners."""
    q = ring.partitions
    w = min(n, len(ring.zone_names), q)
    o = ring.owners
    return sum(1 for p in range(q) if len({ring.zone_of(o[(p + d) % q]) for d in range(w)}) < w)
