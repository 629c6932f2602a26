"""Which member to probe next: round-robin over a shuffled list (SWIM §4.3).

Walking a random permutation bounds the time until any given member is probed (at most two
rounds) while keeping targets unpredictable. At the end of a round the list is reshuffled;
a new member goes in at a random position so it is probed within the current round.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["ProbeOrder"]


class ProbeOrder:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._names: list[str] = []
        self._index = 0

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def add(self, name: str) -> None:
        if name in self._names:
            return
        pos = self._rng.randint(0, len(self._names))
        self._names.insert(pos, name)
        if pos < self._index:
            # Keep pointing at the same next member.
            self._index += 1

    def remove(self, name: str) -> None:
        try:
            pos = self._names.index(name)
        except ValueError:
            return
        del self._names[pos]
        if pos < self._index:
            self._index -= 1

    def next(self, eligible: Callable[[str], bool]) -> str | None:
        """The next eligible member, or None if no member is eligible."""
        # The rest of this round plus one whole reshuffled round covers every member.
        for _ in range(2 * len(self._names) + 1):
            if self._index >= len(self._names):
                self._rng.shuffle(self._names)
                self._index = 0
                if not self._names:
                    return None
            name = self._names[self._index]
            self._index += 1
            if eligible(name):
                return name
        return None

    def snapshot(self) -> list[str]:
        return list(self._names)
