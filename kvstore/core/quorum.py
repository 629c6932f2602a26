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
from enum import Enum
from typing import Final, final

from kvstore.core import vclock
from kvstore.core.vclock import Obj
from kvstore.errors import DotConflict


class Status(Enum):
    PENDING = "pending"
    OK = "ok"
    UNAVAILABLE = "unavailable"


@final
class Target:
    """One replica to ask. ``hint_for`` names the primary a fallback stands in for.

    A plain slotted class (native under mypyc), compared and hashed by value: the request
    machines read ``node`` and ``hint_for`` several times per request, and a compiled
    NamedTuple's fields are read through the generic attribute protocol."""

    __slots__ = ("hint_for", "node")

    def __init__(self, node: str, hint_for: str | None = None) -> None:
        self.node = node
        self.hint_for = hint_for

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Target):
            return NotImplemented
        return self.node == other.node and self.hint_for == other.hint_for

    def __hash__(self) -> int:
        return hash((self.node, self.hint_for))

    def __repr__(self) -> str:
        return f"Target(node={self.node!r}, hint_for={self.hint_for!r})"


@final
class Plan:
    """Who a request asks: ``targets``, and the primaries that are down and got no stand-in
    (``uncovered``: too few healthy nodes on the ring). Slotted, as Target."""

    __slots__ = ("targets", "uncovered")

    def __init__(self, targets: tuple[Target, ...], uncovered: tuple[str, ...] = ()) -> None:
        self.targets = targets
        self.uncovered = uncovered

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return self.targets == other.targets and self.uncovered == other.uncovered

    def __hash__(self) -> int:
        return hash((self.targets, self.uncovered))

    def __repr__(self) -> str:
        return f"Plan(targets={self.targets!r}, uncovered={self.uncovered!r})"

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(t.node for t in self.targets)


def plan(
    preference: Sequence[str],
    fallbacks: Sequence[str],
    is_up: Callable[[str], bool],
    *,
    sloppy: bool = True,
    me: str = "",
) -> Plan:
    """Who to ask for a key: every live primary, and (sloppy quorum) for each primary that is
    down the next live node beyond the preference list, carrying a hint for it.

    Dynamo's rule: a primary that is down is not asked at all (its write goes to a stand-in);
    one whose state is unknown is asked. ``is_up`` answers for each node but ``me`` (the
    coordinator, which is up since it is asking: one call through Python's protocol less).
    """
    down: list[str] = []
    for p in preference:
        if p != me and not is_up(p):
            down.append(p)
    if not down:
        # The usual case: every primary is up. Its plan depends on the preference list
        # alone, so it is built once per list (a bounded cache: lists change with the ring).
        key = tuple(preference)
        cached = _ALL_UP.get(key)
        if cached is None:
            if len(_ALL_UP) >= _ALL_UP_MAX:
                _ALL_UP.clear()
            cached = _ALL_UP[key] = Plan(tuple(Target(p) for p in key))
        return cached
    targets: list[Target] = []
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


_ALL_UP: Final[dict[tuple[str, ...], Plan]] = {}
_ALL_UP_MAX: Final = 4096


def next_stand_in(
    fallbacks: Sequence[str], is_up: Callable[[str], bool], used: Sequence[str]
) -> str | None:
    """The next live node beyond the preference list not already carrying this write."""
    for f in fallbacks:
        if f not in used and is_up(f):
            return f
    return None


class _Quorum:
    """What reads and writes share: ``need`` successes out of the targets, counting only
    primaries when ``strict``; done as soon as that is reached, unavailable as soon as it no
    longer can be, or at the deadline. Once decided, the status never changes.

    The tallies are kept as events arrive (every request decides on each of its events, so
    recounting the targets each time was a visible share of a put's cost). Plain slotted
    classes with written-out ``__init__``: every request builds one, and a dataclass's
    generated init with default factories cost a visible share too."""

    __slots__ = ("_counted", "_got", "_open", "_unanswered", "deadline", "failed", "need", "status", "strict", "targets")

    def __init__(self, targets: tuple[Target, ...], need: int, deadline: float, strict: bool = False) -> None:
        self.targets = targets
        self.need = need
        self.deadline = deadline
        self.strict = strict
        self.failed: dict[str, str] = {}
        self.status = Status.PENDING
        # node -> counts towards ``need``, for every target.
        self._counted: dict[str, bool] = {}
        self._got = 0  # counted targets that succeeded
        self._open = 0  # counted targets that have neither succeeded nor failed
        self._unanswered = 0  # targets (counted or not) that have neither succeeded nor failed
        for t in targets:
            self._add(t)

    def _add(self, t: Target) -> None:
        counts = not (self.strict and t.hint_for is not None)
        self._counted[t.node] = counts
        self._unanswered += 1
        if counts:
            self._open += 1

    def _succeeded(self, node: str) -> bool:
        raise NotImplementedError

    def _count_success(self, node: str) -> None:
        counts = self._counted.get(node)
        if counts is None:
            return  # not a target (one found after the decision)
        self._unanswered -= 1
        if counts:
            self._got += 1
            self._open -= 1

    @property
    def successes(self) -> int:
        return self._got

    def _decide(self) -> Status:
        if self.status is Status.PENDING:
            if self._got >= self.need:
                self.status = Status.OK
            elif self._got + self._open < self.need:
                self.status = Status.UNAVAILABLE
        return self.status

    def decide(self) -> Status:
        """The status after the targets were set (a plan with too few of them fails at once)."""
        return self._decide()

    def on_error(self, node: str, reason: str) -> Status:
        if not self._succeeded(node):
            if node not in self.failed:
                counts = self._counted.get(node)
                if counts is not None:
                    self._unanswered -= 1
                    if counts:
                        self._open -= 1
            self.failed[node] = reason
        return self._decide()

    def tick(self, now: float) -> Status:
        if self.status is Status.PENDING and now >= self.deadline:
            self.status = Status.UNAVAILABLE
        return self._decide()

    @property
    def all_answered(self) -> bool:
        return self._unanswered == 0

    def _explain(self, what: str) -> str:
        kind = "primary " if self.strict else ""
        msg = f"{self.successes} of {self.need} required {kind}replicas {what}"
        if self.failed:
            msg += " (" + ", ".join(f"{n}: {r}" for n, r in sorted(self.failed.items())) + ")"
        asked = sum(1 for counts in self._counted.values() if counts)
        if asked < self.need:
            # Fewer targets than ``need``: the request could never succeed, whatever they
            # answered. Said, or a lone node started with the defaults (N=3, W=2) refuses
            # every write with no reason given.
            msg += (
                f": only {asked} live {kind}replica{'' if asked == 1 else 's'} to ask (too few nodes"
                " are up in the ring for this quorum; start or join more nodes, or lower r/w,"
                " e.g. a single node runs with --n-replicas 1 --r 1 --w 1)"
            )
        return msg


class WriteQuorum(_Quorum):
    """A put or delete: done after W acknowledgements (``need``). ``strict`` (Riak's pw):
    only acknowledgements from primaries count."""

    __slots__ = ("acked",)

    def __init__(self, targets: tuple[Target, ...], need: int, deadline: float, strict: bool = False) -> None:
        self.acked: set[str] = set()
        _Quorum.__init__(self, targets, need, deadline, strict)

    def _succeeded(self, node: str) -> bool:
        return node in self.acked

    @property
    def acks(self) -> int:
        return self.successes

    def on_ack(self, node: str) -> Status:
        if node not in self.failed and node not in self.acked:
            self.acked.add(node)
            self._count_success(node)
        return self._decide()

    def add_stand_in(self, t: Target) -> None:
        """Sloppy quorum: a fallback now carries a failed primary's write (with a hint).
        Its acknowledgement counts towards W (unless strict)."""
        if self.status is Status.PENDING and t.node not in self._counted:
            self.targets = (*self.targets, t)
            self._add(t)

    def explain(self) -> str:
        return self._explain("acknowledged the write")


class ReadQuorum(_Quorum):
    """A get: done after R replies (``need``), with their merge; keeps listening for the rest
    so that replicas found stale can be repaired once every target has answered (or the
    deadline passed)."""

    __slots__ = ("merged", "replies")

    def __init__(self, targets: tuple[Target, ...], need: int, deadline: float, strict: bool = False) -> None:
        self.replies: dict[str, Obj | None] = {}
        self.merged: Obj | None = None
        _Quorum.__init__(self, targets, need, deadline, strict)

    def _succeeded(self, node: str) -> bool:
        return node in self.replies

    @property
    def answered(self) -> int:
        return self.successes

    def on_reply(self, node: str, obj: Obj | None) -> Status:
        if node in self.replies or node in self.failed:
            return self.status
        try:
            merged = vclock.sync(self.merged, obj)
        except DotConflict:
            # Two versions under one dot: answering with either would hide an acknowledged
            # write, so the read fails and says why (the replicas keep both).
            self.failed[node] = DotConflict.code
            self.status = Status.UNAVAILABLE
            return self.status
        self.replies[node] = obj
        self._count_success(node)
        self.merged = merged
        return self._decide()

    def repairs(self) -> list[tuple[str, Obj]]:
        """Replicas that answered with less than the merge of all answers: each gets the merge.

        Only replicas that answered are repaired; a silent one is left to hinted handoff and
        anti-entropy, since we cannot tell what it holds.
        """
        merged = self.merged
        if merged is None:
            return []
        return [(node, merged) for node, obj in self.replies.items() if vclock.is_stale(obj, merged)]

    def explain(self) -> str:
        return self._explain("answered the read")
