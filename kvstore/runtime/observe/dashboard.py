"""The HTTP routes of a node: /metrics for Prometheus, the dashboard page and the JSON it
polls.

/api/cluster is this node's view of the whole cluster: the ring, every member with its SWIM
state (as this node's gossip sees it) and the live figures each member reports about itself
over the authenticated RPC port (``node.ops``). So a browser talks to one node's HTTP port
only, and a dead member shows as what gossip says of it (suspect, dead) and unreachable.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kvstore.errors import KVError
from kvstore.runtime.observe.collector import registry_for
from kvstore.runtime.observe.http import Response, Route
from kvstore.runtime.observe.source import ObservedNode

# The RPC method each node answers with its own live figures.
OPS_METHOD = "node.ops"
# How long a member may take to report; a slower one shows as unreachable this round.
PEER_TIMEOUT_S = 0.75
# Several open dashboards share one fan-out per this interval.
CACHE_S = 0.5

STATIC = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.html": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


def _static(name: str) -> bytes:
    return importlib.resources.files("kvstore.runtime.observe").joinpath("static", name).read_bytes()


def ops_summary(node: ObservedNode) -> dict[str, Any]:
    """This node's live figures (the ``node.ops`` RPC and a row of the dashboard)."""
    hints = getattr(node, "hints", None)
    transfers = node.handoff.status() if node.handoff is not None else None
    ring = node.view.ring if node.view is not None else None
    return {
        "node": node.name,
        **node.obs.live.summary(),
        "hints_pending": dict(hints.pending) if hints is not None else {},
        "transfers": transfers,
        "keys": node.engine.count() if node.engine is not None else 0,
        "partitions": len(ring.owned_by(node.name)) if ring else 0,
    }


class ClusterDoc:
    def __init__(self, node: ObservedNode) -> None:
        self.node = node
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> dict[str, Any]:
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < CACHE_S:
                return self._cached[1]
            doc = await self._build()
            self._cached = (time.monotonic(), doc)
            return doc

    async def _peer(self, name: str) -> dict[str, Any] | None:
        n = self.node
        assert n.view is not None
        if name == n.name:
            return ops_summary(n)
        try:
            r = await n.rpc.call(n.view.addr_of(name), OPS_METHOD, [], PEER_TIMEOUT_S)
        except (KVError, OSError):
            return None
        return r if isinstance(r, dict) else None

    async def _build(self) -> dict[str, Any]:
        n = self.node
        view = n.view
        assert view is not None
        ring, nxt = view.ring, view.next
        if ring is not None:  # the ring this node started with is history too
            n.obs.on_ring(ring.version, nxt.version if nxt else None)
        names = sorted(set(view.members()) | {m.name for m in (n.gossip.members() if n.gossip and n.gossip_on else [])})
        reports = await asyncio.gather(*(self._peer(x) for x in names))
        members = []
        for name, rep in zip(names, reports, strict=True):
            members.append({
                "name": name,
                "addr": view.addrs.get(name, ""),
                "in_ring": name in view.members(),
                "up": view.is_up(name),
                **n.swim_fields(name),
                "reachable": rep is not None,
                "partitions": len(ring.owned_by(name)) if ring else 0,
                "next_partitions": len(nxt.owned_by(name)) if nxt else None,
                "report": rep,
            })
        return {
            "node": n.name,
            "ts": time.time(),
            "ring": None if ring is None else {
                "version": ring.version,
                "partitions": ring.partitions,
                "owners": list(ring.owners),
                "next": None if nxt is None else {"version": nxt.version, "owners": list(nxt.owners)},
            },
            "members": members,
            "events": list(n.obs.history),
        }


def routes(node: ObservedNode) -> dict[str, Route]:
    registry = registry_for(node)
    cluster = ClusterDoc(node)

    async def metrics() -> Response:
        return Response(200, CONTENT_TYPE_LATEST, generate_latest(registry))

    async def api_cluster() -> Response:
        return Response(200, "application/json", json.dumps(await cluster.get()).encode())

    async def api_node() -> Response:
        return Response(200, "application/json", json.dumps(ops_summary(node)).encode())

    out: dict[str, Route] = {"/metrics": metrics, "/api/cluster": api_cluster, "/api/node": api_node}
    for path, (fname, ctype) in STATIC.items():
        body = _static(fname)

        async def page(body: bytes = body, ctype: str = ctype) -> Response:
            return Response(200, ctype, body, cache="no-cache")

        out[path] = page
    return out
