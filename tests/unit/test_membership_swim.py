"""The Swim state machine, one input at a time: precedence, refutation, probing, Lifeguard,
dissemination, dampening, leave/restart/meta, push-pull."""

from __future__ import annotations

import math
import random

import pytest

from kvstore.core.membership import Effects, MemberState, Swim, SwimConfig
from kvstore.core.membership.wire import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Nack,
    Packet,
    Ping,
    PingReq,
    StateEntry,
    Suspect,
    Update,
    decode_packet,
    encode_packet,
    encode_state,
)
from kvstore.errors import InvalidRequest, ProtocolError

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)


def make(others: tuple[str, ...] = ("b", "c", "d", "e"), name: str = "a", **cfg: object) -> Swim:
    s = Swim(SwimConfig(**cfg), name, f"{name}:1", random.Random(1), 0.0)  # type: ignore[arg-type]
    gossip(s, *(Alive(o, f"{o}:1", 0) for o in others))
    return s


def gossip(s: Swim, *updates: Update, now: float = 0.0, src: str = "z:1") -> Effects:
    return s.handle(src, Packet(Gossip(), tuple(updates)), now)


def state(s: Swim, name: str) -> MemberState | None:
    m = s.member(name)
    return None if m is None else m.state


def inc(s: Swim, name: str) -> int:
    m = s.member(name)
    assert m is not None
    return m.incarnation


def first_probe(s: Swim, now: float = 1.0) -> tuple[Effects, Ping, str]:
    """Tick until the first ping goes out; returns (effects, ping, its address)."""
    fx = s.tick(now)
    pings = [(o.packet.message, o.addr) for o in fx.messages if isinstance(o.packet.message, Ping)]
    assert len(pings) == 1
    return fx, pings[0][0], pings[0][1]  # type: ignore[return-value]


def sent(fx: Effects, kind: type) -> list[tuple[str, object, tuple[Update, ...]]]:
    return [
        (o.addr, o.packet.message, o.packet.updates)
        for o in fx.messages
        if isinstance(o.packet.message, kind)
    ]


# ---------------------------------------------------------------------------- precedence


@pytest.mark.parametrize(
    ("start", "update", "expect_state", "expect_inc"),
    [
        # alive needs a strictly higher incarnation
        (None, Alive("b", "b:1", 1), ALIVE, 1),
        (None, Alive("b", "b:1", 5), ALIVE, 5),
        (None, Alive("b", "b:1", 0), ALIVE, 1),
        # suspect: same or higher incarnation on an alive member
        (None, Suspect("b", 1, "c"), SUSPECT, 1),
        (None, Suspect("b", 4, "c"), SUSPECT, 4),
        (None, Suspect("b", 0, "c"), ALIVE, 1),
        # dead: same or higher
        (None, Dead("b", 1, "c"), DEAD, 1),
        (None, Dead("b", 0, "c"), ALIVE, 1),
        (None, Dead("b", 1, "b"), LEFT, 1),
        # from suspect
        (Suspect("b", 1, "c"), Alive("b", "b:1", 1), SUSPECT, 1),
        (Suspect("b", 1, "c"), Alive("b", "b:1", 2), ALIVE, 2),
        (Suspect("b", 1, "c"), Dead("b", 1, "c"), DEAD, 1),
        (Suspect("b", 1, "c"), Suspect("b", 3, "d"), SUSPECT, 3),
        # from dead
        (Dead("b", 1, "c"), Alive("b", "b:1", 1), DEAD, 1),
        (Dead("b", 1, "c"), Alive("b", "b:1", 2), ALIVE, 2),
        (Dead("b", 1, "c"), Suspect("b", 2, "c"), DEAD, 1),
        (Dead("b", 1, "c"), Dead("b", 2, "b"), DEAD, 1),
        # from left
        (Dead("b", 1, "b"), Dead("b", 1, "c"), LEFT, 1),
        (Dead("b", 1, "b"), Suspect("b", 1, "c"), LEFT, 1),
        (Dead("b", 1, "b"), Alive("b", "b:1", 2), ALIVE, 2),
    ],
)
def test_precedence(
    start: Update | None, update: Update, expect_state: MemberState, expect_inc: int
) -> None:
    s = make(("b", "c", "d"))
    gossip(s, Alive("b", "b:1", 1))
    if start is not None:
        gossip(s, start)
    fx = gossip(s, update)
    assert (state(s, "b"), inc(s, "b")) == (expect_state, expect_inc)
    changed = [e for e in fx.events if e.member.name == "b"]
    if changed:
        assert changed[-1].new_state is expect_state and changed[-1].incarnation == expect_inc


def test_unknown_members_only_join_alive() -> None:
    s = make(("b",))
    gossip(s, Suspect("x", 0, "b"), Dead("y", 0, "b"))
    assert s.member("x") is None and s.member("y") is None
    fx = gossip(s, Alive("x", "x:1", 3, {"ring_version": 2}))
    (ev,) = fx.events
    assert ev.old_state is None and ev.new_state is ALIVE and ev.incarnation == 3
    assert dict(ev.member.meta) == {"ring_version": 2}


def test_events_carry_address_and_meta_changes() -> None:
    s = make(("b",))
    fx = gossip(s, Alive("b", "b:2", 1, {"ring_version": 7}))
    (ev,) = fx.events
    assert ev.old_state is ALIVE and ev.member.addr == "b:2" and ev.member.meta["ring_version"] == 7
    assert not gossip(s, Alive("b", "b:2", 1, {"ring_version": 7})).events


# ---------------------------------------------------------------------------- claims about ourselves


@pytest.mark.parametrize("claim", [Suspect("a", 0, "b"), Dead("a", 0, "b"), Alive("a", "a:9", 0)])
def test_claims_about_self_are_refuted_with_a_higher_incarnation(claim: Update) -> None:
    s = make()
    gossip(s, claim)
    assert s.incarnation == 1
    assert state(s, "a") is ALIVE
    assert s.awareness == 1
    assert s.stats["refutes"] == 1
    assert s.pending_broadcasts()[0] == (Alive("a", "a:1", 1, {}, False), 0)
    # a claim above our incarnation (we restarted and lost it) is beaten too
    gossip(s, Dead("a", 9, "b"))
    assert s.incarnation == 10


def test_identical_alive_about_self_is_no_news() -> None:
    s = make()
    gossip(s, Alive("a", "a:1", 0))
    assert s.incarnation == 0 and s.stats["refutes"] == 0


def test_stale_claim_about_self_reannounces_without_new_incarnation() -> None:
    s = make()
    gossip(s, Suspect("a", 0, "b"))
    assert s.incarnation == 1
    # drain our alive from the queue as if it had been sent often enough
    for _ in range(20):
        s.handle("b:1", Packet(Ping(1, "a", "b")), 0.0)
    assert not [u for u, _ in s.pending_broadcasts() if u.name == "a"]
    fx = s.handle("b:1", Packet(Ping(2, "a", "b"), (Suspect("a", 0, "b"),)), 0.0)
    assert s.incarnation == 1 and s.stats["reannounced"] == 1
    ((_, _, updates),) = sent(fx, Ack)
    assert Alive("a", "a:1", 1, {}, False) in updates


# ---------------------------------------------------------------------------- probing


def test_ping_ack_round_and_awareness_going_down() -> None:
    s = make()
    gossip(s, Suspect("a", 0, "b"))  # forces a refute: awareness 1
    assert s.awareness == 1
    _, ping, addr = first_probe(s, now=2.0)
    assert ping.sender == "a" and addr == f"{ping.target}:1"
    s.handle(addr, Packet(Ack(ping.seq, ping.target)), 2.1)
    assert s.awareness == 0
    assert s.stats["probe_acks"] == 1
    # no new probe before the period (scaled by awareness at its start: 2 × 1 s) is over
    assert not sent(s.tick(3.9), Ping)
    assert sent(s.tick(4.0), Ping)


def test_failed_probe_goes_indirect_then_suspects() -> None:
    s = make()
    _, ping, addr = first_probe(s, now=1.0)
    assert not sent(s.tick(1.49), PingReq)
    fx = s.tick(1.5)
    reqs = sent(fx, PingReq)
    assert len(reqs) == 3
    assert {a for a, _, _ in reqs}.isdisjoint({addr, "a:1"})
    for _, req, _ in reqs:
        assert isinstance(req, PingReq) and req.seq == ping.seq and req.target == ping.target
        assert req.nack_after == pytest.approx(0.8 * 0.5)
    # two of the three relays nack: one missed nack raises awareness by one
    s.handle(reqs[0][0], Packet(Nack(ping.seq)), 1.9)
    s.handle(reqs[1][0], Packet(Nack(ping.seq)), 1.9)
    fx = s.tick(2.0)
    assert state(s, ping.target) is SUSPECT
    assert s.awareness == 1
    (ev,) = [e for e in fx.events if e.member.name == ping.target]
    assert ev.old_state is ALIVE and ev.new_state is SUSPECT
    assert s.stats["suspicions_raised"] == 1


def test_all_relays_nack_means_we_are_healthy() -> None:
    s = make()
    _, ping, _ = first_probe(s, now=1.0)
    for addr, _, _ in sent(s.tick(1.5), PingReq):
        s.handle(addr, Packet(Nack(ping.seq)), 1.8)
    s.tick(2.0)
    assert state(s, ping.target) is SUSPECT and s.awareness == 0


def test_no_one_to_ask_counts_one_failure() -> None:
    s = make(("b",))
    first_probe(s, now=1.0)
    assert not sent(s.tick(1.5), PingReq)
    s.tick(2.0)
    assert state(s, "b") is SUSPECT and s.awareness == 1


def test_indirect_ack_saves_the_target() -> None:
    s = make()
    _, ping, _ = first_probe(s, now=1.0)
    relay = sent(s.tick(1.5), PingReq)[0][0]
    s.handle(relay, Packet(Ack(ping.seq, "relay")), 1.7)
    s.tick(2.0)
    assert state(s, ping.target) is ALIVE


def test_relay_pings_target_and_relays_ack_or_nacks() -> None:
    s = make()
    fx = s.handle("b:1", Packet(PingReq(77, "c", "c:1", 0.4)), 5.0)
    ((addr, ping, _),) = sent(fx, Ping)
    assert addr == "c:1" and isinstance(ping, Ping) and ping.target == "c"
    fx = s.handle("c:1", Packet(Ack(ping.seq, "c")), 5.1)
    assert [(a, m) for a, m, _ in sent(fx, Ack)] == [("b:1", Ack(77, "a"))]
    assert not sent(s.tick(6.0), Nack)

    fx = s.handle("b:1", Packet(PingReq(78, "d", "d:1", 0.4)), 10.0)
    assert not sent(s.tick(10.39), Nack)
    assert [(a, m) for a, m, _ in sent(s.tick(10.4), Nack)] == [("b:1", Nack(78))]
    assert not sent(s.tick(11.0), Nack)  # once


def test_ping_for_someone_else_is_ignored() -> None:
    s = make()
    assert not s.handle("b:1", Packet(Ping(1, "zz", "b")), 0.0).messages


def test_suspicion_becomes_death_at_lifeguard_deadline() -> None:
    s = make()  # N = 5: min = 4 s, max = 24 s, K = 2
    gossip(s, Suspect("b", 0, "c"), now=10.0)
    assert s.tick(33.9).events == [] and state(s, "b") is SUSPECT
    fx = s.tick(34.0)
    assert state(s, "b") is DEAD
    (ev,) = fx.events
    assert ev.old_state is SUSPECT and ev.new_state is DEAD
    assert s.stats["deaths_declared"] == 1
    assert s.pending_broadcasts()[0][0] == Dead("b", 0, "a")


def test_confirmations_shorten_the_suspicion() -> None:
    s = make()
    gossip(s, Suspect("b", 0, "c"), now=10.0)
    gossip(s, Suspect("b", 0, "c"), now=10.0)  # the same accuser again: not independent
    gossip(s, Suspect("b", 0, "d"), now=11.0)
    one = 10 + 24 - 20 * math.log(2) / math.log(3)
    assert s.next_tick() <= one
    assert s._members["b"].suspicion.deadline == pytest.approx(one)  # type: ignore[union-attr]
    gossip(s, Suspect("b", 0, "e"), now=12.0)  # K reached: the minimum, counted from the start
    s.tick(13.99)
    assert state(s, "b") is SUSPECT
    s.tick(14.0)
    assert state(s, "b") is DEAD


def test_refutation_cancels_the_suspicion() -> None:
    s = make()
    gossip(s, Suspect("b", 0, "c"), now=10.0)
    gossip(s, Alive("b", "b:1", 1), now=11.0)
    s.tick(100.0)
    assert state(s, "b") is ALIVE and s.stats["deaths_declared"] == 0


def test_buddy_system_probe_carries_the_suspicion_and_the_ack_the_refutation() -> None:
    prober = make(("b",))
    gossip(prober, Suspect("b", 0, "x"), now=0.5)
    target = Swim(SwimConfig(), "b", "b:1", random.Random(2), 0.0)
    gossip(target, Alive("a", "a:1", 0))
    ((_, ping, updates),) = sent(prober.tick(1.0), Ping)
    assert updates[0] == Suspect("b", 0, "a")
    reply = target.receive("a:1", encode_packet(Packet(ping, updates)), 1.01)  # type: ignore[arg-type]
    assert target.incarnation == 1
    ((_, ack, ack_updates),) = sent(reply, Ack)
    assert ack_updates[0] == Alive("b", "b:1", 1, {}, False)
    prober.handle("b:1", Packet(ack, ack_updates), 1.02)  # type: ignore[arg-type]
    assert state(prober, "b") is ALIVE and inc(prober, "b") == 1


def test_without_lifeguard_no_buddy_no_nack_fixed_timeout() -> None:
    s = make(lifeguard=False)
    gossip(s, Suspect("b", 0, "x"), now=0.5)
    fx = s.tick(1.0)
    for _, _, updates in sent(fx, Ping):
        assert Suspect("b", 0, "a") not in updates
    s.tick(4.49)
    assert state(s, "b") is SUSPECT
    s.tick(4.5)  # the minimum, N = 5: 4 s after 0.5
    assert state(s, "b") is DEAD
    s2 = make(lifeguard=False)
    first_probe(s2)
    for _, req, _ in sent(s2.tick(1.5), PingReq):
        assert isinstance(req, PingReq) and req.nack_after == 0
    s2.tick(2.0)
    assert s2.awareness == 0  # no local health without Lifeguard


def test_suspect_is_rechecked_before_the_round_robin() -> None:
    s = make()
    gossip(s, Suspect("d", 0, "x"), now=0.5)
    _, ping, _ = first_probe(s, now=1.0)
    assert ping.target == "d"
    # it answers without refuting (its refutation got lost): checked again next period
    s.handle("d:1", Packet(Ack(ping.seq, "d")), 1.1)
    ((_, again, updates),) = sent(s.tick(2.0), Ping)
    assert again.target == "d" and updates[0] == Suspect("d", 0, "a")  # type: ignore[attr-defined]
    s.handle("d:1", Packet(Ack(again.seq, "d"), (Alive("d", "d:1", 1),)), 2.1)  # type: ignore[attr-defined]
    assert state(s, "d") is ALIVE
    ((_, third, _),) = sent(s.tick(3.0), Ping)
    assert third.target != "d"  # type: ignore[attr-defined]


def test_unanswered_recheck_is_not_repeated() -> None:
    s = make()
    gossip(s, Suspect("d", 0, "x"), now=0.5)
    _, ping, _ = first_probe(s, now=1.0)
    assert ping.target == "d"
    s.tick(1.5)
    fx = s.tick(2.0)  # the probe failed (our own confirmation); the next one starts
    ((_, nxt, _),) = sent(fx, Ping)
    assert nxt.target != "d"  # type: ignore[attr-defined]


def test_relay_vouches_for_the_target_it_holds_alive() -> None:
    s = make()
    gossip(s, Alive("c", "c:1", 4))
    fx = s.handle("b:1", Packet(PingReq(9, "c", "c:1", 0.4)), 1.0)
    ((_, ping, _),) = sent(fx, Ping)
    fx = s.handle("c:1", Packet(Ack(ping.seq, "c")), 1.1)  # type: ignore[attr-defined]
    ((addr, ack, updates),) = sent(fx, Ack)
    assert addr == "b:1" and ack == Ack(9, "a") and updates[0] == Alive("c", "c:1", 4, {}, False)


def test_ping_from_a_member_held_dead_is_told_so() -> None:
    s = make()
    gossip(s, Dead("b", 0, "c"))
    fx = s.handle("b:1", Packet(Ping(5, "a", "b")), 1.0)
    ((_, ack, updates),) = sent(fx, Ack)
    assert ack == Ack(5, "a") and Dead("b", 0, "a") in updates


def test_probe_targets_skip_dead_and_left() -> None:
    s = make(("b", "c", "d"))
    gossip(s, Dead("b", 0, "x"), Dead("c", 0, "c"))
    targets = set()
    for i in range(1, 20):
        fx = s.tick(float(i))
        targets |= {m.target for _, m, _ in sent(fx, Ping)}  # type: ignore[attr-defined]
    assert targets == {"d"}


# ---------------------------------------------------------------------------- dissemination


def test_updates_piggyback_a_bounded_number_of_times() -> None:
    s = make(gossip_nodes=0)  # piggybacking only: count what pings and acks carry
    gossip(s, Alive("b", "b:1", 3))
    carried = 0
    for i in range(50):
        fx = s.handle("c:1", Packet(Ping(i, "a", "c")), float(i))
        carried += sum(
            1 for o in fx.messages for u in o.packet.updates if u == Alive("b", "b:1", 3)
        )
    assert carried == SwimConfig().retransmit_limit(5) == 4


def test_packets_stay_under_the_size_limit_with_many_updates() -> None:
    s = make(tuple(f"m{i:03d}" for i in range(300)), gossip_max_packet_bytes=600)
    gossip(
        s,
        *(
            Alive(f"m{i:03d}", f"host-{i}.example:7000", 1, {"ring_version": i, "pad": "x" * 40})
            for i in range(300)
        ),
    )
    total = 0
    for i in range(40):
        fx = s.handle("m001:7000", Packet(Ping(i, "a", "m001")), float(i) * 0.01)
        fx2 = s.tick(float(i) * 0.25)
        for o in fx.messages + fx2.messages:
            assert len(o.data) <= 600
            assert decode_packet(o.data) == o.packet
            total += len(o.packet.updates)
    assert total > 100


def test_gossip_fan_out_only_while_there_is_news() -> None:
    s = make(probe_interval_s=1000.0, probe_timeout_s=1.0)  # no probing in this window
    fx = s.tick(0.3)
    assert sent(fx, Gossip)
    for i in range(1, 200):
        fx = s.tick(0.3 + i * 0.2)
    assert not s.pending_broadcasts()
    assert not sent(s.tick(100.0), Gossip)
    fx = gossip(s, Alive("b", "b:1", 1), now=100.0)
    assert s.next_tick() <= 100.0 + 0.2  # within one gossip interval
    gossip_out = sent(s.tick(s.next_tick()), Gossip)
    assert len(gossip_out) == 3 and all(Alive("b", "b:1", 1) in u for _, _, u in gossip_out)


# ---------------------------------------------------------------------------- dampening


def flap(s: Swim, name: str, n: int, now: float) -> None:
    for _ in range(n):
        i = inc(s, name)
        gossip(s, Suspect(name, i, "x"), now=now)
        gossip(s, Alive(name, f"{name}:1", i + 1), now=now)


def test_flapping_member_gets_damped_then_reused_with_events() -> None:
    s = make(dampen_half_life_s=10.0)
    flap(s, "b", 1, now=1.0)
    m = s.member("b")
    assert m is not None and m.penalty == 2.0 and not m.damped and m.routable
    i = inc(s, "b")
    fx = gossip(s, Suspect("b", i, "x"), now=1.0)
    assert not fx.events[-1].member.damped  # 3.0 is not above dampen_suppress
    fx = gossip(s, Alive("b", "b:1", i + 1), now=1.0)
    assert fx.events[-1].member.damped and not fx.events[-1].member.routable
    m = s.member("b")
    assert m is not None and m.state is ALIVE and m.damped and not m.routable and m.penalty == 4.0
    reuse = 1.0 + 10.0 * math.log2(4.0)
    assert s.next_tick() <= reuse + 1e-3
    assert not s.tick(reuse - 0.01).events
    fx = s.tick(reuse + 1e-3)
    (ev,) = [e for e in fx.events if e.member.name == "b"]
    assert ev.old_state is ALIVE and ev.new_state is ALIVE and ev.member.routable


def test_leave_and_planned_restart_are_not_flaps() -> None:
    s = make()
    gossip(s, Alive("b", "b:1", 1, {}, True))  # b announced a restart
    assert not s.member("b").routable  # type: ignore[union-attr]
    gossip(s, Suspect("b", 1, "x"), Dead("b", 1, "x"))
    gossip(s, Alive("b", "b:1", 2))
    gossip(s, Dead("c", 0, "c"), Alive("c", "c:1", 1))
    for name in ("b", "c"):
        m = s.member(name)
        assert m is not None and m.penalty == 0.0 and m.routable


# ---------------------------------------------------------------------------- leave, restart, meta


def test_leave_tells_everyone_and_stops_probing_and_acking() -> None:
    s = make()
    gossip(s, Dead("e", 0, "x"))
    fx = s.leave(1.0)
    assert state(s, "a") is LEFT and s.leaving
    assert sorted(a for a, _, _ in sent(fx, Gossip)) == ["b:1", "c:1", "d:1"]
    assert all(u[0] == Dead("a", 0, "a") for _, _, u in sent(fx, Gossip))
    assert not s.handle("b:1", Packet(Ping(1, "a", "b")), 2.0).messages
    assert not sent(s.tick(10.0), Ping)
    gossip(s, Suspect("a", 0, "b"))  # no refuting once gone
    assert s.incarnation == 0

    other = make(("a",), name="o")
    other_fx = gossip(other, Dead("a", 0, "a"))
    assert state(other, "a") is LEFT and other_fx.events[0].new_state is LEFT


def test_announce_restart_and_set_meta_raise_incarnation() -> None:
    s = make()
    fx = s.announce_restart(1.0)
    assert s.incarnation == 1
    assert len(sent(fx, Gossip)) == 4
    assert all(u[0] == Alive("a", "a:1", 1, {}, True) for _, _, u in sent(fx, Gossip))
    assert s.member("a").restarting  # type: ignore[union-attr]

    t = make()
    t.set_meta({"ring_version": 4}, 1.0)
    assert t.incarnation == 1 and dict(t.member("a").meta) == {"ring_version": 4}  # type: ignore[union-attr]
    assert t.pending_broadcasts()[0][0] == Alive("a", "a:1", 1, {"ring_version": 4}, False)
    with pytest.raises(InvalidRequest):
        t.set_meta({"blob": "x" * 1000}, 1.0)
    with pytest.raises(InvalidRequest):
        Swim(SwimConfig(), "q", "q:1", random.Random(), 0.0, meta={"k": [1]})  # type: ignore[dict-item]


# ---------------------------------------------------------------------------- push-pull


def test_push_pull_merge_rules() -> None:
    s = make(("b", "c"))
    remote = encode_state(
        [
            StateEntry("b", "b:1", DEAD, 0, {}, False),  # another member: not adopted
            StateEntry("c", "c:1", LEFT, 0, {}, False),  # left: adopted
            StateEntry("n", "n:1", ALIVE, 2, {"ring_version": 1}, False),  # new member
            StateEntry("g", "g:1", DEAD, 0, {}, False),  # unknown dead: ignored
            StateEntry("a", "a:1", DEAD, 3, {}, False),  # us: refuted
        ]
    )
    fx = s.merge_state(remote, 1.0)
    assert state(s, "b") is ALIVE and state(s, "c") is LEFT and state(s, "n") is ALIVE
    assert s.member("g") is None
    assert s.incarnation == 4
    assert {e.member.name for e in fx.events} == {"c", "n"}
    with pytest.raises(ProtocolError):
        s.merge_state(b"\x00garbage", 1.0)


def test_local_state_bootstraps_a_new_node() -> None:
    s = make(("b", "c"))
    fresh = Swim(SwimConfig(), "z", "z:1", random.Random(3), 0.0)
    fresh.merge_state(s.local_state(), 0.0)
    assert {m.name for m in fresh.members()} == {"a", "b", "c", "z"}
    s.merge_state(fresh.local_state(), 0.0)
    assert state(s, "z") is ALIVE


def test_push_pull_targets_one_alive_and_one_dead_member() -> None:
    s = make(("b", "c"), push_pull_interval_s=10.0)
    gossip(s, Dead("c", 0, "x"))
    targets: list[str] = []
    for i in range(1, 60):
        targets += s.tick(float(i)).push_pull
    assert 3 <= len(targets) <= 8
    assert set(targets) == {"b:1", "c:1"}


# ---------------------------------------------------------------------------- robustness


def test_garbage_datagrams_are_counted_and_dropped() -> None:
    s = make()
    for junk in (
        b"",
        b"\xff" * 10,
        b"\x93\x01\x01\x90",
        encode_packet(Packet(Gossip()))[:-1] + b"\x01",
    ):
        fx = s.receive("b:1", junk, 1.0)
        assert fx.messages == [] and fx.events == []
    assert s.stats["bad_packets"] >= 3


def test_time_never_runs_backwards() -> None:
    s = make()
    s.tick(10.0)
    fx = s.tick(5.0)
    assert fx.next_tick >= 10.0
    assert s.next_tick() >= 10.0


def test_members_snapshot_has_awareness_only_on_self() -> None:
    s = make(("b",))
    infos = {m.name: m for m in s.members()}
    assert infos["a"].awareness == 0 and infos["b"].awareness is None
    assert s.num_active() == 2


def test_active_count_follows_every_transition() -> None:
    s = make(("b", "c", "d"))

    def recount() -> int:
        return sum(1 for m in s.members() if not m.state.gone)

    steps: list[Update] = [
        Suspect("b", 0, "x"),
        Dead("b", 0, "x"),
        Alive("b", "b:1", 1),
        Dead("c", 0, "c"),
        Alive("c", "c:1", 2),
        Alive("n", "n:1", 0),
        Dead("n", 0, "x"),
        Dead("n", 0, "n"),
    ]
    for u in steps:
        gossip(s, u)
        assert s.num_active() == recount()
    s.tick(100.0)
    assert s.num_active() == recount()
    s.leave(101.0)
    assert s.num_active() == recount() == 3


def test_ping_req_flood_is_bounded() -> None:
    s = make()
    for i in range(3000):
        s.handle("b:1", Packet(PingReq(i, "c", "c:1", 10.0)), 1.0)
    assert s.stats["relayed_pings"] == 1024


def test_a_suspect_that_talks_to_us_is_told_once_a_period() -> None:
    s = make()
    gossip(s, Suspect("b", 0, "x"), now=1.0)
    fx = s.handle("b:1", Packet(Nack(123)), 1.1)
    assert [(a, u[0]) for a, _, u in sent(fx, Gossip)] == [("b:1", Suspect("b", 0, "a"))]
    assert not sent(s.handle("b:1", Packet(Nack(124)), 1.5), Gossip)  # not again this period
    assert sent(s.handle("b:1", Packet(Nack(125)), 2.1), Gossip)
    assert not sent(s.handle("c:1", Packet(Nack(126)), 2.2), Gossip)  # c is not accused


def test_the_accused_answers_the_accuser_directly_even_when_already_refuted() -> None:
    s = make()
    gossip(s, Suspect("a", 0, "b"))  # refuted: incarnation 1
    fx = s.handle("b:1", Packet(Gossip(), (Suspect("a", 0, "b"),)), 1.0)
    assert ("b:1", (Alive("a", "a:1", 1, {}, False),)) in [
        (a, u[:1]) for a, _, u in sent(fx, Gossip)
    ]
    classic = make(lifeguard=False)
    gossip(classic, Suspect("a", 0, "b"))
    fx = classic.handle("b:1", Packet(Gossip(), (Suspect("a", 0, "b"),)), 1.0)
    assert not fx.messages and classic.stats["reannounced"] == 0


def test_relay_attaches_its_suspicion_to_the_relayed_ping() -> None:
    s = make()
    gossip(s, Suspect("c", 0, "x"))
    fx = s.handle("b:1", Packet(PingReq(9, "c", "c:1", 0.4)), 1.0)
    ((_, _, updates),) = sent(fx, Ping)
    assert updates[0] == Suspect("c", 0, "a")


# ---------------------------------------------------------------------------- cluster ids


def test_news_of_a_member_of_another_cluster_is_dropped() -> None:
    # An address reused by a node of another cluster must not splice the two memberships.
    s = Swim(SwimConfig(), "a", "a:1", random.Random(1), 0.0, meta={"cluster": "c1"})
    fx = gossip(s, Alive("x", "x:1", 1, {"cluster": "c2"}), Alive("j", "j:1", 1, {}))
    assert s.member("x") is None
    assert state(s, "j") is ALIVE  # no id yet: a joiner, welcome
    assert {e.member.name for e in fx.events} == {"j"}
    gossip(s, Alive("a", "a:9", 7, {"cluster": "c2"}))  # another cluster's "a": not us
    assert s.incarnation == 0
    remote = encode_state(
        [
            StateEntry("y", "y:1", ALIVE, 1, {"cluster": "c2"}, False),
            StateEntry("j", "j:1", LEFT, 1, {"cluster": "c2"}, False),
            StateEntry("k", "k:1", ALIVE, 1, {"cluster": "c1"}, False),
        ]
    )
    s.merge_state(remote, 1.0)
    # A state with an entry of another cluster is that cluster's: none of it is taken, not
    # even an entry that claims our id.
    assert s.member("y") is None and state(s, "j") is ALIVE and s.member("k") is None
    assert s.stats["foreign_dropped"] == 3


def test_a_push_pull_from_another_cluster_brings_none_of_its_joiners() -> None:
    # Cluster c2's founder answers at an address our view still has; its n2 is joining and has
    # no id yet. Before: the id-less entry passed, and our "n2" took its address.
    s = Swim(SwimConfig(), "n1", "n1:1", random.Random(1), 0.0, meta={"cluster": "c1"})
    gossip(s, Alive("n2", "old:2", 1, {"cluster": "c1"}))
    remote = encode_state(
        [
            StateEntry("n1", "old:2", ALIVE, 1, {"cluster": "c2"}, False),
            StateEntry("n2", "b:2", ALIVE, 5, {}, False),
        ]
    )
    s.merge_state(remote, 1.0)
    n2 = s.member("n2")
    assert n2 is not None and n2.addr == "old:2" and n2.incarnation == 1


def test_taking_a_cluster_id_forgets_members_of_another() -> None:
    # A node hears gossip before it has an id (it is joining); once it has one, what it heard
    # of another cluster goes, and a member of its own of the same name is news again.
    s = Swim(SwimConfig(), "a", "a:1", random.Random(1), 0.0)
    gossip(s, Alive("b", "b:old", 5, {"cluster": "c2"}), Alive("c", "c:1", 1, {"cluster": "c1"}))
    s.set_meta({"cluster": "c1"}, 1.0)
    assert s.member("b") is None and state(s, "c") is ALIVE
    assert s.num_active() == 2
    fx = gossip(s, Alive("b", "b:new", 1, {"cluster": "c1"}), now=2.0)
    m = s.member("b")
    assert m is not None and m.addr == "b:new" and [e.old_state for e in fx.events] == [None]
