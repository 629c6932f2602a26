"""Whole SWIM clusters on the simulated network, in virtual time, seeded.

Each node is the real core (kvstore.core.membership.Swim) exchanging real encoded packets;
push-pull runs as a request/reply pair of messages over the same lossy network.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from kvstore.core.membership import Effects, MemberEvent, MemberState, Swim, SwimConfig
from kvstore.testing.clock import Timer, VirtualClock
from kvstore.testing.simnet import SimNetwork

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)


@dataclass
class SimNode:
    cluster: SimCluster
    name: str
    swim: Swim = field(init=False)
    events: list[tuple[float, MemberEvent]] = field(default_factory=list)
    _timer: Timer | None = None
    _timer_at: float = math.inf
    joined: bool = False

    def __post_init__(self) -> None:
        self.boot()

    @property
    def addr(self) -> str:
        return f"{self.name}:7000"

    def boot(self) -> None:
        """A fresh process: empty state, incarnation 0."""
        c = self.cluster
        self.swim = Swim(c.config, self.name, self.addr, random.Random(c.rng.random()), c.clock.now)
        self.joined = False
        self._timer, self._timer_at = None, math.inf
        c.net.register(self.addr, self.on_message)
        self.apply(self.swim.tick(c.clock.now))

    def on_message(self, src: str, msg: object) -> None:
        now = self.cluster.clock.now
        if isinstance(msg, bytes):
            self.apply(self.swim.receive(src, msg, now))
        elif isinstance(msg, tuple) and msg[0] == "pp_req":
            self.apply(self.swim.merge_state(msg[1], now))
            self.cluster.net.send(self.addr, src, ("pp_resp", self.swim.local_state()))
        elif isinstance(msg, tuple) and msg[0] == "pp_resp":
            self.joined = True
            self.apply(self.swim.merge_state(msg[1], now))

    def apply(self, fx: Effects) -> None:
        c = self.cluster
        for out in fx.messages:
            c.net.send(self.addr, out.addr, out.data)
        for addr in fx.push_pull:
            c.net.send(self.addr, addr, ("pp_req", self.swim.local_state()))
        for ev in fx.events:
            self.events.append((c.clock.now, ev))
        if fx.next_tick < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = fx.next_tick
            self._timer = c.net.schedule(self.addr, fx.next_tick, self.on_timer)

    def on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self.apply(self.swim.tick(self.cluster.clock.now))

    def join(self, seed: SimNode, retry_s: float = 1.0, attempts: int = 30) -> None:
        """Push-pull with the seed, retried until a reply arrives (the network may drop it)."""
        c = self.cluster

        def attempt(left: int) -> None:
            if self.joined or left == 0 or not c.net.is_up(self.addr):
                return
            c.net.send(self.addr, seed.addr, ("pp_req", self.swim.local_state()))
            c.net.schedule(self.addr, c.clock.now + retry_s, lambda: attempt(left - 1))

        attempt(attempts)

    def view(self, name: str) -> MemberState | None:
        m = self.swim.member(name)
        return None if m is None else m.state


class SimCluster:
    def __init__(self, n: int, config: SwimConfig, seed: int, *, loss: float = 0.0) -> None:
        self.config = config
        self.clock = VirtualClock()
        self.rng = random.Random(seed)
        self.net = SimNetwork(self.clock, random.Random(seed + 1), delay=(0.001, 0.010))
        self.net.set_loss(loss)
        self.nodes = [SimNode(self, f"n{i:02d}") for i in range(n)]
        for node in self.nodes[1:]:
            node.join(self.nodes[0])

    def node(self, name: str) -> SimNode:
        return next(n for n in self.nodes if n.name == name)

    def run_until(self, cond: Callable[[], bool], timeout: float, step: float = 0.1) -> float:
        """Advance virtual time until `cond()`; returns the time it took (fails on timeout)."""
        start = self.clock.now
        while not cond():
            if self.clock.now - start > timeout:
                raise AssertionError(f"condition not met within {timeout} virtual seconds")
            self.net.run_for(step)
        return self.clock.now - start

    def all_see(self, observers: list[SimNode], name: str, states: tuple[MemberState, ...]) -> bool:
        return all(o.view(name) in states for o in observers)

    def converged(
        self, nodes: list[SimNode] | None = None, ok: tuple[MemberState, ...] = (ALIVE,)
    ) -> bool:
        """Every node of `nodes` sees every other in one of the `ok` states."""
        nodes = self.nodes if nodes is None else nodes
        names = [n.name for n in nodes]
        return all(all(o.view(x) in ok for x in names) for o in nodes)

    def deaths_of(self, names: set[str]) -> int:
        """How many times any node saw one of `names` turn dead."""
        return sum(
            1
            for o in self.nodes
            for _, ev in o.events
            if ev.member.name in names and ev.new_state is DEAD and ev.old_state is not DEAD
        )


# ---------------------------------------------------------------------------- no failures, lossy


def _false_positives(
    lifeguard: bool, seed: int, periods: int, loss: float
) -> tuple[int, int, float]:
    cfg = SwimConfig(lifeguard=lifeguard)
    c = SimCluster(16, cfg, seed, loss=loss)
    # Under heavy loss someone is nearly always briefly suspected: joined means known and live.
    join_time = c.run_until(lambda: c.converged(ok=(ALIVE, SUSPECT)), timeout=120)
    c.net.run_for(periods * cfg.probe_interval_s)
    names = {n.name for n in c.nodes}
    suspicions = sum(n.swim.stats["suspicions_raised"] for n in c.nodes)
    return c.deaths_of(names), suspicions, join_time


def test_lossy_network_no_false_deaths_with_lifeguard(capsys: pytest.CaptureFixture[str]) -> None:
    periods, loss = 300, 0.20
    on_fp, on_susp, join_on = _false_positives(True, seed=42, periods=periods, loss=loss)
    off_fp, off_susp, join_off = _false_positives(False, seed=42, periods=periods, loss=loss)
    report = (
        f"16 members, {loss:.0%} loss, {periods} periods: false deaths lifeguard on={on_fp} "
        f"(suspicions {on_susp}, converged in {join_on:.1f}s), off={off_fp} "
        f"(suspicions {off_susp}, converged in {join_off:.1f}s)"
    )
    with capsys.disabled():
        print("\n" + report)
    assert on_fp == 0, report
    assert on_fp <= off_fp, report


# ---------------------------------------------------------------------------- crash detection


def detection_bound_s(cfg: SwimConfig, n: int) -> float:
    """Worst case from the formulas: the crashed member is reached by some prober within two
    rounds of the shuffled list, its probe fails by the end of that period, the suspicion runs
    its maximum, and the death spreads within one retransmit budget of periods."""
    rounds = 2 * (n - 1) * cfg.probe_interval_s
    return (
        rounds
        + cfg.probe_interval_s
        + cfg.suspicion_max_s(n)
        + cfg.retransmit_limit(n) * cfg.probe_interval_s
    )


def test_crashed_member_declared_dead_by_all_within_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = SwimConfig()
    c = SimCluster(16, cfg, seed=7)
    c.run_until(c.converged, timeout=60)
    c.net.run_for(5)
    victim = c.node("n05")
    others = [n for n in c.nodes if n is not victim]
    c.net.crash(victim.addr)
    bound = detection_bound_s(cfg, 16)
    first = c.run_until(lambda: any(o.view("n05") is DEAD for o in others), timeout=bound)
    took = first + c.run_until(lambda: c.all_see(others, "n05", (DEAD,)), timeout=bound - first)
    with capsys.disabled():
        print(
            f"\ncrash detection (16 members, P={cfg.probe_interval_s}s): first dead at {first:.1f}s, "
            f"all dead at {took:.1f}s (bound {bound:.1f}s; suspicion min {cfg.suspicion_min_s(16):.1f}s "
            f"max {cfg.suspicion_max_s(16):.1f}s)"
        )
    assert took <= bound
    # the rest of the cluster stays intact
    assert all(all(o.view(x.name) is ALIVE for x in others) for o in others)


# ---------------------------------------------------------------------------- flap dampening


def test_flapping_member_is_damped_then_reused(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = SwimConfig()
    c = SimCluster(8, cfg, seed=3)
    c.run_until(c.converged, timeout=60)
    flapper = c.node("n03")
    others = [n for n in c.nodes if n is not flapper]
    seed = c.nodes[0]

    cycles = 0
    while not all(o.swim.member("n03").damped for o in others):  # type: ignore[union-attr]
        assert cycles < 4, "member never damped"
        c.net.crash(flapper.addr)
        c.run_until(lambda: c.all_see(others, "n03", (DEAD,)), timeout=120)
        c.net.restart(flapper.addr)
        flapper.boot()
        flapper.join(seed)
        c.run_until(lambda: c.all_see(others, "n03", (ALIVE,)), timeout=120)
        cycles += 1
    assert cycles >= 2  # a single crash and return is not a flap storm

    damped_at = c.clock.now
    infos = [o.swim.member("n03") for o in others]
    assert all(i is not None and i.state is ALIVE and i.damped and not i.routable for i in infos)
    penalty = max(i.penalty for i in infos if i is not None)
    assert cfg.dampen_suppress < penalty <= cfg.dampen_max_penalty

    # Stable from now on: reused once the penalty has decayed below dampen_reuse.
    expect = cfg.dampen_half_life_s * math.log2(penalty / cfg.dampen_reuse)
    took = c.run_until(
        lambda: all(o.swim.member("n03").routable for o in others),  # type: ignore[union-attr]
        timeout=expect + 30,
    )
    with capsys.disabled():
        print(
            f"\nflapping: damped after {cycles} crash/restart cycles (penalty {penalty:.2f}), "
            f"reused {took:.1f}s later (formula {expect:.1f}s)"
        )
    assert took <= expect + 1
    for o in others:
        info = o.swim.member("n03")
        assert info is not None and not info.damped and info.penalty <= cfg.dampen_reuse
        # routing saw both edges: an event that made it unroutable and one that made it routable
        flags = [
            ev.member.routable
            for t, ev in o.events
            if ev.member.name == "n03" and t >= damped_at - 120
        ]
        assert False in flags and flags[-1] is True
    assert c.clock.now - damped_at >= took


# ---------------------------------------------------------------------------- restart announcement, leave


def test_announced_restart_routes_around_without_penalty() -> None:
    cfg = SwimConfig(probe_interval_s=0.5, probe_timeout_s=0.2)
    c = SimCluster(6, cfg, seed=5)
    c.run_until(c.converged, timeout=60)
    node = c.node("n02")
    others = [n for n in c.nodes if n is not node]
    before = node.swim.incarnation
    node.apply(node.swim.announce_restart(c.clock.now))
    c.run_until(lambda: all(o.swim.member("n02").restarting for o in others), timeout=2)  # type: ignore[union-attr]
    assert all(not o.swim.member("n02").routable for o in others)  # type: ignore[union-attr]

    c.net.crash(node.addr)
    c.net.run_for(3 * cfg.probe_interval_s)
    c.net.restart(node.addr)
    node.boot()
    node.join(c.nodes[0])
    c.run_until(
        lambda: all(
            (m := o.swim.member("n02")) is not None and m.routable and m.incarnation > before
            for o in others
        ),
        timeout=60,
    )
    assert all(o.swim.member("n02").penalty == 0 for o in others)  # type: ignore[union-attr]
    assert node.swim.incarnation > before + 1  # came back with no state and refuted its old self


def test_graceful_leave_is_seen_as_left_quickly() -> None:
    cfg = SwimConfig()
    c = SimCluster(8, cfg, seed=9)
    c.run_until(c.converged, timeout=60)
    node = c.node("n04")
    others = [n for n in c.nodes if n is not node]
    node.apply(node.swim.leave(c.clock.now))
    took = c.run_until(lambda: c.all_see(others, "n04", (LEFT,)), timeout=10, step=0.01)
    assert took < cfg.probe_interval_s
    c.net.crash(node.addr)
    c.net.run_for(30)
    assert c.all_see(others, "n04", (LEFT,))
    assert c.deaths_of({"n04"}) == 0


# ---------------------------------------------------------------------------- partitions


def test_partition_heals_and_both_sides_merge_again() -> None:
    cfg = SwimConfig(push_pull_interval_s=10.0)
    c = SimCluster(8, cfg, seed=11)
    c.run_until(c.converged, timeout=60)
    a, b = c.nodes[:4], c.nodes[4:]
    c.net.partition({n.addr for n in a}, {n.addr for n in b})
    c.run_until(lambda: all(c.all_see(a, x.name, (DEAD,)) for x in b), timeout=120)
    c.run_until(lambda: all(c.all_see(b, x.name, (DEAD,)) for x in a), timeout=120)
    assert c.converged(a) and c.converged(b)
    c.net.heal()
    took = c.run_until(c.converged, timeout=120)
    assert took <= 4 * cfg.push_pull_interval_s


# ---------------------------------------------------------------------------- a paused member


def test_paused_member_refutes_with_higher_incarnation() -> None:
    cfg = SwimConfig()
    c = SimCluster(6, cfg, seed=13)
    c.run_until(c.converged, timeout=60)
    node = c.node("n01")
    others = [n for n in c.nodes if n is not node]
    inc = node.swim.incarnation
    # A one-way cut is a paused process as others see it: it hears, but they do not hear back.
    c.net.partition({node.addr}, {o.addr for o in others}, one_way=True)
    c.run_until(lambda: any(o.view("n01") is SUSPECT for o in others), timeout=30)
    c.net.heal()
    c.run_until(
        lambda: all(
            (m := o.swim.member("n01")) is not None and m.state is ALIVE and m.incarnation > inc
            for o in others
        ),
        timeout=30,
    )
    assert node.swim.stats["refutes"] >= 1


def test_same_seed_same_run() -> None:
    def run(seed: int) -> list[tuple[str, int, str]]:
        c = SimCluster(6, SwimConfig(), seed, loss=0.1)
        c.net.run_for(40)
        return sorted(
            (n.name, m.incarnation, m.state.value) for n in c.nodes for m in n.swim.members()
        )

    assert run(5) == run(5)
