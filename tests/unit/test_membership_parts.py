"""The small pieces of SWIM: config formulas, suspicion timer, awareness, dampening,
broadcast queue, probe order."""

from __future__ import annotations

import math
import random

import pytest

from kvstore.config import Settings
from kvstore.core.membership import MemberInfo, MemberState, SwimConfig, route_rank
from kvstore.core.membership.awareness import Awareness
from kvstore.core.membership.broadcast import BroadcastQueue
from kvstore.core.membership.dampening import FlapDamper
from kvstore.core.membership.probe_order import ProbeOrder
from kvstore.core.membership.suspicion import Suspicion, suspicion_timeout
from kvstore.core.membership.wire import Alive, Dead, Suspect, encode_update
from kvstore.errors import ConfigError

# ---------------------------------------------------------------------------- config


def test_config_from_settings_takes_every_swim_field() -> None:
    s = Settings(
        probe_interval_s=0.3, probe_timeout_s=0.1, dampen_half_life_s=7.0, indirect_checks=5
    )
    c = SwimConfig.from_settings(s, lifeguard=False)
    assert (c.probe_interval_s, c.probe_timeout_s, c.dampen_half_life_s, c.indirect_checks) == (
        0.3,
        0.1,
        7.0,
        5,
    )
    assert c.lifeguard is False
    assert c.gossip_max_packet_bytes == s.gossip_max_packet_bytes
    assert c.retransmit_mult == s.retransmit_mult


def test_config_formulas() -> None:
    c = SwimConfig(
        probe_interval_s=1.0, suspicion_mult=4, suspicion_max_timeout_mult=6, retransmit_mult=4
    )
    assert c.suspicion_min_s(1) == 4.0  # log10(2) < 1 -> floor of 1
    assert c.suspicion_min_s(16) == pytest.approx(4 * math.log10(17))
    assert c.suspicion_max_s(16) == pytest.approx(6 * 4 * math.log10(17))
    assert (
        c.retransmit_limit(9) == 4 and c.retransmit_limit(10) == 8 and c.retransmit_limit(99) == 8
    )
    assert c.expected_confirmations(16) == 2
    assert c.expected_confirmations(3) == 0  # fewer than K others to confirm
    off = SwimConfig(lifeguard=False)
    assert off.suspicion_max_s(16) == off.suspicion_min_s(16)
    assert off.expected_confirmations(16) == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"probe_timeout_s": 1.0, "probe_interval_s": 1.0},
        {"probe_interval_s": 0},
        {"indirect_checks": -1},
        {"gossip_max_packet_bytes": 100},
        {"dampen_reuse": 4.0, "dampen_suppress": 3.0},
        {"dampen_suppress": 7.0},
        {"awareness_max_multiplier": 0},
        {"retransmit_mult": 0},
    ],
)
def test_config_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        SwimConfig(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- suspicion


def test_suspicion_counts_down_from_max_to_min_with_confirmations() -> None:
    s = Suspicion(start=100.0, k=3, min_s=4.0, max_s=24.0, raised_by="a")
    assert s.deadline == 124.0
    assert not s.confirm("a")  # the one who raised it is not a confirmation
    assert s.confirm("b")
    assert not s.confirm("b")  # nor is a repeat
    one = s.deadline
    assert s.confirm("c")
    two = s.deadline
    assert s.confirm("d")
    assert 124.0 > one > two > s.deadline == 104.0
    assert one == pytest.approx(100 + 24 - 20 * math.log(2) / math.log(4))
    assert not s.confirm("e")  # enough: no more counting
    assert s.deadline == 104.0


def test_suspicion_without_expected_confirmations_is_the_minimum() -> None:
    s = Suspicion(start=0.0, k=0, min_s=4.0, max_s=24.0, raised_by="a")
    assert s.deadline == 4.0
    assert not s.confirm("b")
    assert suspicion_timeout(0, 0, 4.0, 24.0) == 4.0
    # never below the minimum, whatever the count
    assert suspicion_timeout(100, 2, 4.0, 24.0) == 4.0


# ---------------------------------------------------------------------------- awareness


def test_awareness_bounds_and_scale() -> None:
    a = Awareness(8)
    assert a.score == 0 and a.scale(0.5) == 0.5
    a.apply(-1)
    assert a.score == 0
    a.apply(3)
    assert a.score == 3 and a.scale(0.5) == 2.0
    a.apply(100)
    assert a.score == 7 and a.scale(1.0) == 8.0
    a.apply(-2)
    assert a.score == 5
    off = Awareness(8, enabled=False)
    off.apply(5)
    assert off.score == 0 and off.scale(1.0) == 1.0
    assert Awareness(1).apply(5) == 0


# ---------------------------------------------------------------------------- dampening


def _damper() -> FlapDamper:
    return FlapDamper(penalty=1.0, suppress=3.0, reuse=1.0, half_life_s=10.0, max_penalty=6.0)


def test_penalty_accumulates_decays_and_caps() -> None:
    d = _damper()
    assert d.penalty(0) == 0.0
    d.flap(0.0)
    assert d.penalty(0.0) == 1.0
    assert d.penalty(10.0) == pytest.approx(0.5)
    assert d.penalty(20.0) == pytest.approx(0.25)
    for _ in range(20):
        d.flap(0.0)
    assert d.penalty(0.0) == 6.0  # capped


def test_damped_above_suppress_until_below_reuse() -> None:
    d = _damper()
    assert not d.flap(0.0) and not d.flap(0.0) and not d.flap(0.0)  # 3.0 is not above 3.0
    assert not d.damped
    assert d.flap(0.0)  # 4.0
    assert d.damped
    reuse = d.reuse_at()
    assert reuse == pytest.approx(10.0 * math.log2(4.0), abs=1e-5)
    assert not d.refresh(15.0)  # 4 * 2^-1.5 = 1.41: below suppress but above reuse (hysteresis)
    assert d.damped
    assert not d.refresh(reuse - 0.01)
    assert d.refresh(reuse)
    assert not d.damped and d.reuse_at() is None
    assert d.penalty(reuse) < 1.0


# ---------------------------------------------------------------------------- broadcast queue


def test_queue_least_sent_then_newest_first_and_invalidation() -> None:
    q = BroadcastQueue()
    q.push(Alive("a", "a:1", 1))
    q.push(Alive("b", "b:1", 1))
    q.push(Alive("c", "c:1", 1))
    first = q.take(10_000, limit=10)
    assert [u.name for u, _ in first] == ["c", "b", "a"]
    q.push(Suspect("d", 0, "x"))
    assert [u.name for u, _ in q.take(10_000, limit=10)] == ["d", "c", "b", "a"]
    # a newer update about a member replaces the queued one (and starts again at 0 sends)
    q.push(Dead("a", 1, "x"))
    pending = q.pending()
    assert pending[0] == (Dead("a", 1, "x"), 0)
    assert len(q) == 4
    assert sum(1 for u, _ in pending if u.name == "a") == 1


def test_queue_drops_an_update_after_its_retransmit_limit() -> None:
    q = BroadcastQueue()
    q.push(Alive("a", "a:1", 1))
    sends = 0
    while q.take(10_000, limit=3):
        sends += 1
    assert sends == 3 and len(q) == 0


def test_queue_fills_the_byte_budget_and_skips() -> None:
    q = BroadcastQueue()
    big = Alive("big", "b:1", 1, {"blob": "x" * 300})
    small = [Alive(f"s{i}", "s:1", 1) for i in range(5)]
    q.push(big)
    for u in small:
        q.push(u)
    size_small = len(encode_update(small[0]))
    budget = 3 * size_small + 10
    got = q.take(budget, limit=5)
    assert sum(len(d) for _, d in got) <= budget
    assert len(got) == 3 and all(u.name.startswith("s") for u, _ in got)
    # the big one is not lost: it goes once there is room
    got = q.take(10_000, limit=5, skip=frozenset({"s0", "s1"}))
    names = {u.name for u, _ in got}
    assert "big" in names and not names & {"s0", "s1"}
    assert q.take(0, limit=5) == []


# ---------------------------------------------------------------------------- probe order


def test_round_robin_probes_everyone_once_per_round_then_reshuffles() -> None:
    order = ProbeOrder(random.Random(3))
    names = [f"m{i}" for i in range(10)]
    for n in names:
        order.add(n)
    rounds = [[order.next(lambda _: True) for _ in names] for _ in range(4)]
    for r in rounds:
        assert sorted(r) == names  # type: ignore[type-var]
    assert len({tuple(r) for r in rounds}) > 1  # reshuffled between rounds


def test_probe_order_skips_ineligible_and_takes_new_members_this_round() -> None:
    order = ProbeOrder(random.Random(5))
    for n in ("a", "b", "c"):
        order.add(n)
    assert order.next(lambda n: n == "c") == "c"
    assert order.next(lambda n: False) is None
    order.add("new")
    order.add("new")
    assert len(order) == 4
    seen = {order.next(lambda _: True) for _ in range(8)}
    assert "new" in seen
    order.remove("b")
    order.remove("nobody")
    assert all(order.next(lambda _: True) != "b" for _ in range(10))
    assert ProbeOrder(random.Random(1)).next(lambda _: True) is None


# ---------------------------------------------------------------------------- routing rank


def _info(state: MemberState, *, damped: bool = False, restarting: bool = False) -> MemberInfo:
    return MemberInfo("m", "m:1", state, 0, {}, restarting=restarting, damped=damped)


def test_route_rank_orders_routable_damped_suspect_dead() -> None:
    assert route_rank(_info(MemberState.ALIVE)) == 0 and _info(MemberState.ALIVE).routable
    assert route_rank(_info(MemberState.ALIVE, damped=True)) == 1
    assert route_rank(_info(MemberState.ALIVE, restarting=True)) == 1
    assert not _info(MemberState.ALIVE, damped=True).routable
    assert route_rank(_info(MemberState.SUSPECT)) == 2
    assert route_rank(_info(MemberState.DEAD)) == 3 == route_rank(_info(MemberState.LEFT))
