"""When a failed request may go on to the next node, and which nodes go last for a while.

One policy for every hop that picks among several nodes for one request: the client
choosing a coordinator, and a coordinator forwarding to a node of the key's preference list.

    error          idempotent (get)    not idempotent (put, delete)
    Unreachable    next node           next node only if certainly not sent (``was_sent``)
    Timeout        next node           stop: the outcome is unknown
    Unavailable    next node (*)       stop: the write may be stored on some replicas
    anything else  stop                stop: the same request would fail the same way

(*) unless ``retry_unavailable`` is off. A node that timed out or answered Unavailable is
demoted: tried last for ``demote_s``, so the next requests start with a node that may do
better (one on the majority side of a partition, say), while the request that saw the error
is retried only as the table says.

Pure: the time is passed in, so the rules run in tests without a clock or a loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kvstore.errors import Timeout, Unavailable, Unreachable, was_sent

__all__ = ["Demoted", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retry_unavailable: bool = True
    demote_s: float = 2.0

    def try_next(self, exc: BaseException, *, idempotent: bool) -> bool:
        """Whether the request that failed with ``exc`` may be sent to the next node."""
        if isinstance(exc, Unreachable):
            return idempotent or not was_sent(exc)
        if isinstance(exc, Timeout):
            return idempotent
        if isinstance(exc, Unavailable):
            return idempotent and self.retry_unavailable
        return False

    def demotes(self, exc: BaseException) -> bool:
        """Whether the node that failed with ``exc`` should be tried last for a while: it
        answered, so it is up, but it may be on the wrong side of a partition or overloaded."""
        return isinstance(exc, (Timeout, Unavailable))


class Demoted:
    """Nodes to try last until their time is up (``now`` in any monotonic seconds)."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self._until: dict[str, float] = {}

    def add(self, node: str, now: float) -> None:
        self._until[node] = now + self.hold_s

    def order(self, nodes: Iterable[str], now: float) -> list[str]:
        """``nodes`` with the demoted ones last, the order kept within each group."""
        out = list(nodes)
        if self._until:
            self._until = {n: t for n, t in self._until.items() if t > now}
            out.sort(key=lambda n: n in self._until)
        return out
