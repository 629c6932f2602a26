"""What the dashboard shows as "live": ops/s and p99 over the last few seconds, and the
event-loop lag, sampled by one background task of the node.

The lag is how late the monitor's own sleep wakes up: anything that holds the loop (a big
batch, a slow handler, a GC pause) shows up here as it does for every request.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from kvstore.runtime.observe.histogram import (
    LAG_BOUNDS_S,
    LATENCY_BOUNDS_S,
    Histogram,
    diff,
    quantile,
)
from kvstore.runtime.observe.requests import RequestStats

# The monitor wakes this often; the window of "live" figures is WINDOW_SAMPLES of them.
SAMPLE_INTERVAL_S = 0.5
WINDOW_SAMPLES = 10


class LiveStats:
    def __init__(self, requests: RequestStats) -> None:
        self.requests = requests
        self.loop_lag = Histogram(LAG_BOUNDS_S)
        self.last_lag_s = 0.0
        # (monotonic time, total requests, summed latency bucket counts of every op)
        self._samples: collections.deque[tuple[float, int, tuple[int, ...]]] = collections.deque(
            maxlen=WINDOW_SAMPLES + 1
        )

    def _sample(self, now: float) -> None:
        ops = self.requests.ops.values()
        buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)
        for s in ops:
            for i, n in enumerate(s.latency.counts):
                buckets[i] += n
        self._samples.append((now, self.requests.total_requests(), tuple(buckets)))

    def summary(self) -> dict[str, Any]:
        """ops/s and p99 (ms) over the window, the last loop lag (ms)."""
        self._sample(time.monotonic())
        if len(self._samples) < 2:
            return {"ops_s": 0.0, "p99_ms": None, "loop_lag_ms": round(self.last_lag_s * 1000, 2)}
        t0, n0, b0 = self._samples[0]
        t1, n1, b1 = self._samples[-1]
        self._samples.pop()  # the summary's own sample is not a monitor tick
        p99 = quantile(LATENCY_BOUNDS_S, diff(b1, b0), 0.99)
        return {
            "ops_s": round((n1 - n0) / max(t1 - t0, 1e-6), 1),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "loop_lag_ms": round(self.last_lag_s * 1000, 2),
        }

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + SAMPLE_INTERVAL_S
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            lag = max(0.0, loop.time() - planned)
            self.last_lag_s = lag
            self.loop_lag.observe(lag)
            self._sample(time.monotonic())
