"""Flap dampening (after Ringpop): a member that keeps changing state stops moving routing.

Each member carries a penalty. Every flap — a change between alive and not alive (suspect or
dead) — adds `penalty` to it; it decays exponentially with half-life `half_life_s` and is
capped at `max_penalty`. When it rises above `suppress` the member becomes *damped*; it
stays damped until the penalty decays below `reuse` (hysteresis, so it does not toggle).

What damped means for routing (the rule every caller uses, see :func:`route_rank`):
    - a member is *routable* when it is alive, not damped and not announcing a restart;
      coordinators build preference lists and pick forwarding targets from routable
      members only, exactly as if the damped member were down (sloppy quorum and hinted
      handoff cover its partitions meanwhile);
    - a damped (or restarting) member that is alive is tried last: after every routable
      member, before suspect and dead ones, so it still serves when nothing better is left.
SWIM itself keeps probing a damped member and tracks its true state; damping only decides
how far it is trusted for traffic.

Changes that are not flaps add nothing: a graceful leave, and the state changes of a member
that announced a restart (a planned restart is not instability).
"""

from __future__ import annotations

import math

__all__ = ["FlapDamper"]


class FlapDamper:
    def __init__(
        self,
        *,
        penalty: float,
        suppress: float,
        reuse: float,
        half_life_s: float,
        max_penalty: float,
    ) -> None:
        self.step = penalty
        self.suppress = suppress
        self.reuse = reuse
        self.half_life_s = half_life_s
        self.max_penalty = max_penalty
        self._value = 0.0
        self._at = 0.0
        self.damped = False

    def penalty(self, now: float) -> float:
        if self._value == 0.0:
            return 0.0
        decay: float = 0.5 ** (max(0.0, now - self._at) / self.half_life_s)
        return self._value * decay

    def flap(self, now: float) -> bool:
        """Record one flap; True if this made the member damped."""
        self._value = min(self.max_penalty, self.penalty(now) + self.step)
        self._at = now
        if not self.damped and self._value > self.suppress:
            self.damped = True
            return True
        return False

    def refresh(self, now: float) -> bool:
        """Let the penalty decay to `now`; True if the member just stopped being damped."""
        if self.damped and self.penalty(now) < self.reuse:
            self.damped = False
            return True
        return False

    def reuse_at(self) -> float | None:
        """When a damped member's penalty falls below `reuse` (None if not damped)."""
        if not self.damped:
            return None
        if self.reuse <= 0:
            return math.inf
        if self._value <= self.reuse:
            return self._at
        # Nudged a microsecond past the crossing so refresh() at that instant sees it below.
        return self._at + self.half_life_s * math.log2(self._value / self.reuse) + 1e-6
