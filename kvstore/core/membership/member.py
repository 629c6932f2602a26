"""Members, their states and the precedence between claims about them.

States: alive, suspect, dead, left (a graceful leave). Every claim carries the member's
incarnation number; only the member itself raises it, to refute a claim about itself or to
publish new metadata. A claim about a member we know overrides our view when (memberlist
rules):

    alive   at incarnation i   if i >  current (an alive never overrides at the same i)
    suspect at incarnation i   if i >= current and the member is alive (or suspect at a
                               lower i); a suspect at the same i is a confirmation
    dead    at incarnation i   if i >= current and the member is alive or suspect
    left    (dead sent by the member itself) like dead

so at equal incarnation dead/left > suspect > alive, and any higher incarnation wins.
A dead or left member comes back only with a higher incarnation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from kvstore.core.membership.dampening import FlapDamper
    from kvstore.core.membership.suspicion import Suspicion

__all__ = ["MemberInfo", "MemberState", "Meta", "MetaValue", "route_rank"]

MetaValue = str | int | float | bool | bytes | None
Meta = dict[str, MetaValue]


class MemberState(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"

    @property
    def gone(self) -> bool:
        return self in (MemberState.DEAD, MemberState.LEFT)


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """A read-only snapshot of one member, as `kv cluster status` shows it.

    `awareness` is this node's own Lifeguard health score on its own entry, None on others.
    """

    name: str
    addr: str
    state: MemberState
    incarnation: int
    meta: Mapping[str, MetaValue]
    restarting: bool = False
    damped: bool = False
    penalty: float = 0.0
    awareness: int | None = None

    @property
    def routable(self) -> bool:
        return route_rank(self) == 0


def route_rank(m: MemberInfo) -> int:
    """Order in which to use members for traffic: 0 first; see dampening.py for the rule.

    0 routable (alive, not damped, not restarting), 1 alive but damped or restarting,
    2 suspect, 3 dead or left.
    """
    if m.state is MemberState.ALIVE:
        return 1 if (m.damped or m.restarting) else 0
    if m.state is MemberState.SUSPECT:
        return 2
    return 3


@dataclass(slots=True)
class Member:
    """The core's mutable record of one member (private to the membership package)."""

    name: str
    addr: str
    state: MemberState
    incarnation: int
    meta: Meta
    restarting: bool
    damper: FlapDamper
    state_since: float = 0.0
    suspicion: Suspicion | None = field(default=None)

    def info(self, now: float, awareness: int | None = None) -> MemberInfo:
        return MemberInfo(
            name=self.name,
            addr=self.addr,
            state=self.state,
            incarnation=self.incarnation,
            meta=MappingProxyType(dict(self.meta)),
            restarting=self.restarting,
            damped=self.damper.damped,
            penalty=round(self.damper.penalty(now), 6),
            awareness=awareness,
        )
