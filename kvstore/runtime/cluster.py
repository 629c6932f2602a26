"""This node's view of the cluster: the ring, a pending ring change, where each member
listens, and who is up.

The ring changes only by explicit, versioned updates (join/leave); a member that stops
answering stays in the ring and is merely skipped while it is down (Dynamo's rule).
A change is two-phase: ``next`` is the ring being moved to while partitions are handed
off (reads still follow ``ring``, writes go to both); once every transfer is done the
change is committed and ``next`` becomes ``ring``. The view is versioned by the highest
ring version it holds, and persisted in the store's metadata so a restarted node comes back
with it.

Every cluster has an id, made by the node that founds it and taken by each node that joins.
A view from a cluster of another id is refused whole (ring, pending ring and addresses): an
address reused by a node of another cluster must not hand this one its members.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack

from kvstore.core.ring import Ring, partition_hash, partition_of, partition_shift
from kvstore.errors import ForeignCluster, InvalidRequest
from storage.engine import Engine

_partition_hash: Final = partition_hash  # a static, not a globals lookup per request

log = logging.getLogger("kvstore.cluster")

META_KEY: Final = b"cluster.view"


def _mix(ring_checksum: int, next_checksum: int) -> int:
    """One 64-bit checksum of a view (ring and pending ring), fit for msgpack."""
    return (ring_checksum ^ (next_checksum * 31)) & 0xFFFF_FFFF_FFFF_FFFF


def _str(x: Any) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


class ClusterView:
    def __init__(
        self,
        name: str,
        addr: str,
        engine: Engine,
        n: int,
        *,
        down_checks: Sequence[Callable[[str, str], bool]] = (),
        listeners: Sequence[Callable[[], None]] = (),
        rank: Callable[[str], int] | None = None,
    ) -> None:
        self.name = name
        self.addr = addr
        self.engine = engine
        self.n = n
        self.ring: Ring | None = None
        self.next: Ring | None = None
        self._replicated: frozenset[int] = frozenset()
        self._replicated_for: tuple[Ring | None, Ring | None] = (None, None)
        # The current ring's placement, per partition (kept for the ring it was made from):
        # every request asks for it, and a list index is the cheapest lookup there is.
        self._placed_for: Ring | None = None
        self._prefs: list[tuple[str, ...]] = []
        self._shift = 64  # partition_shift of the placed ring (kvstore.core.ring)
        self._falls: list[tuple[str, ...]] = []
        self.addrs: dict[str, str] = {name: addr}
        # The cluster's id; "" until this node founds or joins one (or for a view saved
        # before ids existed: such a view takes the first id a peer brings).
        self.cluster = ""
        # Liveness sources; any that says "down" wins (the RPC client's fail-fast state, SWIM).
        self.down_checks = tuple(down_checks)
        # Called after every change of ring or pending change.
        self.listeners = tuple(listeners)
        # Preference among live nodes (0 first): SWIM ranks a damped member after healthy ones.
        self.rank: Callable[[str], int] = rank or (lambda _node: 0)

    @property
    def version(self) -> int:
        v = self.ring.version if self.ring else 0
        return max(v, self.next.version) if self.next else v

    @property
    def checksum(self) -> int:
        c = self.ring.checksum if self.ring else 0
        return _mix(c, self.next.checksum if self.next else 0)

    # --- persistence and wire form
    def to_wire(self) -> dict[str, Any]:
        return {
            "ring": self.ring.to_wire() if self.ring else None,
            "next": self.next.to_wire() if self.next else None,
            "addrs": dict(self.addrs),
            "cluster": self.cluster,
        }

    @staticmethod
    def parse(doc: Any) -> tuple[Ring | None, Ring | None, dict[str, str], str]:
        """A view's ring, pending ring, addresses and cluster id ("" from a node that has none)."""
        if not isinstance(doc, dict):
            raise InvalidRequest("cluster view must be a map")
        d = {_str(k): v for k, v in doc.items()}
        ring = Ring.from_wire(d["ring"]) if d.get("ring") is not None else None
        nxt = Ring.from_wire(d["next"]) if d.get("next") is not None else None
        addrs = d.get("addrs") or {}
        if not isinstance(addrs, dict):
            raise InvalidRequest("cluster view: addrs must be a map")
        cluster = d.get("cluster") or ""
        if not isinstance(cluster, (str, bytes)):
            raise InvalidRequest("cluster view: cluster must be a string")
        return ring, nxt, {_str(k): _str(v) for k, v in addrs.items()}, _str(cluster)

    def load(self) -> bool:
        raw = self.engine.meta_get(META_KEY)
        if raw is None:
            return False
        self.ring, self.next, addrs, self.cluster = self.parse(msgpack.unpackb(raw, raw=False))
        self.addrs.update(addrs)
        self.addrs[self.name] = self.addr
        return True

    async def save(self) -> None:
        """Store the view durably (fsynced, whatever the fsync policy): a node that lost it in
        a crash would come back as the founder of a cluster of its own, with an id its peers
        refuse. Ring changes are rare, so the fsync costs the data path nothing."""
        await self.engine.meta_put(META_KEY, msgpack.packb(self.to_wire(), use_bin_type=True))
        await self.engine.flush()

    # --- queries
    def addr_of(self, node: str) -> str:
        try:
            return self.addrs[node]
        except KeyError:
            raise InvalidRequest(f"unknown node {node!r}") from None

    def is_up(self, node: str) -> bool:
        if node == self.name:
            return True
        addr = self.addrs.get(node)
        if addr is None:
            return False
        for check in self.down_checks:  # noqa: SIM110  (no generator: asked for every target of every request)
            if check(node, addr):
                return False
        return True

    def by_preference(self, nodes: tuple[str, ...] | list[str]) -> list[str]:
        """Live nodes first, healthier first, keeping the given order among equals."""
        return sorted(nodes, key=lambda n: (not self.is_up(n), self.rank(n)))

    def members(self) -> tuple[str, ...]:
        """Everyone in the current or the pending ring."""
        names = set(self.ring.members if self.ring else ())
        if self.next:
            names |= set(self.next.members)
        return tuple(sorted(names))

    def _place(self, ring: Ring) -> None:
        if ring is not self._placed_for:
            n, q = self.n, ring.partitions
            self._prefs = [ring.preference_list(p, n) for p in range(q)]
            self._falls = [ring.fallbacks(p, n) for p in range(q)]
            self._shift = partition_shift(q)
            self._placed_for = ring

    def read_preference(self, p: int) -> tuple[str, ...]:
        ring = self.ring
        assert ring is not None
        self._place(ring)
        if 0 <= p < len(self._prefs):
            return self._prefs[p]
        return ring.preference_list(p, self.n)  # raises: out of range

    def locate(self, ring: Ring, key: bytes) -> tuple[int, tuple[str, ...]]:
        """``key``'s partition in ``ring`` and its preference list."""
        if ring is not self.ring:
            p = partition_of(key, ring.partitions)
            return p, ring.preference_list(p, self.n)
        self._place(ring)
        # partition_of with the placed ring's shift: no call into the interpreted ring module.
        p = _partition_hash(key) >> self._shift
        return p, self._prefs[p]

    def fallbacks(self, ring: Ring, p: int) -> tuple[str, ...]:
        """Where a sloppy quorum for ``p`` goes after its preference list."""
        if ring is self.ring:
            self._place(ring)
            if 0 <= p < len(self._falls):
                return self._falls[p]
        return ring.fallbacks(p, self.n)

    def replicates(self, p: int) -> bool:
        """This node is a replica of ``p`` in the ring or in a pending change: the only
        partitions it may store, serve or merge into (anything else it holds is stale)."""
        ring, nxt = self.ring, self.next
        if ring is None:
            return False
        # Asked for every replica op: the answer is kept per (ring, pending change).
        if ring is not self._replicated_for[0] or nxt is not self._replicated_for[1]:
            mine = {q for q in range(ring.partitions) if self.name in ring.preference_list(q, self.n)}
            if nxt is not None:
                mine |= {q for q in range(nxt.partitions) if self.name in nxt.preference_list(q, self.n)}
            self._replicated = frozenset(mine)
            self._replicated_for = (ring, nxt)
        return p in self._replicated

    def extra_write_targets(self, p: int) -> tuple[str, ...]:
        """During a ring change: the new replicas of ``p`` that are not yet old ones."""
        if self.next is None:
            return ()
        old = self.read_preference(p)
        return tuple(x for x in self.next.preference_list(p, self.n) if x not in old)

    # --- updates
    def found(self, ring: Ring) -> None:
        """Take ``ring`` as the first ring of a new cluster, under a new cluster id."""
        self.ring, self.next = ring, None
        self.cluster = secrets.token_hex(8)
        log.info("founded cluster %s", self.cluster)
        for cb in self.listeners:
            cb()

    def mint(self) -> bool:
        """Give a cluster whose view predates cluster ids one (its claimant does, once)."""
        if self.cluster or self.ring is None:
            return False
        self.cluster = secrets.token_hex(8)
        log.info("this cluster had no id: it is now %s", self.cluster)
        for cb in self.listeners:
            cb()
        return True

    def accept(self, ring: Ring | None, nxt: Ring | None, addrs: dict[str, str], cluster: str = "") -> bool:
        """Take a view from a peer if it is newer; addresses are merged either way. Returns
        whether anything changed that is saved. A view of another cluster raises
        ForeignCluster and changes nothing; the first id a node without one sees is its own."""
        if cluster and self.cluster and cluster != self.cluster:
            raise ForeignCluster(
                f"{self.name} belongs to cluster {self.cluster}; refused a view of cluster {cluster}",
                cluster=cluster,
            )
        adopted = bool(cluster) and not self.cluster
        if adopted:
            self.cluster = cluster
            log.info("member of cluster %s", cluster)
        for node, a in addrs.items():
            if node != self.name:
                self.addrs[node] = a
        newer = ring is not None and self._newer(ring, nxt)
        if not newer:
            if adopted:
                for cb in self.listeners:
                    cb()
            return adopted
        assert ring is not None
        self.ring, self.next = ring, nxt
        if nxt is None:
            log.info(
                "ring v%d: %d members, %d partitions owned here",
                ring.version, len(ring.members), len(ring.owned_by(self.name)),
            )
        else:
            log.info("ring change to v%d pending: %s -> %s", nxt.version, ",".join(ring.members), ",".join(nxt.members))
        for cb in self.listeners:
            cb()
        return True

    def _newer(self, ring: Ring, nxt: Ring | None) -> bool:
        v = max(ring.version, nxt.version) if nxt else ring.version
        c = _mix(ring.checksum, nxt.checksum if nxt else 0)
        return v > self.version or (v == self.version and c > self.checksum)
