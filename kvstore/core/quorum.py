"""The coordinator's decisions for one get, put or delete, as pure state machines.

A coordinator builds a plan (which replicas to ask, which of them stand in for a down
primary with a hint), then feeds the machine each reply as it arrives and ``tick(now)`` at
its deadline; the machine says when the request is done (success, or ``Unavailable`` with how
many answered) and, for reads, which replicas must be repaired afterwards. No I/O, no clock:
``now`` comes in from the caller, so the same machines run under asyncio and in the
simulated network of kvstore.testing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from kvstore.core import vclock
from kvstore.core.vclock import Obj


class Status(Enum):
    PENDING = "pending"
    OK = "ok"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Target:
    """One replica to ask. ``hint_for`` names the primary a fallback stands in for."""

    node: str
    hint_for: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    targets: tuple[Target, ...]
    # Primaries that are down and got no stand-in (too few healthy nodes on the ring).
    uncovered: tuple[str, ...] = ()

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(t.node for t in self.targets)


def plan(
    preference: Sequence[str],
    fallbacks: Sequence[str],
    is_up: Callable[[str], bool],
    *,
    sloppy: bool = True,
) -> Plan:
    """Who to ask for a key: every live primary, and (sloppy quorum) for each primary that is
    down the next live node beyond the preference list, carrying a hint for it.

    Dynamo's rule: a primary that is down is not asked at all (its write goes to a stand-in);
    one whose state is unknown is asked. ``is_up`` answers for each node.
    """
    targets: list[Target] = []
    down = [p for p in preference if not is_up(p)]
    for p in preference:
        if p not in down:
            targets.append(Target(p))
    uncovered: list[str] = []
    if down:
        spare = iter([f for f in fallbacks if is_up(f)]) if sloppy else iter(())
        for p in down:
            stand_in = next(spare, None)
            if stand_in is None:
                uncovered.append(p)
            else:
                targets.append(Target(stand_in, hint_for=p))
    return Plan(tuple(targets), tuple(uncovered))


def next_stand_in(
    fallbacks: Sequence[str], is_up: Callable[[str], bool], used: Sequence[str]
) -> str | None:
    """The next live node beyond the preference list not already carrying this write."""
    for f in fallbacks:
        if f not in used and is_up(f):
            return f
    return None


@dataclass(slots=True)
class WriteQuorum:
    """A put or delete: done after ``w`` acknowledgements; unavailable as soon as ``w`` can no
    longer be reached, or at the deadline.

    ``strict`` (Riak's pw): only acknowledgements from primaries count.
    """

    targets: tuple[Target, ...]
    w: int
    deadline: float
    strict: bool = False
    acked: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    status: Status = Status.PENDING

    def _counts(self, t: Target) -> bool:
        return not (self.strict and t.hint_for is not None)

    @property
    def _eligible(self) -> int:
        return sum(1 for t in self.targets if self._counts(t))

    @property
    def acks(self) -> int:
        return sum(1 for t in self.targets if t.node in self.acked and self._counts(t))

    def _decide(self) -> Status:
        if self.status is Status.PENDING:
            if self.acks >= self.w:
                self.status = Status.OK
            else:
                still_possible = sum(
                    1
                    for t in self.targets
                    if self._counts(t) and t.node not in self.failed and t.node not in self.acked
                )
                if self.acks + still_possible < self.w:
                    self.status = Status.UNAVAILABLE
        return self.status

    def on_ack(self, node: str) -> Status:
        if node not in self.failed:
            self.acked.add(node)
        return self._decide()

    def add_stand_in(self, t: Target) -> None:
        """Sloppy quorum: a fallback now carries a failed primary's write (with a hint).
        Its acknowledgement counts towards W (unless strict)."""
        if self.status is Status.PENDING and t.node not in {x.node for x in self.targets}:
            self.targets = (*self.targets, t)

    def on_error(self, node: str, reason: str) -> Status:
        if node not in self.acked:
            self.failed[node] = reason
        return self._decide()

    def tick(self, now: float) -> Status:
        if self.status is Status.PENDING and now >= self.deadline:
            self.status = Status.UNAVAILABLE
        return self._decide()

    @property
    def all_answered(self) -> bool:
        return all(t.node in self.acked or t.node in self.failed for t in self.targets)

    def explain(self) -> str:
        kind = "primary " if self.strict else ""
        msg = f"{self.acks} of {self.w} required {kind}replicas acknowledged the write"
        if self.failed:
            msg += " (" + ", ".join(f"{n}: {r}" for n, r in sorted(self.failed.items())) + ")"
        return msg


@dataclass(slots=True)
class ReadQuorum:
    """A get: done after ``r`` replies, with their merge; keeps listening for the rest so that
    replicas found stale can be repaired once every target has answered (or the deadline passed).
    """

    targets: tuple[Target, ...]
    r: int
    deadline: float
    strict: bool = False
    replies: dict[str, Obj | None] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    status: Status = Status.PENDING
    merged: Obj | None = None

    def _counts(self, node: str) -> bool:
        if not self.strict:
            return True
        return any(t.node == node and t.hint_for is None for t in self.targets)

    @property
    def answered(self) -> int:
        return sum(1 for n in self.replies if self._counts(n))

    def _decide(self) -> Status:
        if self.status is Status.PENDING:
            if self.answered >= self.r:
                self.status = Status.OK
            else:
                still = sum(
                    1
                    for t in self.targets
                    if self._counts(t.node) and t.node not in self.replies and t.node not in self.failed
                )
                if self.answered + still < self.r:
                    self.status = Status.UNAVAILABLE
        return self.status

    def on_reply(self, node: str, obj: Obj | None) -> Status:
        if node in self.replies or node in self.failed:
            return self.status
        self.replies[node] = obj
        self.merged = vclock.sync(self.merged, obj)
        return self._decide()

    def on_error(self, node: str, reason: str) -> Status:
        if node not in self.replies:
            self.failed[node] = reason
        return self._decide()

    def tick(self, now: float) -> Status:
        if self.status is Status.PENDING and now >= self.deadline:
            self.status = Status.UNAVAILABLE
        return self._decide()

    @property
    def all_answered(self) -> bool:
        return all(t.node in self.replies or t.node in self.failed for t in self.targets)

    def repairs(self) -> list[tuple[str, Obj]]:
        """Replicas that answered with less than the merge of all answers: each gets the merge.

        Only replicas that answered are repaired; a silent one is left to hinted handoff and
        anti-entropy, since we cannot tell what it holds.
        """
        merged = self.merged
        if merged is None:
            return []
        out = []
        for node, obj in self.replies.items():
            if vclock.is_stale(obj, merged):
                out.append((node, merged))
        return out

    def explain(self) -> str:
        kind = "primary " if self.strict else ""
        msg = f"{self.answered} of {self.r} required {kind}replicas answered the read"
        if self.failed:
            msg += " (" + ", ".join(f"{n}: {r}" for n, r in sorted(self.failed.items())) + ")"
        return msg
