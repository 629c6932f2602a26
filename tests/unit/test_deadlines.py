"""The coordinator's one deadline sweep (kvstore.runtime.deadlines) on a real event loop."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from kvstore.runtime.deadlines import RESOLUTION_S, Deadlines, _bucket


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False) | st.integers(0, 10**7).map(lambda i: i / 100))
def test_a_deadline_is_swept_not_before_it_and_at_most_one_resolution_late(deadline: float) -> None:
    # The sweep compares bucket * RESOLUTION_S with the loop's time, so that product is what
    # must not come before the deadline (bucket boundaries included).
    end = _bucket(deadline) * RESOLUTION_S
    assert deadline <= end <= deadline + RESOLUTION_S * 1.000001


class Item:
    def __init__(self) -> None:
        self.ticks: list[float] = []

    def tick(self, now: float) -> None:
        self.ticks.append(now)


async def test_items_tick_once_after_their_deadline_and_discarded_ones_never() -> None:
    loop = asyncio.get_running_loop()
    d: Deadlines[Item] = Deadlines(lambda: loop)
    t0 = loop.time()
    early, late, gone = Item(), Item(), Item()
    d.add(t0 + 0.20, late)
    d.add(t0 + 0.05, early)
    d.add(t0 + 0.05, gone)
    d.discard(t0 + 0.05, gone)
    assert len(d) == 2
    deadline = t0 + 30
    while (not early.ticks or not late.ticks) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert len(early.ticks) == 1 and early.ticks[0] >= t0 + 0.05
    assert len(late.ticks) == 1 and late.ticks[0] >= t0 + 0.20
    assert early.ticks[0] <= late.ticks[0]
    assert gone.ticks == []
    assert len(d) == 0
    # Nothing pending: no timer left armed.
    assert d._timer is None
    d.close()


async def test_an_item_added_after_a_sweep_rearms_it() -> None:
    loop = asyncio.get_running_loop()
    d: Deadlines[Item] = Deadlines(lambda: loop)
    a = Item()
    d.add(loop.time() + RESOLUTION_S, a)
    while not a.ticks:
        await asyncio.sleep(0.005)
    b = Item()
    d.add(loop.time() + RESOLUTION_S, b)
    while not b.ticks:
        await asyncio.sleep(0.005)
    assert len(a.ticks) == len(b.ticks) == 1
    d.close()
