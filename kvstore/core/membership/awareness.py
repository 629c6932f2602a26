"""Lifeguard local health: how much this node should distrust its own view of others.

A node that misses nacks, fails probes or has to refute suspicions about itself is likely
the slow one (overloaded, paused, on a lossy link). Its score rises and it stretches its
probe period and timeout by (score + 1), so it accuses others less eagerly; each clean
probe lowers the score again. The score is bounded to 0 .. max_multiplier − 1.
"""

from __future__ import annotations

__all__ = ["Awareness"]


class Awareness:
    def __init__(self, max_multiplier: int, *, enabled: bool = True) -> None:
        self.max_multiplier = max(1, max_multiplier)
        self.enabled = enabled
        self._score = 0

    @property
    def score(self) -> int:
        return self._score

    def apply(self, delta: int) -> int:
        """Change the score by `delta`, clamped to its bounds; returns the new score."""
        if self.enabled:
            self._score = min(self.max_multiplier - 1, max(0, self._score + delta))
        return self._score

    def scale(self, seconds: float) -> float:
        return seconds * (self._score + 1)
