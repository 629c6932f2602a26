"""A fixed-bucket histogram cheap enough for the request path: a binary search and two adds.

Buckets are Prometheus-style upper bounds (``le``): a value goes into the first bucket whose
bound is >= the value, the last bucket (+Inf) takes the rest. Counts are per bucket (not
cumulative) so that the difference of two snapshots is again a histogram: the dashboard's
p99 over the last seconds is computed from such a difference.
"""

from __future__ import annotations

from collections.abc import Sequence

# Request latencies: 50 µs .. 10 s (a quorum request on loopback takes ~0.2-2 ms).
LATENCY_BOUNDS_S: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
)
# fsyncs and snapshot-sized work: 100 µs .. 10 s.
DISK_BOUNDS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)
# Event-loop lag past the monitor's planned wake-up: 1 ms .. 5 s.
LAG_BOUNDS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
# Siblings a read returns (0: not found or deleted).
SIBLING_BOUNDS: tuple[float, ...] = (0, 1, 2, 3, 5, 10, 25, 100)
# Operations in one storage write batch (group commit: all writes of one loop turn).
BATCH_BOUNDS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be strictly increasing")
        # Floats, whatever was given: bisect compares each value with them, and a float
        # against an int takes CPython's slow mixed-type comparison.
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left written out: compiled, the bounds compare as C doubles, where the
        # builtin compares Python floats through the generic protocol (~1k instructions of a
        # request's metrics, twice for a get).
        bounds = self.bounds
        lo = 0
        hi = len(bounds)
        while lo < hi:
            mid = (lo + hi) >> 1
            if bounds[mid] < value:
                lo = mid + 1
            else:
                hi = mid
        self.counts[lo] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def snapshot(self) -> tuple[int, ...]:
        return tuple(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs as Prometheus wants them, ending with +Inf."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """Upper bound of the bucket holding the ``q`` quantile (an overestimate by at most one
    bucket, as Prometheus's histogram_quantile without interpolation); None if empty. For the
    +Inf bucket, the largest finite bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank and n:
            return float(bounds[i]) if i < len(bounds) else float(bounds[-1])
    return float(bounds[-1])


def diff(new: Sequence[int], old: Sequence[int]) -> list[int]:
    """Per-bucket counts observed between two snapshots of one histogram."""
    return [a - b for a, b in zip(new, old, strict=True)]
