"""One timer for the deadlines of every request in flight.

A timer per request (``loop.call_at``, then a cancel when it answers first, as nearly all
do) cost a heap push, a handle and a cancel per request. Deadlines are kept instead in
buckets of ``RESOLUTION_S`` and one sweep, armed only while any is pending, ticks the
requests whose bucket has passed: a request's timeout fires at most ``RESOLUTION_S`` late,
which is small against request timeouts (seconds) and the half of them primaries get.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, Generic, Protocol, TypeVar

RESOLUTION_S: Final = 0.01
_PER_S: Final = 100  # buckets per second, 1 / RESOLUTION_S


def _bucket(deadline: float) -> int:
    """The first bucket that ends after ``deadline``: floor + 1 in float arithmetic (compiled,
    native), where math.ceil was a call through Python's protocol for every add and discard.
    A bucket is swept at its end, so a deadline is ticked no sooner, at most RESOLUTION_S late."""
    return int(deadline * _PER_S) + 1


class _Ticks(Protocol):
    def tick(self, now: float) -> None: ...


T = TypeVar("T", bound=_Ticks)


class Deadlines(Generic[T]):
    def __init__(self, loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self._get_loop = loop
        self._buckets: dict[int, set[T]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for: int | None = None

    def add(self, deadline: float, item: T) -> None:
        """Tick ``item`` once ``deadline`` has passed (unless discarded before)."""
        b = _bucket(deadline)
        items = self._buckets.get(b)
        if items is None:
            items = self._buckets[b] = set()
            if self._armed_for is None or b < self._armed_for:
                self._arm(b)
        items.add(item)

    def discard(self, deadline: float, item: T) -> None:
        """``item`` no longer needs the tick at ``deadline`` (it finished first): dropped
        now, so a finished request is not held until its deadline."""
        b = _bucket(deadline)
        items = self._buckets.get(b)
        if items is not None:
            items.discard(item)
            if not items:
                del self._buckets[b]

    def _arm(self, b: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = b
        self._timer = self._get_loop().call_at(b * RESOLUTION_S, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        self._armed_for = None
        now = self._get_loop().time()
        due = [b for b in self._buckets if b * RESOLUTION_S <= now]
        due.sort()
        for b in due:
            for item in self._buckets.pop(b, ()):
                item.tick(now)
        if self._buckets and self._armed_for is None:
            self._arm(min(self._buckets))

    def __len__(self) -> int:
        return sum(len(v) for v in self._buckets.values())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buckets.clear()
        self._armed_for = None
