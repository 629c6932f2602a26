"""The queue of membership updates waiting to be piggybacked (infection-style dissemination).

One entry per member: a newer update about a member replaces (invalidates) any older one
still queued, since only the latest claim matters. Each packet takes the least-transmitted
updates first and, among equals, the newest first — fresh news spreads fastest — as many as
fit in the byte budget (smaller ones may fill the gap a large one left). An update is dropped
after `limit` transmissions; the caller computes the limit from the cluster size
(retransmit_mult × ceil(log10(N + 1))) each time, as the cluster grows and shrinks.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.core.membership.wire import Update, encode_update

__all__ = ["BroadcastQueue"]


@dataclass(slots=True)
class _Entry:
    update: Update
    data: bytes
    transmits: int
    order: int


class BroadcastQueue:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, update: Update) -> None:
        self._order += 1
        self._entries[update.name] = _Entry(update, encode_update(update), 0, self._order)

    def discard(self, name: str) -> None:
        self._entries.pop(name, None)

    def take(
        self, budget: int, limit: int, *, skip: frozenset[str] = frozenset()
    ) -> list[tuple[Update, bytes]]:
        """Updates whose encodings fit in `budget` bytes, counting one transmission each.

        `skip` names members whose update the caller already put in this packet.
        """
        if not self._entries or budget <= 0:
            return []
        out: list[tuple[Update, bytes]] = []
        for e in sorted(self._entries.values(), key=lambda e: (e.transmits, -e.order)):
            if budget <= 0:
                break
            if e.update.name in skip or len(e.data) > budget:
                continue
            budget -= len(e.data)
            out.append((e.update, e.data))
            e.transmits += 1
            if e.transmits >= limit:
                del self._entries[e.update.name]
        return out

    def pending(self) -> list[tuple[Update, int]]:
        """(update, transmissions so far), in the order the next packet would take them."""
        return [
            (e.update, e.transmits)
            for e in sorted(self._entries.values(), key=lambda e: (e.transmits, -e.order))
        ]
