"""SWIM membership with Lifeguard and flap dampening, as pure state machines (no I/O).

    config.py       SwimConfig: the settings and the timing formulas
    member.py       MemberState, MemberInfo, precedence rules, route_rank
    wire.py         messages and their msgpack wire form (ProtocolError on garbage)
    broadcast.py    the piggyback queue (newest and least-sent first, bounded retransmits)
    probe_order.py  round-robin over a shuffled member list
    suspicion.py    Lifeguard suspicion timeout that shrinks with confirmations
    awareness.py    Lifeguard local health score
    dampening.py    flap penalty, damped/reuse, and what damping means for routing
    swim.py         Swim: tick/receive/merge_state -> Effects

The runtime driver is kvstore.runtime.gossip; kvstore.testing.simnet runs many in one process.
"""

from kvstore.core.membership.config import SwimConfig
from kvstore.core.membership.member import MemberInfo, MemberState, Meta, MetaValue, route_rank
from kvstore.core.membership.swim import Effects, MemberEvent, Outgoing, Swim

__all__ = [
    "Effects",
    "MemberEvent",
    "MemberInfo",
    "MemberState",
    "Meta",
    "MetaValue",
    "Outgoing",
    "Swim",
    "SwimConfig",
    "route_rank",
]
