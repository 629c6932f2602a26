"""keys.list paging (kvstore.runtime.keylist): however a partition is paged, its live keys
with the prefix come out once each, in order, and tombstones never."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.config import Settings
from kvstore.core import vclock
from kvstore.runtime.keylist import KeyList


class FakeEngine:
    def __init__(self, parts: dict[int, dict[bytes, bytes]]) -> None:
        self.parts = parts

    def table(self) -> dict[int, dict[bytes, bytes]]:
        return self.parts


def record(live: bool) -> bytes:
    obj = vclock.update(None, {}, b"v" if live else None, "n1", 1)
    return vclock.encode(obj)


def list_all(kl: KeyList, p: int, prefix: bytes, count: int) -> list[bytes]:
    async def go() -> list[bytes]:
        out: list[bytes] = []
        cursor: Any = None
        for _ in range(10_000):
            page = await kl.list(p, cursor, prefix, count)
            out += page["keys"]
            cursor = page["next"]
            if cursor is None:
                return out
        raise AssertionError("paging did not end")

    return asyncio.run(go())


@settings(max_examples=60, deadline=None)
@given(
    keys=st.dictionaries(st.binary(min_size=1, max_size=4), st.booleans(), max_size=60),
    prefix=st.sampled_from([b"", b"\x00", b"a", b"ab"]),
    count=st.integers(1, 8),
)
def test_paging_yields_each_live_key_once_in_order(keys: dict[bytes, bool], prefix: bytes, count: int) -> None:
    engine = FakeEngine({3: {k: record(live) for k, live in keys.items()}})
    kl = KeyList(Settings(keys_list_rate_per_s=10**9), engine)  # type: ignore[arg-type]
    got = list_all(kl, 3, prefix, count)
    assert got == sorted(k for k, live in keys.items() if live and k.startswith(prefix))


def test_budget_is_shared_and_charged_by_keys_scanned() -> None:
    engine = FakeEngine({0: {b"k%03d" % i: record(True) for i in range(100)}})
    kl = KeyList(Settings(keys_list_rate_per_s=1000, keys_list_page_keys=50), engine)  # type: ignore[arg-type]

    async def go() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await kl.list(0, None, b"", None)
        # A full page of 50 keys owes 50 ms of the budget from when it was scanned.
        assert kl._free_at >= t0 + 50 / 1000
        await kl.list(1, None, b"", None)
        # An empty partition owes one key's worth, not a page's.
        assert kl._free_at - loop.time() <= 1 / 1000

    asyncio.run(go())
    assert kl.scanned == 50
