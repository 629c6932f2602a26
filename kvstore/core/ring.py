"""The consistent-hash ring: Q equal partitions, their owners, and preference lists.

Placement is Dynamo's strategy 3: the 64-bit hash space is cut into Q (a power of two)
equal ranges; a key's partition is the top log2(Q) bits of ``xxh3_64(key)``, so partition
``p`` covers one contiguous slice of the hash space and a change of ownership moves whole
partitions, never individual keys.

A :class:`Ring` is an immutable value (owners, version, checksum). :func:`claim` computes
the next ring from the members and the previous ring; it is deterministic, so every node
that applies the same membership change arrives at the same ring and checksum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

from kvstore.errors import ConfigError, InvalidRequest

__all__ = ["TARGET_N", "Ring", "claim", "crowded_partitions", "partition_of"]

# Riak's target_n_val: claim tries to keep this many consecutive partitions on distinct
# nodes, so a preference list of N <= TARGET_N is just the next N partitions' owners.
TARGET_N = 3

_hash64 = xxhash.xxh3_64_intdigest


def _is_pow2(q: int) -> bool:
    return q >= 1 and q & (q - 1) == 0


def partition_of(key: bytes, q: int) -> int:
    """Partition of ``key`` in a ring of ``q`` partitions (top log2(q) bits of xxh3_64)."""
    # q is a power of two, so bit_length - 1 == log2(q); for q == 1 the shift is 64 -> 0.
    return _hash64(key) >> (65 - q.bit_length())


def _checksum(partitions: int, owners: tuple[str, ...]) -> int:
    # Length-prefixed so that no choice of node names can make two owner lists collide
    # by concatenation; the version is deliberately left out (same owners, same checksum).
    parts = [partitions.to_bytes(4, "big")]
    for o in owners:
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
    checksum: int = field(init=False)
    # Derived, lazily filled caches; excluded from eq/hash/repr so they never leak into
    # identity. Preference lists are asked for on every request, hence the memo.
    _members: tuple[str, ...] = field(init=False, repr=False, compare=False)
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
        object.__setattr__(self, "checksum", _checksum(q, owners))
        object.__setattr__(self, "_members", tuple(sorted(set(owners))))
        object.__setattr__(self, "_shift", 65 - q.bit_length())

    # ------------------------------------------------------------------ queries

    @property
    def members(self) -> tuple[str, ...]:
        """Distinct owners, sorted. A node that owns no partition is not a member."""
        return self._members

    def partition_of(self, key: bytes) -> int:
        """Partition of ``key`` in this ring."""
        return _hash64(key) >> self._shift

    def owned_by(self, node: str) -> list[int]:
        """Partitions whose primary owner is ``node``, ascending."""
        return [p for p, o in enumerate(self.owners) if o == node]

    def _walk(self, partition: int) -> tuple[str, ...]:
        """Every member once, in clockwise order of first appearance from ``partition``."""
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
            self._walks[partition] = w
        return w

    def preference_list(self, partition: int, n: int) -> tuple[str, ...]:
        """Owners of ``partition``, ``partition+1``, … on distinct nodes, up to ``n`` of them.

        Shorter than ``n`` only when the ring has fewer than ``n`` members.
        """
        key = (partition, n)
        pl = self._prefs.get(key)
        if pl is None:
            pl = self._walk(partition)[: max(n, 0)]
            self._prefs[key] = pl
        return pl

    def fallbacks(self, partition: int, n: int) -> tuple[str, ...]:
        """Members after the preference list, clockwise: where a sloppy quorum goes next."""
        key = (partition, n)
        fb = self._falls.get(key)
        if fb is None:
            fb = self._walk(partition)[max(n, 0) :]
            self._falls[key] = fb
        return fb

    def key_preference_list(self, key: bytes, n: int) -> tuple[str, ...]:
        """Preference list of the partition holding ``key``."""
        return self.preference_list(_hash64(key) >> self._shift, n)

    def replicas_of(self, node: str, n: int) -> set[int]:
        """Partitions whose preference list (of length ``n``) includes ``node``."""
        return {p for p in range(self.partitions) if node in self.preference_list(p, n)}

    # ------------------------------------------------------------------ wire form

    def to_wire(self) -> dict[str, Any]:
        """msgpack-friendly form; owners go as indices into a node table (names repeat Q times)."""
        index = {m: i for i, m in enumerate(self._members)}
        return {
            "partitions": self.partitions,
            "version": self.version,
            "nodes": list(self._members),
            "owners": [index[o] for o in self.owners],
            "checksum": self.checksum,
        }

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
        ring = cls(q, tuple(owners), version)
        if ring.checksum != checksum:
            raise InvalidRequest("ring: checksum mismatch")
        return ring


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
) -> Ring:
    """The ring for ``members``, moving as few partitions of ``prev`` as balance allows.

    Priorities, in order:

    1. Balance: every member gets ⌊Q/S⌋ or ⌈Q/S⌉ partitions (with S > Q some get none).
    2. Minimal movement: a partition changes owner only if its owner left or holds more
       than its new share; the ⌈Q/S⌉ shares go to the members that held most before. So
       moves == Σ max(0, new_count - old_count), and a leave moves only the leaver's.
    3. Spacing: any ``target_n`` consecutive partitions on distinct nodes where 1 and 2
       allow, so preference lists are the next N owners. Not always possible (e.g. S = 3
       needs 3 | Q), hence best effort: greedy fill, then owner swaps that cost no moves.

    Deterministic: depends only on the set of members, Q and ``prev``'s owners.
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
    q = partitions
    s = len(nodes)
    # Window within which owners should differ; never wider than the ring or the member set.
    w = max(1, min(target_n, s, q))

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
        mine.sort(key=lambda p: (-_crowding(owners, p, n, w, q), p))
        # First pass spreads the freed slots out (a newcomer taking two adjacent ones
        # would crowd itself); the second takes whatever is still needed.
        for spread in (True, False):
            for p in mine:
                if surplus == 0:
                    break
                if owners[p] is None or (spread and _near_free(owners, p, w, q)):
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
            key=lambda n: (_crowding(owners, p, n, w, q), -deficit[n], n),
        )
        owners[p] = owner
        deficit[owner] -= 1

    final: list[str] = [o for o in owners if o is not None]
    assert len(final) == q
    _improve_spacing(final, prev_owners, w, q)
    return Ring(q, tuple(final), prev.version + 1 if prev is not None else 1)


def _near_free(owners: Sequence[str | None], p: int, w: int, q: int) -> bool:
    return any(owners[(p + d) % q] is None or owners[(p - d) % q] is None for d in range(1, w))


def _crowding(owners: Sequence[str | None], p: int, node: str, w: int, q: int) -> int:
    """How many partitions within ``w - 1`` of ``p`` (either side) are owned by ``node``."""
    c = 0
    for d in range(1, w):
        if owners[(p + d) % q] == node:
            c += 1
        if owners[(p - d) % q] == node:
            c += 1
    return c


def _improve_spacing(
    owners: list[str], prev: tuple[str, ...] | None, w: int, q: int
) -> None:
    """Swap owners of two partitions when it removes crowding without adding a move.

    A swap keeps every member's count (balance holds); it is taken only if the number of
    partitions whose owner differs from ``prev`` does not grow, and only if it strictly
    lowers the number of same-owner pairs closer than ``w``, so this terminates.
    """
    if w < 2:
        return

    def moved(p: int) -> bool:
        return prev is None or prev[p] != owners[p]

    improved = True
    while improved:
        improved = False
        for i in range(q):
            oi = owners[i]
            ci = _crowding(owners, i, oi, w, q)
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
                    before = _crowding(owners, i, oi, w, q) + _crowding(owners, j, oj, w, q)
                    owners[i], owners[j] = oj, oi
                    after = _crowding(owners, i, oj, w, q) + _crowding(owners, j, oi, w, q)
                    if after < before:
                        improved = True
                        break
                    owners[i], owners[j] = oi, oj
                    continue
                cij = crowd_here.get(oj)
                if cij is None:
                    cij = crowd_here[oj] = _crowding(owners, i, oj, w, q)
                if cij >= ci:
                    continue
                if cij + _crowding(owners, j, oi, w, q) < ci + _crowding(owners, j, oj, w, q):
                    owners[i], owners[j] = oj, oi
                    improved = True
                    break


def crowded_partitions(ring: Ring, n: int = TARGET_N) -> int:
    """Partitions whose next ``n`` owners (itself included) are not all distinct."""
    q = ring.partitions
    w = min(n, len(ring.members), q)
    o = ring.owners
    return sum(1 for p in range(q) if len({o[(p + d) % q] for d in range(w)}) < w)
