"""An in-memory, fault-injecting network of named endpoints on a virtual clock.

It knows nothing about what runs on it: endpoints are names with a handler
``handler(src: str, msg: object) -> None`` and messages are opaque objects (pass bytes to
exercise a real wire encoding). Every random choice comes from the one ``random.Random``
given to it, and time from the :class:`~kvstore.testing.clock.VirtualClock`, so a seeded
run replays exactly.

    clock = VirtualClock()
    net = SimNetwork(clock, random.Random(7))
    net.register("a", on_a)                      # on_a(src, msg)
    net.register("b", on_b)
    net.set_delay(0.001, 0.010)                  # each message: uniform delay in [lo, hi]
    net.set_loss(0.1)                            # each message dropped with p = 0.1
    net.send("a", "b", b"hello")
    net.schedule("a", clock.now + 1.0, tick)     # a timer owned by "a" (dropped if "a" crashes)
    net.run_for(5.0)

Faults:
    partition(A, B)             no message between any a in A and b in B (both directions)
    partition(A, B, one_way=True)   A cannot reach B; B still reaches A
    heal()                      removes every partition (loss and delay stay as set)
    crash(name)                 the endpoint stops: nothing it sends leaves, nothing reaches it,
                                its pending `schedule` timers never fire
    restart(name, handler=None) it is up again (optionally with a fresh handler, i.e. a new
                                process with empty state); messages that were in flight to it
                                while it was down stay lost

A message is checked against partitions and liveness both when sent and when delivered,
so a partition or crash also cuts what is already in flight. Delays are independent per
message, so messages may be reordered (as UDP may). ``stats`` counts what happened.

For timers not tied to one endpoint use the clock itself (``clock.call_at(t, fn)``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kvstore.testing.clock import Timer, VirtualClock

__all__ = ["Handler", "NetStats", "SimNetwork"]

Handler = Callable[[str, object], None]


@dataclass(slots=True)
class NetStats:
    sent: int = 0
    delivered: int = 0
    dropped_loss: int = 0
    dropped_partition: int = 0
    dropped_down: int = 0
    sent_from: Counter[str] = field(default_factory=Counter)
    delivered_to: Counter[str] = field(default_factory=Counter)

    @property
    def dropped(self) -> int:
        return self.dropped_loss + self.dropped_partition + self.dropped_down


@dataclass(slots=True)
class _Endpoint:
    handler: Handler
    up: bool = True
    # Bumped on crash so timers scheduled by the crashed process never fire.
    generation: int = 0


class SimNetwork:
    def __init__(
        self,
        clock: VirtualClock,
        rng: random.Random,
        *,
        loss: float = 0.0,
        delay: tuple[float, float] = (0.0005, 0.002),
    ) -> None:
        self.clock = clock
        self.rng = rng
        self.stats = NetStats()
        self._endpoints: dict[str, _Endpoint] = {}
        self._blocked: set[tuple[str, str]] = set()
        self._in_flight = 0
        self._loss = 0.0
        self._delay = (0.0, 0.0)
        self.set_loss(loss)
        self.set_delay(*delay)

    # --- endpoints

    def register(self, name: str, handler: Handler) -> None:
        """Add an endpoint (up). Registering an existing name replaces its handler."""
        ep = self._endpoints.get(name)
        if ep is None:
            self._endpoints[name] = _Endpoint(handler)
        else:
            ep.handler = handler

    def endpoints(self) -> list[str]:
        return sorted(self._endpoints)

    def is_up(self, name: str) -> bool:
        ep = self._endpoints.get(name)
        return ep is not None and ep.up

    def crash(self, name: str) -> None:
        ep = self._endpoints[name]
        ep.up = False
        ep.generation += 1

    def restart(self, name: str, handler: Handler | None = None) -> None:
        ep = self._endpoints[name]
        ep.up = True
        ep.generation += 1
        if handler is not None:
            ep.handler = handler

    def schedule(self, owner: str, when: float, fn: Callable[[], object]) -> Timer:
        """A timer of endpoint `owner`: runs `fn` at `when` unless `owner` crashed meanwhile."""
        ep = self._endpoints[owner]
        gen = ep.generation

        def fire() -> None:
            if ep.up and ep.generation == gen:
                fn()

        return self.clock.call_at(when, fire)

    # --- faults

    def set_loss(self, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"loss probability must be in [0, 1], got {p}")
        self._loss = p

    def set_delay(self, lo: float, hi: float) -> None:
        if lo < 0 or hi < lo:
            raise ValueError(f"delay range must satisfy 0 <= lo <= hi, got {lo}, {hi}")
        self._delay = (float(lo), float(hi))

    def partition(self, a: Iterable[str], b: Iterable[str], *, one_way: bool = False) -> None:
        a_set, b_set = set(a), set(b)
        for x in a_set:
            for y in b_set:
                if x != y:
                    self._blocked.add((x, y))
                    if not one_way:
                        self._blocked.add((y, x))

    def heal(self) -> None:
        self._blocked.clear()

    def can_reach(self, src: str, dst: str) -> bool:
        return (src, dst) not in self._blocked

    # --- traffic

    def send(self, src: str, dst: str, msg: object) -> None:
        """Queue `msg` from `src` to `dst`; it may be dropped or delayed (see module doc)."""
        self.stats.sent += 1
        self.stats.sent_from[src] += 1
        if not self.is_up(src) or dst not in self._endpoints:
            self.stats.dropped_down += 1
            return
        if not self.can_reach(src, dst):
            self.stats.dropped_partition += 1
            return
        # Draw both numbers for every message so one fault setting does not shift the
        # random stream of the other.
        lost = self.rng.random() < self._loss
        lo, hi = self._delay
        delay = self.rng.uniform(lo, hi)
        if lost:
            self.stats.dropped_loss += 1
            return
        self._in_flight += 1
        self.clock.call_at(self.clock.now + delay, lambda: self._deliver(src, dst, msg))

    def _deliver(self, src: str, dst: str, msg: object) -> None:
        self._in_flight -= 1
        ep = self._endpoints.get(dst)
        if ep is None or not ep.up:
            self.stats.dropped_down += 1
            return
        if not self.can_reach(src, dst):
            self.stats.dropped_partition += 1
            return
        self.stats.delivered += 1
        self.stats.delivered_to[dst] += 1
        ep.handler(src, msg)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # --- running

    @property
    def now(self) -> float:
        return self.clock.now

    def run_until(self, when: float) -> None:
        self.clock.run_until(when)

    def run_for(self, dt: float) -> None:
        self.clock.advance(dt)

    def run_until_quiet(self, max_time: float = 3600.0) -> bool:
        """Run until no message is in flight (timers may remain scheduled).

        Stops after `max_time` virtual seconds at the latest and returns whether it got quiet;
        periodic timers that keep sending (gossip, say) keep it from ever getting quiet.
        """
        deadline = self.clock.now + max_time
        while self._in_flight > 0:
            nxt = self.clock.next_time()
            if nxt is None or nxt > deadline:
                break
            self.clock.step()
        if self._in_flight > 0:
            self.clock.run_until(deadline)
        return self._in_flight == 0
