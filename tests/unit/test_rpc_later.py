"""Gathered: an answer made of slots, given exactly once (returned, or to the callback)."""

from __future__ import annotations

import asyncio
from typing import Any

from kvstore.runtime.rpc.later import LATER, Gathered


def test_all_slots_in_before_the_answer_is_returned_and_the_callback_never_called() -> None:
    calls: list[Any] = []
    g = Gathered(["a", "b"], lambda result, exc: calls.append((result, exc)), pending=2)
    g.out[0] = 1
    g.one_less()
    g.out[1] = 2
    g.one_less()
    assert g.answer() == [1, 2]
    assert calls == []  # a second reply for the same request would be a protocol error


def test_a_slot_in_later_goes_to_the_callback_once() -> None:
    calls: list[Any] = []
    g = Gathered([None], lambda result, exc: calls.append((result, exc)), pending=1)
    assert g.answer() is LATER
    assert calls == []
    g.out[0] = "x"
    g.one_less()
    assert calls == [(["x"], None)]


def test_without_a_callback_a_future() -> None:
    async def main() -> Any:
        g = Gathered([None], None, pending=1)
        fut = g.answer()
        assert isinstance(fut, asyncio.Future) and not fut.done()
        g.out[0] = 7
        g.one_less()
        return await fut

    assert asyncio.run(main()) == [7]
