"""The request machines alone: no event loop, no network, microseconds per test."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.core import vclock
from kvstore.core.request import (
    GET,
    PUT,
    KeepHint,
    ReadRequest,
    Ready,
    Repair,
    WriteRequest,
    answered_alone,
    lone_write_failed,
    read_answer,
    record_answer,
    write_answer,
)
from kvstore.errors import InvalidRequest, Unavailable

PREF = ("a", "b", "c")
FALLBACKS = ("d", "e")
NEW = vclock.update(None, {}, b"v", "a~1", 1)
REC = vclock.encode(NEW)


def up_except(*down: str):  # type: ignore[no-untyped-def]
    return lambda n: n not in down


def write(is_up=lambda n: True, **kw) -> WriteRequest:  # type: ignore[no-untyped-def]
    args = {
        "preference": PREF, "fallbacks": FALLBACKS, "is_up": is_up, "w": 2, "timeout_s": 1.0, "now": 0.0,
        "sloppy": True, "hinting": True,
    }
    args.update(kw)
    return WriteRequest("a", NEW, REC, **args)


def by_node(ready: Ready) -> dict[str, int]:
    return {s.node: s.tag for s in ready.sends}


def test_write_asks_every_primary_applies_locally_and_replies_after_w() -> None:
    m = write()
    r = m.start()
    assert r.local_write is not None and r.local_write[1] == NEW
    assert {s.node for s in r.sends} == {"b", "c"}
    assert all(s.op == PUT and s.record == REC and s.hint_for is None for s in r.sends)
    # A stand-in could still be asked if a primary fails: primaries get half the time.
    assert all(s.timeout_s == 0.5 for s in r.sends)
    assert r.deadline == 1.0 and r.reply is None
    assert m.acked(r.local_write[0]).reply is None
    done = m.acked(by_node(r)["b"])
    assert done.reply is not None and done.reply.result == {"context": vclock.encode_context(NEW.vv)}
    assert done.deadline is None


def test_a_down_primary_is_replaced_by_a_stand_in_with_a_hint() -> None:
    r = write(is_up=up_except("c")).start()
    sends = {s.node: s for s in r.sends}
    assert set(sends) == {"b", "d"}
    assert sends["d"].hint_for == "c" and sends["d"].timeout_s == 1.0


def test_a_failed_primary_is_covered_by_the_next_fallback() -> None:
    m = write()
    r = m.start()
    again = m.failed(by_node(r)["c"], "timeout")
    assert [(s.node, s.hint_for) for s in again.sends] == [("d", "c")]


def test_a_failed_stand_in_is_covered_again_and_then_kept_here() -> None:
    m = write(is_up=up_except("c"))
    r = m.start()
    r2 = m.failed(by_node(r)["d"], "unavailable")
    assert [(s.node, s.hint_for) for s in r2.sends] == [("e", "c")]
    r3 = m.failed(r2.sends[0].tag, "timeout")
    assert r3.sends == [] and r3.hints == (KeepHint("c", NEW),)


def test_covering_continues_after_the_reply() -> None:
    m = write(is_up=up_except("c"))
    r = m.start()
    assert r.local_write is not None
    m.acked(r.local_write[0])
    assert m.acked(by_node(r)["b"]).reply is not None
    late = m.failed(by_node(r)["d"], "timeout")
    assert [(s.node, s.hint_for) for s in late.sends] == [("e", "c")]
    assert late.reply is None


def test_without_fallbacks_a_down_primary_gets_a_local_hint() -> None:
    r = write(is_up=up_except("c"), fallbacks=()).start()
    assert r.hints == (KeepHint("c", NEW),)
    assert all(s.timeout_s == 1.0 for s in r.sends)  # nobody to fall back on: full time


def test_strict_with_primaries_down_is_refused_before_anything_is_stored() -> None:
    r = write(is_up=up_except("b", "c"), strict=True, sloppy=False).start()
    assert r.local_write is None and r.sends == [] and r.hints == ()
    assert r.reply is not None and isinstance(r.reply.error, Unavailable)


def test_the_deadline_makes_a_write_unavailable_with_its_count() -> None:
    m = write()
    r = m.start()
    assert r.local_write is not None
    m.acked(r.local_write[0])
    late = m.tick(1.0)
    assert late.reply is not None and isinstance(late.reply.error, Unavailable)
    assert late.reply.error.answered == 1 and late.reply.error.required == 2


def test_new_replicas_of_a_ring_change_get_the_write_uncounted() -> None:
    m = write(extra_targets=("f",))
    r = m.start()
    extra = [s for s in r.sends if s.node == "f"]
    assert len(extra) == 1 and not extra[0].counted
    assert m.acked(extra[0].tag).reply is None  # does not count towards W


def read(local=None, is_up=lambda n: True, **kw) -> ReadRequest:  # type: ignore[no-untyped-def]
    args = {"preference": PREF, "is_up": is_up, "r": 2, "timeout_s": 1.0, "now": 0.0}
    args.update(kw)
    return ReadRequest("a", local, **args)


def test_read_replies_after_r_and_repairs_the_stale_once_all_answered() -> None:
    old = vclock.update(None, {}, b"old", "b~1", 1)
    newer = vclock.update(old, vclock.context_of(old), b"new", "b~1", 2)
    m = read(local=newer)
    r = m.start()
    assert {s.node for s in r.sends} == {"b", "c"} and all(s.op == GET for s in r.sends)
    tags = by_node(r)
    r1 = m.replied(tags["b"], old, 0.1)
    assert r1.reply is not None and r1.reply.result is not None and r1.reply.result["values"] == [b"new"]
    assert r1.repairs == () and r1.deadline == 1.0  # c has not answered yet
    r2 = m.replied(tags["c"], None, 0.2)
    assert sorted(r2.repairs, key=lambda x: x.node) == [Repair("b", newer), Repair("c", newer)]
    assert r2.deadline is None


def test_read_repairs_what_answered_at_the_deadline() -> None:
    m = read(local=NEW)
    r = m.start()
    m.replied(by_node(r)["b"], None, 0.1)
    late = m.tick(1.0)
    assert late.repairs == (Repair("b", NEW),) and late.deadline is None


def test_read_unavailable_with_its_count() -> None:
    m = read(local=NEW, r=3)
    r = m.start()
    fail = m.failed(by_node(r)["b"], "timeout", 0.5)
    assert fail.reply is not None and isinstance(fail.reply.error, Unavailable)
    assert fail.reply.error.answered == 1
    assert fail.deadline is None  # decided: no repair follows a failed read, no timer needed


def _drain(m: WriteRequest, first: Ready, outcomes: Iterable[bool]) -> list[Ready]:
    """Answer every counted send in order with the given outcomes (True = ack)."""
    readies = [first]
    queue = [s for s in first.sends if s.counted]
    it = iter(outcomes)
    while queue:
        s = queue.pop(0)
        ok = next(it, True)
        ready = m.acked(s.tag) if ok else m.failed(s.tag, "timeout")
        readies.append(ready)
        queue += [x for x in ready.sends if x.counted]
    return readies


@given(st.sets(st.sampled_from(["b", "c", "d", "e"])), st.lists(st.booleans(), max_size=10))
def test_write_replies_once_and_every_primary_is_carried_or_hinted(down: set[str], outcomes: list[bool]) -> None:
    m = write(is_up=up_except(*down))
    first = m.start()
    if first.local_write is None:
        # Too few live nodes to reach W at all: refused up front, stored nowhere.
        assert first.reply is not None and first.reply.error is not None
        assert first.sends == [] and first.hints == ()
        return
    readies = _drain(m, first, outcomes)
    if first.local_write is not None:
        readies.append(m.acked(first.local_write[0]))
    readies.append(m.tick(1.0))
    replies = [r.reply for r in readies if r.reply is not None]
    assert len(replies) == 1
    # Each primary other than the coordinator either acknowledged or has a hint somewhere
    # (a stand-in asked with hint_for it, or a hint kept here) — no write is silently lost.
    asked_for = {s.hint_for for r in readies for s in r.sends if s.hint_for}
    kept_for = {h.primary for r in readies for h in r.hints}
    acked = m.quorum.acked
    for primary in ("b", "c"):
        assert primary in acked or primary in asked_for or primary in kept_for


def test_a_read_at_a_wall_time_leaves_expired_values_out_but_keeps_their_context() -> None:
    new = vclock.update(None, {}, b"short", "b~1", 1)
    short = vclock.with_expiry(new, vclock.Dot("b~1", 1), 1000)
    m = read(local=short, r=1, now_ms=1000)
    r = m.start()
    assert r.reply is not None and r.reply.result is not None
    assert r.reply.result["values"] == []
    assert vclock.decode_context(r.reply.result["context"]) == {"b~1": 1}
    r = read(local=short, r=1, now_ms=999).start()
    assert r.reply is not None and r.reply.result is not None and r.reply.result["values"] == [b"short"]


def test_only_a_lone_replica_asked_for_one_reply_answers_alone() -> None:
    assert answered_alone("a", ("a",), 1)
    assert not answered_alone("a", ("a",), 2)  # the machine says unavailable, with its count
    assert not answered_alone("a", ("b",), 1)  # not a replica: forwarded
    assert not answered_alone("a", ("a", "b"), 1)  # R=1 of N=2 still asks b, to repair it
    # A ring change's new replica gets every write too (best effort): the machine sends it.
    assert not answered_alone("a", ("a",), 1, extra=("d",))
    assert answered_alone("a", ("a",), 1, extra=("a",))


def _lone_write() -> tuple[WriteRequest, Ready]:
    m = write(preference=("a",), w=1)  # N=1 on a larger ring: fallbacks exist, none is asked
    first = m.start()
    assert first.sends == [] and first.hints == () and first.reply is None
    assert first.local_write is not None and first.deadline == 1.0
    return m, first


def test_a_lone_write_is_answered_as_the_machine_answers_it() -> None:
    m, first = _lone_write()
    assert first.local_write is not None
    done = m.acked(first.local_write[0])
    assert done.reply is not None and done.reply.result == write_answer(NEW) and done.deadline is None


@pytest.mark.parametrize("reason", [None, "storage: /d refuses writes: disk full", "timeout"])
def test_a_lone_write_fails_as_the_machine_fails_it(reason: str | None) -> None:
    """None: the local write did not become durable before the deadline."""
    m, first = _lone_write()
    assert first.local_write is not None
    r = m.tick(1.0) if reason is None else m.failed(first.local_write[0], reason)
    assert r.reply is not None and isinstance(r.reply.error, Unavailable)
    assert r.hints == () and r.sends == []  # the only replica is the coordinator: no hint for it
    ours = lone_write_failed("a", reason)
    assert (str(ours), ours.answered, ours.required) == (str(r.reply.error), r.reply.error.answered, r.reply.error.required)


# A version built by a few writers (some blind, some with the context they read), maybe a
# delete among them and an expiring value: every shape a lone replica's copy can have.
_writes = st.lists(
    st.tuples(st.sampled_from(["a~1", "b~1", "c~1"]), st.booleans(), st.one_of(st.none(), st.binary(max_size=4))),
    min_size=1, max_size=6,
)


@given(_writes, st.booleans(), st.booleans(), st.integers(0, 3000))
def test_a_lone_replicas_answer_is_what_the_machine_would_answer(
    writes: list[tuple[str, bool, bytes | None]], lww: bool, expiring: bool, now_ms: int
) -> None:
    obj: vclock.Obj | None = None
    for ts, (actor, with_ctx, value) in enumerate(writes, 1):
        obj = vclock.update(obj, vclock.context_of(obj) if with_ctx else {}, value, actor, ts)
    assert obj is not None
    if expiring:
        obj = vclock.with_expiry(obj, vclock.Dot(writes[-1][0], obj.vv[writes[-1][0]]), 1500)
    for local in (None, obj, vclock.decode(vclock.encode(obj))):
        first = read(local=local, preference=("a",), r=1, lww=lww, now_ms=now_ms).start()
        assert first.sends == [] and first.repairs == () and first.deadline is None
        assert first.reply is not None and first.reply.error is None
        assert read_answer(local, lww=lww, now_ms=now_ms) == first.reply.result
        # What the node answers from its stored record (the usual one without an Obj).
        rec = None if local is None else vclock.encode(local)
        assert record_answer(rec, lww=lww, wall_ms=lambda: now_ms) == first.reply.result


def test_the_usual_record_is_answered_without_a_version_and_anything_else_as_decoded() -> None:
    one = vclock.update(None, {}, b"v", "a~1", 5)
    assert vclock.read_plain(vclock.encode(one)) == ([b"v"], vclock.context_bytes(one))
    gone = vclock.update(one, vclock.context_of(one), None, "a~1", 6)
    assert vclock.read_plain(vclock.encode(gone)) == ([], vclock.context_bytes(gone))
    two = vclock.update(one, {}, b"w", "b~1", 7)  # two writers, two siblings: decoded
    assert vclock.read_plain(vclock.encode(two)) == two
    for bad in (b"\xc1", vclock.encode(one)[:-1], b"\x94\x01\x91\xa1a\x91\x01\x94\x00\x02\x01\xc0"):
        with pytest.raises(InvalidRequest, match="malformed record"):
            vclock.decode(bad)
        with pytest.raises(InvalidRequest, match="malformed record"):
            record_answer(bad, lww=False, wall_ms=lambda: 0)
