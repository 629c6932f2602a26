"""One get, put or delete at its coordinator, as a pure machine (etcd-raft's ``Ready`` shape).

The runtime (kvstore.runtime.coordinator) and the whole-cluster simulation
(kvstore.testing.simcluster) both drive these machines; neither decides anything itself.
A machine is built from the request, the coordinator's view (preference list, fallbacks,
liveness) and ``now``; ``start`` and every later event return a :class:`Ready`, the effects
to carry out:

* ``sends``: replica calls to other nodes, each with its own timeout and a ``tag``; the
  driver reports each outcome back with :meth:`WriteRequest.acked` / :meth:`WriteRequest.failed`
  (or :meth:`ReadRequest.replied`). ``counted`` says whether the answer feeds the quorum
  (best-effort writes to a ring change's new replicas and read repairs do not).
* ``local_write``: the coordinator's own copy of a write (applied to the table at once,
  acknowledged through its tag once durable).
* ``hints``: keep the version here for a primary that no stand-in carries.
* ``repairs``: read repair, a merged version for a replica found stale (the coordinator
  itself included).
* ``reply``: the answer to the client, given once.
* ``deadline``: when to call ``tick`` next; every Ready carries the current one, None once
  the machine needs no more ticks (the driver cancels its timer).

Every decision lives here: who is asked, the shortened timeout of a primary when a stand-in
could still take over, which stand-in replaces a failed primary or a failed stand-in, when a
hint is kept locally, when the request is done, which replicas get repaired. All messages
of one loop turn are in the Ready lists, so a driver can batch them per peer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple, TypeVar

from kvstore.core import quorum, vclock
from kvstore.core.quorum import ReadQuorum, Status, WriteQuorum
from kvstore.core.vclock import Obj
from kvstore.errors import KVError, Unavailable

__all__ = [
    "KeepHint", "ReadRequest", "Ready", "Repair", "Reply", "Send", "WriteRequest", "answered_alone",
    "lone_write_failed", "read_answer", "write_answer",
]

PUT: Final = "put"
GET: Final = "get"


class Send:
    """Call ``node``'s replica: ``op`` is PUT (``record``, maybe as a hint for ``hint_for``)
    or GET. ``tag`` identifies the call when its outcome is reported back.

    A plain slotted class, as Ready: every replica call builds one, and a NamedTuple's
    generated ``__new__`` is an interpreted frame even when this module is compiled."""

    __slots__ = ("counted", "hint_for", "node", "op", "record", "tag", "timeout_s")

    def __init__(
        self, tag: int, node: str, op: str, timeout_s: float, record: bytes | None = None,
        hint_for: str | None = None, counted: bool = True,
    ) -> None:
        self.tag = tag
        self.node = node
        self.op = op
        self.timeout_s = timeout_s
        self.record = record
        self.hint_for = hint_for
        self.counted = counted

    def __repr__(self) -> str:
        return (
            f"Send(tag={self.tag!r}, node={self.node!r}, op={self.op!r}, timeout_s={self.timeout_s!r}, "
            f"record={self.record!r}, hint_for={self.hint_for!r}, counted={self.counted!r})"
        )


class KeepHint(NamedTuple):
    """Keep ``obj`` in this node's hint store for ``primary``."""

    primary: str
    obj: Obj


class Repair(NamedTuple):
    """Read repair: merge ``obj`` into ``node``'s copy (``node`` may be the coordinator)."""

    node: str
    obj: Obj


class Reply:
    """The client's answer: ``result`` on success, else ``error``. Slotted, as Send."""

    __slots__ = ("error", "result")

    def __init__(self, result: dict[str, Any] | None = None, error: KVError | None = None) -> None:
        self.result = result
        self.error = error

    def __repr__(self) -> str:
        return f"Reply(result={self.result!r}, error={self.error!r})"


class Ready:
    """One event's effects (see the module doc). A plain slotted class: every event of every
    request builds one, and a dataclass's init with default factories costs twice as much."""

    __slots__ = ("deadline", "hints", "local_write", "repairs", "reply", "sends")

    def __init__(self) -> None:
        self.sends: list[Send] = []
        self.local_write: tuple[int, Obj] | None = None  # (tag, version)
        # Tuples, grown only on the rare events that add to them: most Readys have neither,
        # and two empty lists per Ready were a visible share of building one.
        self.hints: tuple[KeepHint, ...] = ()
        self.repairs: tuple[Repair, ...] = ()
        self.reply: Reply | None = None
        self.deadline: float | None = None

    def __repr__(self) -> str:
        return (
            f"Ready(sends={self.sends!r}, local_write={self.local_write!r}, hints={self.hints!r}, "
            f"repairs={self.repairs!r}, reply={self.reply!r}, deadline={self.deadline!r})"
        )


def read_answer(merged: Obj | None, *, lww: bool, now_ms: int) -> dict[str, Any]:
    """A read's answer to the client, from the merge of the versions it was given: the
    values live at ``now_ms`` (under ``lww`` the newest alone) and the merge's context."""
    if merged is None:
        return {"values": [], "context": b""}
    shown = vclock.lww(merged) if lww else merged
    return {
        "values": vclock.values_at(shown, now_ms),
        "context": vclock.context_bytes(merged),  # context_of(merged), no copy
    }


def record_answer(rec: bytes | None, *, lww: bool, wall_ms: Callable[[], int]) -> dict[str, Any]:
    """:func:`read_answer` of the stored record ``rec`` (None: not found), a read answered
    from one copy alone (:func:`answered_alone`). The usual record is answered without
    building its version (:func:`vclock.read_plain`); the clock is read only for a record
    with expiries, the one answer that depends on the time."""
    if rec is None:
        return read_answer(None, lww=lww, now_ms=0)
    got = vclock.read_plain(rec)
    if isinstance(got, tuple):
        return {"values": got[0], "context": got[1]}
    return read_answer(got, lww=lww, now_ms=wall_ms() if vclock.has_expiry(rec) else 0)


def write_answer(new: Obj) -> dict[str, Any]:
    """A write's answer to the client once enough replicas hold ``new``: its context."""
    return {"context": vclock.context_bytes(new)}


def answered_alone(name: str, preference: Sequence[str], need: int, extra: Sequence[str] = ()) -> bool:
    """Whether a request is answered by its coordinator alone, with no machine: the
    coordinator is the key's only replica (N=1), one answer is all the request needs, and
    no ring change gives a write new replicas to carry it too (``extra``: the
    ``extra_targets`` a :class:`WriteRequest` would get).

    Then there is no one to ask, no stand-in or hint (the only replica is up: it is the one
    asking) and no other copy to repair. A read's answer is :func:`read_answer` of the
    coordinator's copy, what a :class:`ReadRequest` gives in its first step; a write's is
    :func:`write_answer` once its local write is durable, or :func:`lone_write_failed`
    if that fails or the deadline passes first, as a :class:`WriteRequest` decides. Either
    way without building one: a quarter of such a read's instructions, a sixth of a
    write's (benchmarks/README.md, the fifteenth pass)."""
    if need != 1 or len(preference) != 1 or preference[0] != name:
        return False
    return not extra or all(x == name for x in extra)


def lone_write_failed(name: str, reason: str | None) -> Unavailable:
    """The error of a write answered alone (:func:`answered_alone`) whose local write
    failed with ``reason``, or did not become durable by the deadline (None): the quorum's
    own account of it, as a :class:`WriteRequest` would give."""
    q = WriteQuorum((quorum.Target(name),), 1, 0.0)
    status = q.tick(0.0) if reason is None else q.on_error(name, reason)
    assert status is Status.UNAVAILABLE
    return Unavailable(q.explain(), answered=q.acks, required=1)


_T = TypeVar("_T")


def _take(by_tag: dict[int, _T], tag: int) -> _T | None:
    """``by_tag.pop(tag, None)``: compiled, dict.pop with a default is a method call by name
    through Python's protocol (~400 instructions), for every replica answer."""
    v = by_tag.get(tag)
    if v is not None or tag in by_tag:  # a write's uncounted call maps to None
        del by_tag[tag]
    return v


class WriteRequest:
    """A put or delete whose new version (``new``, already minted) goes to the replicas.

    Sloppy quorum (Dynamo): a primary known to be down is not asked; the next live fallback
    carries its write with a hint. A primary that is asked gets half the time when a stand-in
    could still be asked after it fails; a primary or a stand-in that fails is covered by the
    next fallback, or, with none left, by a hint kept here, even after the reply went out
    (the write must still reach that primary).
    """

    __slots__ = (
        "_by_tag", "_last_tag", "_plan", "_tried", "extra_targets", "fallbacks", "hinting", "is_up",
        "name", "new", "primary_timeout_s", "quorum", "record", "settled", "sloppy", "timeout_s", "w",
    )

    def __init__(
        self,
        name: str,
        new: Obj,
        record: bytes,
        *,
        preference: Sequence[str],
        fallbacks: Sequence[str],
        is_up: Callable[[str], bool],
        w: int,
        timeout_s: float,
        now: float,
        sloppy: bool,
        hinting: bool,
        strict: bool = False,
        extra_targets: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.new = new
        self.record = record
        self.fallbacks = tuple(fallbacks)
        self.is_up = is_up
        self.w = w
        self.timeout_s = timeout_s
        self.sloppy = sloppy
        self.hinting = hinting
        self.extra_targets = tuple(extra_targets)
        self._plan = quorum.plan(preference, self.fallbacks, is_up, sloppy=sloppy, me=name)
        self.quorum = WriteQuorum(self._plan.targets, w, now + timeout_s, strict=strict)
        # A primary gets part of the time, so that if it does not answer a stand-in can still
        # be asked before the deadline (Dynamo: "does not answer in time").
        self.primary_timeout_s = timeout_s * 0.5 if sloppy and self.fallbacks else timeout_s
        # Every node asked to carry the write (the quorum stops adding targets once it has
        # decided, but a stand-in found after that must still not be asked twice).
        self._tried = [t.node for t in self._plan.targets]
        self._last_tag = 0  # tags count up from 1
        self._by_tag: dict[int, quorum.Target | None] = {}  # None: not counted
        # Replied: from now on an acknowledgement changes nothing (a failure still may, since
        # the failed replica's copy must be covered by a stand-in or a hint). An attribute,
        # not a property: the driver asks on every acknowledgement.
        self.settled = False

    # ------------------------------------------------------------------ events
    def start(self) -> Ready:
        ready = Ready()
        if self.quorum.decide() is Status.UNAVAILABLE:
            # Too few replicas can be asked at all (strict, with primaries known down): refused
            # before anything is stored anywhere.
            self._settle(Status.UNAVAILABLE, ready)
            return ready
        for t in self._plan.targets:
            if t.node == self.name:
                tag = self._last_tag = self._last_tag + 1
                self._by_tag[tag] = t
                ready.local_write = (tag, self.new)
            else:
                ready.sends.append(self._send(t))
        for primary in self._plan.uncovered:
            self._cover(primary, ready)
        # During a ring change the partition's new replicas get every write too (best effort,
        # not counted towards W): the handoff stream plus these make them complete.
        for extra in self.extra_targets:
            if extra != self.name and extra not in self._tried and self.is_up(extra):
                tag = self._last_tag = self._last_tag + 1
                self._by_tag[tag] = None
                ready.sends.append(Send(tag, extra, PUT, self.timeout_s, self.record, None, counted=False))
        self._settle(self.quorum.decide(), ready)
        return ready

    def acked(self, tag: int) -> Ready:
        ready = Ready()
        t = _take(self._by_tag, tag)
        self._settle(self.quorum.status if t is None else self.quorum.on_ack(t.node), ready)
        return ready

    def failed(self, tag: int, reason: str) -> Ready:
        ready = Ready()
        t = _take(self._by_tag, tag)
        if t is None:
            self._settle(self.quorum.status, ready)
            return ready
        if t.node != self.name:
            # A failed stand-in's hint is re-covered like a failed primary's write: else the
            # primary would miss it until anti-entropy finds it.
            self._cover(t.hint_for or t.node, ready)
        self._settle(self.quorum.on_error(t.node, reason), ready)
        return ready

    def tick(self, now: float) -> Ready:
        ready = Ready()
        self._settle(self.quorum.tick(now), ready)
        return ready

    @property
    def status(self) -> Status:
        return self.quorum.status

    # ------------------------------------------------------------------ decisions
    def _send(self, t: quorum.Target) -> Send:
        tag = self._last_tag = self._last_tag + 1
        self._by_tag[tag] = t
        timeout = self.primary_timeout_s if t.hint_for is None else self.timeout_s
        return Send(tag, t.node, PUT, timeout, self.record, t.hint_for)

    def _cover(self, primary: str, ready: Ready) -> None:
        """Find a stand-in for a primary that is down or failed; else keep the hint here."""
        stand_in = quorum.next_stand_in(self.fallbacks, self.is_up, self._tried) if self.sloppy else None
        if stand_in is not None and stand_in != self.name:
            self._tried.append(stand_in)
            t = quorum.Target(stand_in, hint_for=primary)
            self.quorum.add_stand_in(t)
            ready.sends.append(self._send(t))
        elif self.hinting:
            ready.hints += (KeepHint(primary, self.new),)

    def _settle(self, status: Status, ready: Ready) -> None:
        """Every event ends here: the reply once decided, and the deadline while it is not."""
        if status is Status.PENDING:
            ready.deadline = self.quorum.deadline
            return
        if self.settled:
            return
        self.settled = True
        if status is Status.OK:
            ready.reply = Reply(write_answer(self.new))
        else:
            q = self.quorum
            ready.reply = Reply(error=Unavailable(q.explain(), answered=q.acks, required=self.w))


class ReadRequest:
    """A get: R replies (the coordinator's own copy, ``local``, among them when it is a
    replica), their merge as the answer; once every replica answered, or at the deadline,
    the ones found stale are repaired with the merge."""

    __slots__ = ("_by_tag", "_last_tag", "_plan", "_repaired", "_replied", "local", "lww", "name", "now_ms", "quorum", "r", "timeout_s")

    def __init__(
        self,
        name: str,
        local: Obj | None,
        *,
        preference: Sequence[str],
        is_up: Callable[[str], bool],
        r: int,
        timeout_s: float,
        now: float,
        strict: bool = False,
        lww: bool = False,
        now_ms: int = 0,
    ) -> None:
        self.name = name
        self.local = local
        self.r = r
        # Wall clock (ms) the answer is given at: values expired by then read as absent (TTL).
        self.now_ms = now_ms
        self.timeout_s = timeout_s
        self.lww = lww
        self._plan = quorum.plan(preference, (), is_up, sloppy=False, me=name)
        self.quorum = ReadQuorum(self._plan.targets, r, now + timeout_s, strict=strict)
        self._last_tag = 0  # tags count up from 1
        self._by_tag: dict[int, str] = {}
        self._replied = False
        self._repaired = False

    def start(self) -> Ready:
        ready = Ready()
        name, asks_self = self.name, False
        for t in self._plan.targets:
            if t.node != name:
                tag = self._last_tag = self._last_tag + 1
                self._by_tag[tag] = t.node
                ready.sends.append(Send(tag, t.node, GET, self.timeout_s))
            else:
                asks_self = True
        if asks_self:
            self._settle(self.quorum.on_reply(self.name, self.local), ready, None)
        else:
            self._settle(self.quorum.decide(), ready, None)
        return ready

    def replied(self, tag: int, obj: Obj | None, now: float) -> Ready:
        ready = Ready()
        node = _take(self._by_tag, tag)
        self._settle(self.quorum.status if node is None else self.quorum.on_reply(node, obj), ready, now)
        return ready

    def failed(self, tag: int, reason: str, now: float) -> Ready:
        ready = Ready()
        node = _take(self._by_tag, tag)
        self._settle(self.quorum.status if node is None else self.quorum.on_error(node, reason), ready, now)
        return ready

    def tick(self, now: float) -> Ready:
        ready = Ready()
        self._settle(self.quorum.tick(now), ready, now)
        return ready

    @property
    def status(self) -> Status:
        return self.quorum.status

    def _settle(self, status: Status, ready: Ready, now: float | None) -> None:
        q = self.quorum
        if status is not Status.PENDING and not self._replied:
            self._replied = True
            if status is Status.OK:
                ready.reply = Reply(read_answer(q.merged, lww=self.lww, now_ms=self.now_ms))
            else:
                ready.reply = Reply(error=Unavailable(q.explain(), answered=q.answered, required=self.r))
        past = now is not None and now >= q.deadline
        if not self._repaired and status is Status.OK and (q.all_answered or past):
            # Every replica answered (or time is up): repair the ones found stale.
            self._repaired = True
            stale = q.repairs()
            if stale:
                ready.repairs = tuple(Repair(node, obj) for node, obj in stale)
        done = status is Status.UNAVAILABLE or self._repaired or q.all_answered
        ready.deadline = None if done else q.deadline
