"""``keys.list``: one page of the live keys one node holds in one partition, for ``kv keys``.

A listing walks the whole store, which a request must never wait behind (Riak's list-keys
was notorious for it). So a call does a bounded amount of work and then returns:

- it scans at most ``keys_list_page_keys`` keys of one partition, in key order, after a
  cursor (the last key of the previous page), keeping those that start with the prefix and
  are not only tombstones;
- every page is paid for from one budget per node, ``keys_list_rate_per_s`` keys scanned a
  second for all listings together: a page past it waits before its reply goes out (the
  next page is asked for only then), so the loop serves requests meanwhile, however many
  clients list at once.

Pages are cut from the in-memory table (the working set), never from LevelDB. A partition's
keys are sorted for each page, which is cheap while partitions are small (keys / Q) and makes
the cursor stable across writes: a key written meanwhile is listed or not, but no key that
was there throughout is skipped or listed twice. The client asks one replica per partition
(kvstore's partitions never overlap, so each key is listed once) and goes on to another
replica with the same cursor if that one fails.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from typing import Any

from kvstore.config import Settings
from kvstore.core import messages as m
from kvstore.core.vclock import record_summary
from kvstore.errors import InvalidRequest
from storage.engine import Engine

__all__ = ["KeyList", "handlers"]


class KeyList:
    """The ``keys.list`` handler of one node, with the node-wide scan budget."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.engine = engine
        self.rate_per_s = settings.keys_list_rate_per_s
        self.page_keys = settings.keys_list_page_keys
        self.partitions = settings.partitions
        # When the budget is next free (loop time): a leaky bucket that every page pays into.
        self._free_at = 0.0
        self.scanned = 0

    async def _pace(self, cost_keys: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._free_at)
        self._free_at = start + cost_keys / self.rate_per_s
        # Always yield once, so back-to-back pages of many listings interleave with requests.
        await asyncio.sleep(start - now)

    def page(self, partition: int, after: bytes | None, prefix: bytes, count: int) -> tuple[list[bytes], bytes | None, int]:
        """Live keys of ``partition`` after ``after`` starting with ``prefix``, scanning at
        most ``count`` keys; the cursor to continue from (None when the partition is done),
        and how many keys were scanned."""
        table = self.engine.table().get(partition)
        if not table:
            return [], None, 0
        keys = sorted(table)
        i = 0 if after is None else bisect.bisect_right(keys, after)
        if prefix:
            i = max(i, bisect.bisect_left(keys, prefix))
        out: list[bytes] = []
        end = min(len(keys), i + count)
        last: bytes | None = None
        scanned = 0
        for k in keys[i:end]:
            if prefix and not k.startswith(prefix):
                return out, None, scanned  # sorted: past the prefix's keys
            scanned += 1
            last = k
            rec = table.get(k)
            if rec is not None and record_summary(rec)[1] is None:
                out.append(k)
        return out, (last if end < len(keys) else None), scanned

    async def list(self, raw_p: Any, raw_after: Any = None, raw_prefix: Any = b"", raw_count: Any = None) -> dict[str, Any]:
        p = m.check_partition(raw_p)
        if p >= self.partitions:
            raise InvalidRequest(f"partition {p} out of range (the ring has {self.partitions})")
        after = None if raw_after is None else m.as_bytes(raw_after, "cursor")
        prefix = m.as_bytes(raw_prefix or b"", "prefix")
        count = self.page_keys
        if raw_count is not None:
            if isinstance(raw_count, bool) or not isinstance(raw_count, int) or raw_count < 1:
                raise InvalidRequest(f"count must be a positive integer, got {raw_count!r}")
            count = min(count, raw_count)
        keys, nxt, scanned = self.page(p, after, prefix, count)
        self.scanned += scanned
        # Paid after the scan, by what it scanned (the scan itself is bounded by count): a
        # nearly empty partition costs next to nothing, a full page its share of the rate.
        await self._pace(max(1, scanned))
        return {"keys": keys, "next": nxt}


def handlers(settings: Settings, engine: Engine) -> dict[str, Callable[..., Any]]:
    """The RPC methods of key listing, for the node's server."""
    kl = KeyList(settings, engine)
    return {m.KEYS_LIST: kl.list}
