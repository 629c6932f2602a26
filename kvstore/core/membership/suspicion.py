"""Lifeguard's suspicion timer: starts long and shortens as others independently agree.

A suspicion starts at `max_s`. Each confirmation from a distinct member (not the one that
raised it, and not a repeat) brings the deadline closer, following
``max(min, max − (max − min) · ln(C + 1) / ln(K + 1))`` for C confirmations out of K
expected. With K < 1 the timeout is simply `min_s`. The deadline is absolute, measured from
when this node started suspecting, so confirmations never extend it.
"""

from __future__ import annotations

import math

__all__ = ["Suspicion", "suspicion_timeout"]


def suspicion_timeout(confirmations: int, k: int, min_s: float, max_s: float) -> float:
    if k < 1:
        return min_s
    frac = math.log(confirmations + 1) / math.log(k + 1)
    return max(min_s, max_s - frac * (max_s - min_s))


class Suspicion:
    def __init__(self, start: float, k: int, min_s: float, max_s: float, raised_by: str) -> None:
        self.start = start
        self.k = k
        self.min_s = min_s
        self.max_s = max(min_s, max_s)
        self._seen = {raised_by}
        self.confirmations = 0
        # Whether this node has probed the suspect since (see Swim's re-check).
        self.rechecked = False

    def confirm(self, sender: str) -> bool:
        """Count `sender`'s agreement; True if it was new and moved the deadline."""
        if self.confirmations >= self.k or sender in self._seen:
            return False
        self._seen.add(sender)
        self.confirmations += 1
        return True

    @property
    def timeout_s(self) -> float:
        return suspicion_timeout(self.confirmations, self.k, self.min_s, self.max_s)

    @property
    def deadline(self) -> float:
        return self.start + self.timeout_s
