"""This node's view of the cluster: the ring, where each member listens, and who is up.

The ring changes only by explicit, versioned updates (join/leave); a member that stops
answering stays in the ring and is merely skipped while it is down (Dynamo's rule).
The view is persisted in the store's metadata so a restarted node comes back with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgpack
from storage.engine import Engine

from kvstore.core.ring import Ring
from kvstore.errors import InvalidRequest

log = logging.getLogger("kvstore.cluster")

META_KEY = b"cluster.view"


class ClusterView:
    def __init__(self, name: str, addr: str, engine: Engine) -> None:
        self.name = name
        self.addr = addr
        self.engine = engine
        self.ring: Ring | None = None
        self.addrs: dict[str, str] = {name: addr}
        # Liveness sources, consulted in order; any that says "down" wins. The RPC client's
        # fail-fast state is one; SWIM plugs in another.
        self.down_checks: list[Callable[[str, str], bool]] = []
        self.listeners: list[Callable[[Ring], None]] = []

    # --- persistence
    def load(self) -> bool:
        raw = self.engine.meta_get(META_KEY)
        if raw is None:
            return False
        doc = msgpack.unpackb(raw, raw=False)
        self.ring = Ring.from_wire(doc["ring"])
        self.addrs.update(doc["addrs"])
        self.addrs[self.name] = self.addr
        return True

    async def save(self) -> None:
        assert self.ring is not None
        doc = {"ring": self.ring.to_wire(), "addrs": self.addrs}
        await self.engine.meta_put(META_KEY, msgpack.packb(doc, use_bin_type=True))

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
        return not any(check(node, addr) for check in self.down_checks)

    def to_wire(self) -> dict[str, Any]:
        assert self.ring is not None
        return {"ring": self.ring.to_wire(), "addrs": dict(self.addrs)}

    # --- updates
    def accept(self, ring: Ring, addrs: dict[str, str]) -> bool:
        """Take a ring from a peer if it is newer; addresses are merged either way."""
        for n, a in addrs.items():
            if n != self.name:
                self.addrs[n] = a
        cur = self.ring
        newer = cur is None or ring.version > cur.version or (
            ring.version == cur.version and ring.checksum > cur.checksum
        )
        if newer:
            self.ring = ring
            log.info(
                "ring v%d (checksum %x): %d members, %d partitions owned here",
                ring.version,
                ring.checksum,
                len(ring.members),
                len(ring.owned_by(self.name)),
            )
            for cb in self.listeners:
                cb(ring)
        return newer
