"""A virtual clock for deterministic whole-cluster tests.

Time only moves when a test moves it. Callbacks run in (time, scheduling order), so two
callbacks due at the same instant always run in the order they were scheduled and a seeded
run replays exactly.

    clock = VirtualClock()
    clock.call_at(1.5, fire)          # or clock.call_later(0.5, fire)
    clock.advance(2.0)                # runs `fire` with clock.now == 1.5, ends at now == 2.0

A callback may schedule more callbacks, including at the current instant; those run within
the same `advance`. A time in the past is treated as "now" (time never runs backwards).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Timer", "VirtualClock"]


@dataclass(order=True, slots=True)
class Timer:
    """A scheduled callback; `cancel()` makes it a no-op."""

    when: float
    seq: int
    fn: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._heap: list[Timer] = []
        self._seq = itertools.count()

    @property
    def now(self) -> float:
        return self._now

    def time(self) -> float:
        """Same as `now`, for code that wants a `() -> float` clock function."""
        return self._now

    def call_at(self, when: float, fn: Callable[[], object]) -> Timer:
        t = Timer(max(float(when), self._now), next(self._seq), fn)
        heapq.heappush(self._heap, t)
        return t

    def call_later(self, delay: float, fn: Callable[[], object]) -> Timer:
        return self.call_at(self._now + max(0.0, delay), fn)

    def next_time(self) -> float | None:
        """When the earliest pending callback is due, or None when nothing is scheduled."""
        self._drop_cancelled()
        return self._heap[0].when if self._heap else None

    def pending(self) -> int:
        self._drop_cancelled()
        return sum(1 for t in self._heap if not t.cancelled)

    def step(self) -> bool:
        """Run the earliest pending callback (moving time to it); False when none is left."""
        self._drop_cancelled()
        if not self._heap:
            return False
        t = heapq.heappop(self._heap)
        self._now = t.when
        t.fn()
        return True

    def run_until(self, when: float) -> None:
        """Run every callback due at or before `when`, then set the time to `when`."""
        while True:
            nxt = self.next_time()
            if nxt is None or nxt > when:
                break
            self.step()
        self._now = max(self._now, float(when))

    def advance(self, dt: float) -> None:
        self.run_until(self._now + max(0.0, dt))

    def _drop_cancelled(self) -> None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
