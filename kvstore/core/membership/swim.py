"""The SWIM state machine of one node, with Lifeguard and flap dampening. No I/O.

Inputs are calls with the current time; each returns :class:`Effects` — the packets to send
(already encoded), the membership events to act on, the members to exchange full state with
(push-pull, done by the runtime over TCP) and when the machine next wants :meth:`Swim.tick`.

    swim = Swim(config, "n1", "10.0.0.1:7000", random.Random(), now)
    fx = swim.tick(now)                      # on the timer, at fx.next_tick at the latest
    fx = swim.receive(src_addr, data, now)   # on every datagram (garbage is counted, dropped)
    fx = swim.merge_state(remote, now)       # push-pull: remote = peer's local_state()

Failure detection, per protocol period P' = P × (awareness + 1):
    1. ping the next member of the shuffled round-robin (a suspect one gets the suspicion
       piggybacked, so it refutes at once: Lifeguard's buddy system); a member this node
       suspects goes first, once per suspicion, and again after each answer that did not
       carry its refutation (the re-check, see _recheck_target);
    2. no ack within the probe timeout (scaled the same way): ping-req through k random
       alive members, which ping the target, relay its ack, and nack if they get none
       (they nack after the `nack_after` the request names: 80 % of what is left of the
       prober's period, so the nack arrives while the prober still listens);
    3. no ack by the end of the period: suspect the target. Awareness: +missed nacks (or +1
       when there was nobody to ask), −1 on an ack, +1 whenever this node has to refute.
A suspicion becomes a death at its Lifeguard deadline (suspicion.py); all timing formulas
are in config.py. A node that learns it is suspected or dead raises its incarnation and
gossips alive.

Getting a refutation to the one node that missed it. Epidemic gossip reaches nearly every
node, and "nearly" is what turns a suspicion into a false death under heavy loss. So, with
Lifeguard on, every contact between accuser and accused carries the accusation or the
answer:
    - any packet from a member this node holds suspect (or dead, also without Lifeguard)
      is answered, at most once a period, with that claim (`_tell_accused`; a ping gets it
      in the ack);
    - a member shown a claim about itself answers the sender directly with its alive,
      also when the claim is older than its incarnation (it refuted already, but that
      news missed the sender), and gossips that alive afresh;
    - a relay pings a target it suspects with the suspicion attached, and relays the
      target's ack with the target's alive as the relay holds it.
With ``lifeguard=False`` none of this runs except telling a member it is held dead (so a
wrongly dead member still finds out), which makes the comparison with classic SWIM fair.

Push-pull: every push_pull_interval_s with one random alive member, and also with one
random dead member so that two sides of a healed partition find each other again.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from kvstore.core.membership.awareness import Awareness
from kvstore.core.membership.broadcast import BroadcastQueue
from kvstore.core.membership.config import SwimConfig
from kvstore.core.membership.dampening import FlapDamper
from kvstore.core.membership.member import Member, MemberInfo, MemberState, Meta, MetaValue
from kvstore.core.membership.probe_order import ProbeOrder
from kvstore.core.membership.suspicion import Suspicion
from kvstore.core.membership.wire import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Message,
    Nack,
    Packet,
    Ping,
    PingReq,
    StateEntry,
    Suspect,
    Update,
    array_header_size,
    assemble,
    check_meta,
    decode_packet,
    decode_state,
    encode_message_parts,
    encode_state,
    encode_update,
)
from kvstore.errors import InvalidRequest, ProtocolError

__all__ = ["Effects", "MemberEvent", "Outgoing", "Swim"]

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)

# Leave and restart notices go straight to at most this many members (the rest hear by gossip).
FANOUT_CAP = 64
# Relayed probes in flight; past this, ping-reqs are dropped (a flood must not grow memory).
MAX_RELAYS = 1024
NACK_SHARE = 0.8


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One UDP packet: `data` is what goes on the wire, `packet` the same decoded."""

    addr: str
    data: bytes
    packet: Packet


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A member changed: state, incarnation, address, metadata, restarting or damped flag.

    `old_state` is None when the member was unknown. Compare `member.routable` before and
    after (or use kvstore.core.membership.route_rank) to update routing.
    """

    member: MemberInfo
    old_state: MemberState | None
    new_state: MemberState
    incarnation: int


@dataclass(slots=True)
class Effects:
    messages: list[Outgoing] = field(default_factory=list)
    events: list[MemberEvent] = field(default_factory=list)
    push_pull: list[str] = field(default_factory=list)
    next_tick: float = 0.0


@dataclass(slots=True)
class _Probe:
    target: str
    addr: str
    incarnation: int
    seq: int
    ack_deadline: float
    period_end: float
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    requester: str
    seq: int
    target: str
    nack_at: float | None
    expires: float


class Swim:
    def __init__(
        self,
        config: SwimConfig,
        name: str,
        addr: str,
        rng: random.Random,
        now: float,
        *,
        meta: Mapping[str, MetaValue] | None = None,
        incarnation: int = 0,
    ) -> None:
        self.config = config
        self.name = name
        self.addr = addr
        self._rng = rng
        self._now = now
        self._self = Member(
            name,
            addr,
            ALIVE,
            incarnation,
            self._checked_meta(meta or {}),
            False,
            self._damper(),
            now,
        )
        self._members: dict[str, Member] = {name: self._self}
        self._active = 1  # num_active(), kept up to date by _set_state
        self._by_addr: dict[str, str] = {addr: name}
        self._told: dict[str, float] = {}
        self._accused = False  # set while handling a packet that holds a claim against us
        self._order = ProbeOrder(rng)
        self._queue = BroadcastQueue()
        self._awareness = Awareness(config.awareness_max_multiplier, enabled=config.lifeguard)
        self._seq = rng.randrange(1 << 30)
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._leaving = False
        # Staggered so that nodes started together do not probe in lockstep.
        self._next_probe_at = now + rng.uniform(0.0, config.probe_interval_s)
        self._next_push_pull = now + config.push_pull_interval_s * rng.uniform(0.5, 1.5)
        self._next_gossip = now + rng.uniform(0.0, config.gossip_interval_s)
        self._fx = Effects()
        self.stats: Counter[str] = Counter()
        self._queue.push(self._alive_update())

    # ------------------------------------------------------------------ inputs

    def tick(self, now: float) -> Effects:
        now = self._clock(now)
        if not self._leaving:
            self._advance_probe(now)
        self._expire_suspicions(now)
        self._expire_relays(now)
        self._refresh_damping(now)
        self._maybe_gossip(now)
        self._maybe_push_pull(now)
        return self._flush()

    def receive(self, src: str, data: bytes, now: float) -> Effects:
        """Handle one datagram from `src` (HOST:PORT); malformed ones are counted and dropped."""
        try:
            packet = decode_packet(data, max_bytes=max(65536, self.config.gossip_max_packet_bytes))
        except ProtocolError:
            self.stats["bad_packets"] += 1
            return self._flush()
        return self.handle(src, packet, now)

    def handle(self, src: str, packet: Packet, now: float) -> Effects:
        """Handle one decoded packet (updates first, so a reply carries any refutation)."""
        now = self._clock(now)
        self._accused = False
        for u in packet.updates:
            self._apply(u, now)
        msg = packet.message
        if isinstance(msg, Ping):
            self._on_ping(src, msg, now)
        else:
            self._tell_accused(src, now)
            if self._accused:
                # Answer the accuser itself: gossip may carry our alive anywhere but there.
                self._send(src, Gossip(), [self._alive_update()])
        self._accused = False
        if isinstance(msg, Ack):
            self._on_ack(msg)
        elif isinstance(msg, Nack):
            if self._probe is not None and msg.seq == self._probe.seq:
                self._probe.nacks += 1
        elif isinstance(msg, PingReq):
            self._on_ping_req(src, msg, now)
        return self._flush()

    def merge_state(self, data: bytes, now: float) -> Effects:
        """Merge a peer's full state (push-pull). Raises ProtocolError on malformed data.

        Alive and left entries are applied as gossip would be. A peer's suspect or dead claim
        about *another* member is not adopted: this node's own probes are its authority on
        liveness, and the claim's originator is already gossiping it (adopting it would
        either count as a confirmation no one witnessed or start a suspicion no one tells
        the member about). A claim about this node itself is refuted at once — that is how a
        restarted process learns the incarnation it must beat.
        """
        entries = decode_state(data)
        now = self._clock(now)
        if any(self._foreign(e.meta) for e in entries):
            # One entry of another cluster and the whole state is that cluster's: its members
            # that have no id yet (joiners) would pass the entry check, and take the names
            # and addresses of our own members' (a stress run saw cluster B's joining n2
            # become cluster A's n2 that way).
            return self._flush()
        for e in entries:
            if e.state is ALIVE:
                self._on_alive(Alive(e.name, e.addr, e.incarnation, e.meta, e.restarting), now)
            elif e.state is LEFT:
                self._on_dead(Dead(e.name, e.incarnation, e.name), now)
            elif e.name == self.name:
                self._on_suspect(Suspect(e.name, e.incarnation, self.name), now)
        self.stats["push_pull_merges"] += 1
        return self._flush()

    def local_state(self) -> bytes:
        """This node's full view, for push-pull (see wire.py for the format)."""
        return encode_state(
            [
                StateEntry(m.name, m.addr, m.state, m.incarnation, m.meta, m.restarting)
                for m in self._members.values()
            ]
        )

    def set_meta(self, meta: Mapping[str, MetaValue], now: float) -> Effects:
        """Publish new metadata (a new incarnation); raises InvalidRequest if it is unfit."""
        now = self._clock(now)
        cluster = self._self.meta.get("cluster")
        self._self.meta = self._checked_meta(meta)
        if self._self.meta.get("cluster") != cluster:
            self._forget_foreign()
        self._self.incarnation += 1
        self._queue.push(self._alive_update())
        return self._flush()

    def announce_restart(self, now: float) -> Effects:
        """Tell everyone this node is about to restart, so they route around it meanwhile."""
        now = self._clock(now)
        if not self._leaving:
            self._self.restarting = True
            self._self.incarnation += 1
            update = self._alive_update()
            self._queue.push(update)
            self._fan_out(update)
        return self._flush()

    def leave(self, now: float) -> Effects:
        """Leave gracefully: members mark this node `left`; it stops probing and acking."""
        now = self._clock(now)
        if not self._leaving:
            self._leaving = True
            self._probe = None
            self._set_state(self._self, LEFT, now, planned=True)
            update = Dead(self.name, self._self.incarnation, self.name)
            self._queue.push(update)
            self._fan_out(update)
        return self._flush()

    # ------------------------------------------------------------------ queries

    @property
    def incarnation(self) -> int:
        return self._self.incarnation

    @property
    def awareness(self) -> int:
        return self._awareness.score

    @property
    def leaving(self) -> bool:
        return self._leaving

    def members(self) -> list[MemberInfo]:
        return [self._info(m) for m in sorted(self._members.values(), key=lambda m: m.name)]

    def member(self, name: str) -> MemberInfo | None:
        m = self._members.get(name)
        return None if m is None else self._info(m)

    def num_active(self) -> int:
        """N of the formulas: members not dead or left, this node included."""
        return self._active

    def pending_broadcasts(self) -> list[tuple[Update, int]]:
        return self._queue.pending()

    def next_tick(self) -> float:
        return self._next_deadline()

    # ------------------------------------------------------------------ probing

    def _advance_probe(self, now: float) -> None:
        p = self._probe
        if p is not None:
            if not p.indirect_sent and now >= p.ack_deadline:
                self._send_indirect(p, now)
            if now >= p.period_end:
                self._probe = None
                self._probe_failed(p, now)
        if self._probe is None and now >= self._next_probe_at:
            self._start_probe(now)

    def _probeable(self, name: str) -> bool:
        m = self._members.get(name)
        return m is not None and name != self.name and m.state in (ALIVE, SUSPECT)

    def _recheck_target(self) -> str | None:
        """A member this node suspects but has not probed since: probe it ahead of the round.

        The probe carries the suspicion (buddy system), so a live member refutes in its ack
        even if the gossip of its refutation missed this node; a dead one fails the probe,
        which makes this node an independent witness. Without it a node whose copy of the
        refutation was lost waits out the whole timeout and then condemns a live member.
        """
        if not self.config.lifeguard:
            return None
        pending = [
            m
            for m in self._members.values()
            if m.state is SUSPECT and m.suspicion is not None and not m.suspicion.rechecked
        ]
        if not pending:
            return None
        m = min(pending, key=lambda m: m.suspicion.deadline if m.suspicion else 0.0)
        assert m.suspicion is not None
        m.suspicion.rechecked = True
        return m.name

    def _start_probe(self, now: float) -> None:
        interval = self._awareness.scale(self.config.probe_interval_s)
        target = self._recheck_target() or self._order.next(self._probeable)
        if target is None:
            self._next_probe_at = now + interval
            return
        m = self._members[target]
        self._seq += 1
        buddy: list[Update] = []
        if m.state is SUSPECT and self.config.lifeguard:
            buddy.append(Suspect(m.name, m.incarnation, self.name))
        self._send(m.addr, Ping(self._seq, m.name, self.name), buddy)
        self._probe = _Probe(
            target=m.name,
            addr=m.addr,
            incarnation=m.incarnation,
            seq=self._seq,
            ack_deadline=now + self._awareness.scale(self.config.probe_timeout_s),
            period_end=now + interval,
        )
        self._next_probe_at = now + interval
        self.stats["probes"] += 1

    def _send_indirect(self, p: _Probe, now: float) -> None:
        p.indirect_sent = True
        peers = [
            m
            for m in self._members.values()
            if m.state is ALIVE and m.name not in (self.name, p.target)
        ]
        peers = self._rng.sample(peers, min(self.config.indirect_checks, len(peers)))
        nack_after = NACK_SHARE * max(0.0, p.period_end - now) if self.config.lifeguard else 0.0
        for peer in peers:
            self._send(peer.addr, PingReq(p.seq, p.target, p.addr, round(nack_after, 6)))
        p.expected_nacks = len(peers) if nack_after > 0 else 0
        self.stats["indirect_probes"] += 1

    def _probe_failed(self, p: _Probe, now: float) -> None:
        self.stats["probe_failures"] += 1
        if p.expected_nacks > 0:
            # Relays that answered nack prove our own links work: only silent ones count.
            self._awareness.apply(max(0, p.expected_nacks - p.nacks))
        else:
            self._awareness.apply(1)
        m = self._members.get(p.target)
        if m is not None and m.state in (ALIVE, SUSPECT):
            self._on_suspect(Suspect(m.name, p.incarnation, self.name), now)

    def _on_ack(self, msg: Ack) -> None:
        p = self._probe
        if p is not None and msg.seq == p.seq:
            self._probe = None
            self._awareness.apply(-1)
            self.stats["probe_acks"] += 1
            m = self._members.get(p.target)
            if m is not None and m.state is SUSPECT and m.suspicion is not None:
                # It answers but its refutation has not reached us: probe it again next
                # period, with the suspicion attached, rather than condemn a live member.
                m.suspicion.rechecked = False
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            vouch: list[Update] = []
            m = self._members.get(relay.target)
            if m is not None and m.state is ALIVE and self.config.lifeguard:
                # The asker may hold the target suspect on stale news: pass on what we hold.
                vouch.append(Alive(m.name, m.addr, m.incarnation, dict(m.meta), m.restarting))
            self._send(relay.requester, Ack(relay.seq, self.name), vouch)
            self.stats["relayed_acks"] += 1

    def _claim_against(self, m: Member | None) -> Update | None:
        """What this node holds against `m`, to show it so it can refute (None if nothing)."""
        if m is None or m is self._self:
            return None
        if m.state is DEAD:
            return Dead(m.name, m.incarnation, self.name)
        if m.state is SUSPECT and self.config.lifeguard:
            return Suspect(m.name, m.incarnation, self.name)
        return None

    def _tell_accused(self, src: str, now: float) -> None:
        """A packet from a member we hold suspect or dead shows it is up but has not refuted
        (or its refutation missed us): tell it, at most once a period, so it does."""
        name = self._by_addr.get(src)
        m = self._members.get(name) if name is not None else None
        claim = self._claim_against(m)
        if (
            claim is None
            or now - self._told.get(claim.name, -math.inf) < self.config.probe_interval_s
        ):
            return
        self._told[claim.name] = now
        self._send(src, Gossip(), [claim])
        self.stats["accused_told"] += 1

    def _on_ping(self, src: str, msg: Ping, now: float) -> None:
        if msg.target != self.name or self._leaving:
            return
        first: list[Update] = []
        if self._accused:
            first.append(self._alive_update())
        claim = self._claim_against(self._members.get(msg.sender))
        if claim is not None:
            self._told[claim.name] = now
            first.append(claim)
        self._send(src, Ack(msg.seq, self.name), first)

    def _on_ping_req(self, src: str, msg: PingReq, now: float) -> None:
        if self._leaving or len(self._relays) >= MAX_RELAYS:
            return
        self._seq += 1
        nack_at = now + msg.nack_after if msg.nack_after > 0 else None
        self._relays[self._seq] = _Relay(
            requester=src,
            seq=msg.seq,
            target=msg.target,
            nack_at=nack_at,
            expires=now + msg.nack_after + 2 * self.config.probe_interval_s,
        )
        # The buddy system holds for relayed pings too: a target we suspect hears of it.
        claim = self._claim_against(self._members.get(msg.target))
        buddy: list[Update] | None = [claim] if isinstance(claim, Suspect) else None
        self._send(msg.target_addr, Ping(self._seq, msg.target, self.name), buddy)
        self.stats["relayed_pings"] += 1

    def _expire_relays(self, now: float) -> None:
        for seq, r in list(self._relays.items()):
            if r.nack_at is not None and now >= r.nack_at:
                self._send(r.requester, Nack(r.seq))
                r.nack_at = None
                self.stats["nacks_sent"] += 1
            if now >= r.expires:
                del self._relays[seq]

    # ------------------------------------------------------------------ membership updates

    def _apply(self, u: Update, now: float) -> None:
        if isinstance(u, Alive):
            self._on_alive(u, now)
        elif isinstance(u, Suspect):
            self._on_suspect(u, now)
        else:
            self._on_dead(u, now)

    def _foreign(self, meta: Mapping[str, MetaValue]) -> bool:
        """News of a member of another cluster: both carry a cluster id in their metadata and
        the ids differ. Dropped, so that an address a node of another cluster reuses does not
        splice the two memberships together (a member without an id is a joiner: welcome)."""
        ours = self._self.meta.get("cluster")
        theirs = meta.get("cluster")
        if ours and theirs and ours != theirs:
            self.stats["foreign_dropped"] += 1
            return True
        return False

    def _forget_foreign(self) -> None:
        """Having just taken a cluster id, forget the members heard of before that are of
        another cluster (news a node takes in while it has no id yet)."""
        for name, m in list(self._members.items()):
            if m is self._self or not self._foreign(m.meta):
                continue
            del self._members[name]
            if not m.state.gone:
                self._active -= 1
            if self._by_addr.get(m.addr) == name:
                del self._by_addr[m.addr]
            self._order.remove(name)
            self._told.pop(name, None)

    def _on_alive(self, a: Alive, now: float) -> None:
        if self._foreign(a.meta):
            return
        if a.name == self.name:
            me = self._self
            if a.incarnation < me.incarnation:
                return
            if (
                a.incarnation == me.incarnation
                and a.addr == me.addr
                and a.meta == me.meta
                and a.restarting == me.restarting
            ):
                return
            # A version of us we never published: we restarted and lost our incarnation.
            self._refute(a.incarnation)
            return
        m = self._members.get(a.name)
        if m is None:
            m = Member(
                a.name,
                a.addr,
                ALIVE,
                a.incarnation,
                dict(a.meta),
                a.restarting,
                self._damper(),
                now,
            )
            self._members[a.name] = m
            self._by_addr[a.addr] = a.name
            self._active += 1
            self._order.add(a.name)
            self._queue.push(a)
            self._emit(m, None)
            return
        if a.incarnation <= m.incarnation:
            return
        old = m.state
        planned = m.restarting
        m.incarnation = a.incarnation
        if m.addr != a.addr:
            self._by_addr[a.addr] = a.name
        m.addr = a.addr
        m.meta = dict(a.meta)
        m.restarting = a.restarting
        self._set_state(m, ALIVE, now, planned=planned)
        self._queue.push(a)
        self._emit(m, old)

    def _on_suspect(self, s: Suspect, now: float) -> None:
        m = self._members.get(s.name)
        if m is self._self:
            self._claim_about_self(s.incarnation)
            return
        if m is None or s.incarnation < m.incarnation:
            return
        if m.state is SUSPECT:
            if s.incarnation > m.incarnation:
                m.incarnation = s.incarnation
                m.suspicion = self._new_suspicion(now, s.sender)
                self._queue.push(s)
                self._emit(m, SUSPECT)
            elif m.suspicion is not None and m.suspicion.confirm(s.sender):
                # Passed on so others count the confirmation too.
                self._queue.push(s)
            return
        if m.state is not ALIVE:
            return
        m.incarnation = s.incarnation
        m.suspicion = self._new_suspicion(now, s.sender)
        self._set_state(m, SUSPECT, now, planned=m.restarting)
        self._queue.push(s)
        self._emit(m, ALIVE)
        if s.sender == self.name:
            self.stats["suspicions_raised"] += 1

    def _on_dead(self, d: Dead, now: float) -> None:
        m = self._members.get(d.name)
        if m is self._self:
            self._claim_about_self(d.incarnation)
            return
        if m is None or d.incarnation < m.incarnation or m.state.gone:
            return
        old = m.state
        m.incarnation = d.incarnation
        self._set_state(m, LEFT if d.left else DEAD, now, planned=m.restarting or d.left)
        self._queue.push(d)
        self._emit(m, old)

    def _expire_suspicions(self, now: float) -> None:
        for m in list(self._members.values()):
            if m.state is SUSPECT and m.suspicion is not None and now >= m.suspicion.deadline:
                self.stats["deaths_declared"] += 1
                self._on_dead(Dead(m.name, m.incarnation, self.name), now)

    def _claim_about_self(self, incarnation: int) -> None:
        """Someone holds us suspect or dead. At our incarnation or above: refute. Below it
        we already refuted, but that news missed the claimant (its retransmits ran out), so
        announce our alive again, fresh — the reply to its ping then carries it."""
        if self._leaving:
            return
        # Classic SWIM (no Lifeguard) only refutes through gossip, as memberlist does.
        self._accused = self.config.lifeguard
        if incarnation >= self._self.incarnation:
            self._refute(incarnation)
        elif self.config.lifeguard:
            self._queue.push(self._alive_update())
            self.stats["reannounced"] += 1

    def _refute(self, claimed: int) -> None:
        self._self.incarnation = max(self._self.incarnation, claimed) + 1
        self._awareness.apply(1)
        self._queue.push(self._alive_update())
        self.stats["refutes"] += 1

    def _set_state(self, m: Member, new: MemberState, now: float, *, planned: bool) -> None:
        old = m.state
        if old is new:
            return
        m.state = new
        m.state_since = now
        if old.gone != new.gone:
            self._active += 1 if old.gone else -1
        if new is not SUSPECT:
            m.suspicion = None
        # Leaving and coming back after a leave are deliberate, not flaps.
        if not planned and LEFT not in (old, new) and (old is ALIVE) != (new is ALIVE):
            m.damper.flap(now)

    def _new_suspicion(self, now: float, sender: str) -> Suspicion:
        n = self.num_active()
        c = self.config
        return Suspicion(
            now, c.expected_confirmations(n), c.suspicion_min_s(n), c.suspicion_max_s(n), sender
        )

    def _refresh_damping(self, now: float) -> None:
        for m in self._members.values():
            if m is not self._self and m.damper.refresh(now):
                self._emit(m, m.state)

    # ------------------------------------------------------------------ gossip, push-pull

    def _maybe_gossip(self, now: float) -> None:
        if now < self._next_gossip:
            return
        self._next_gossip = now + self.config.gossip_interval_s
        if not self._queue or self.config.gossip_nodes < 1:
            return
        targets = [m for m in self._members.values() if m is not self._self and not m.state.gone]
        for m in self._rng.sample(targets, min(self.config.gossip_nodes, len(targets))):
            if not self._queue:
                break
            self._send(m.addr, Gossip())
        self.stats["gossip_rounds"] += 1

    def _maybe_push_pull(self, now: float) -> None:
        if now < self._next_push_pull:
            return
        self._next_push_pull = now + self.config.push_pull_interval_s
        if self._leaving:
            return
        others = [m for m in self._members.values() if m is not self._self]
        for state in (ALIVE, DEAD):
            candidates = [m for m in others if m.state is state]
            if candidates:
                self._fx.push_pull.append(self._rng.choice(candidates).addr)

    # ------------------------------------------------------------------ output

    def _send(self, addr: str, msg: Message, first: list[Update] | None = None) -> None:
        fixed = encode_message_parts(msg)
        budget = self.config.gossip_max_packet_bytes - len(fixed) - array_header_size(65535)
        chosen: list[tuple[Update, bytes]] = []
        for u in first or ():
            data = encode_update(u)
            if len(data) <= budget:
                chosen.append((u, data))
                budget -= len(data)
        limit = self.config.retransmit_limit(self.num_active())
        chosen += self._queue.take(budget, limit, skip=frozenset(u.name for u, _ in chosen))
        data = assemble(fixed, [d for _, d in chosen])
        self._fx.messages.append(Outgoing(addr, data, Packet(msg, tuple(u for u, _ in chosen))))

    def _fan_out(self, update: Update) -> None:
        targets = [m for m in self._members.values() if m is not self._self and not m.state.gone]
        if len(targets) > FANOUT_CAP:
            targets = self._rng.sample(targets, FANOUT_CAP)
        for m in targets:
            self._send(m.addr, Gossip(), [update])

    def _emit(self, m: Member, old: MemberState | None) -> None:
        self._fx.events.append(MemberEvent(self._info(m), old, m.state, m.incarnation))

    def _flush(self) -> Effects:
        fx = self._fx
        fx.next_tick = self._next_deadline()
        self._fx = Effects()
        return fx

    def _next_deadline(self) -> float:
        times = [self._next_push_pull]
        if self._queue and self.config.gossip_nodes > 0:
            times.append(self._next_gossip)
        if not self._leaving:
            p = self._probe
            if p is None:
                times.append(self._next_probe_at)
            else:
                times.append(p.period_end)
                if not p.indirect_sent:
                    times.append(p.ack_deadline)
        for m in self._members.values():
            if m.state is SUSPECT and m.suspicion is not None:
                times.append(m.suspicion.deadline)
            reuse = m.damper.reuse_at()
            if reuse is not None:
                times.append(reuse)
        for r in self._relays.values():
            times.append(r.expires if r.nack_at is None else r.nack_at)
        return max(self._now, min(times))

    # ------------------------------------------------------------------ helpers

    def _clock(self, now: float) -> float:
        # Time never runs backwards inside the machine, whatever the caller passes.
        self._now = max(self._now, now)
        return self._now

    def _alive_update(self) -> Alive:
        me = self._self
        return Alive(me.name, me.addr, me.incarnation, dict(me.meta), me.restarting)

    def _info(self, m: Member) -> MemberInfo:
        return m.info(self._now, self._awareness.score if m is self._self else None)

    def _damper(self) -> FlapDamper:
        c = self.config
        return FlapDamper(
            penalty=c.dampen_penalty,
            suppress=c.dampen_suppress,
            reuse=c.dampen_reuse,
            half_life_s=c.dampen_half_life_s,
            max_penalty=c.dampen_max_penalty,
        )

    @staticmethod
    def _checked_meta(meta: Mapping[str, MetaValue]) -> Meta:
        try:
            return check_meta(dict(meta))
        except ProtocolError as e:
            raise InvalidRequest(f"member metadata: {e}") from None
