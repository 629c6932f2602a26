"""What the metrics collector and the dashboard read of a node.

:class:`kvstore.runtime.node.Node` has all of it; naming it here as a protocol lets the
observe modules read a node without importing the module that builds them (node.py wires
the collector and the dashboard in, so an import back would close a circle).
"""

from __future__ import annotations

from typing import Any, Protocol

from kvstore.runtime.antientropy import AntiEntropy
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.coordinator import Coordinator
from kvstore.runtime.gossip import Gossip
from kvstore.runtime.handoff import Handoff
from kvstore.runtime.observe.state import Observability
from kvstore.runtime.rpc import RpcClient
from storage.engine import Engine


class ObservedNode(Protocol):
    """A node as observe sees it: read-only, and None where a part is not started yet."""

    @property
    def name(self) -> str: ...

    @property
    def obs(self) -> Observability: ...

    @property
    def rpc(self) -> RpcClient: ...

    @property
    def view(self) -> ClusterView | None: ...

    @property
    def engine(self) -> Engine | None: ...

    @property
    def coord(self) -> Coordinator | None: ...

    @property
    def handoff(self) -> Handoff | None: ...

    @property
    def aae(self) -> AntiEntropy | None: ...

    @property
    def gossip(self) -> Gossip | None: ...

    @property
    def gossip_on(self) -> bool:
        """Gossip is running (started, not stopped): its members may be asked for."""
        ...

    def swim_fields(self, node: str) -> dict[str, Any]:
        """``node``'s SWIM state as this node's gossip sees it (a status row's fields)."""
        ...
