"""The coordinator's pure decisions: plans, write and read quorums, repairs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kvstore.core import quorum, vclock
from kvstore.core.quorum import ReadQuorum, Status, Target, WriteQuorum

PREF = ("a", "b", "c")
FALLBACKS = ("d", "e")


def targets(*names: str) -> tuple[Target, ...]:
    return tuple(Target(n) for n in names)


def test_plan_asks_every_live_primary() -> None:
    p = quorum.plan(PREF, FALLBACKS, lambda n: True)
    assert p.nodes == PREF
    assert p.uncovered == ()


def test_plan_sloppy_replaces_down_primaries_with_hinted_fallbacks() -> None:
    p = quorum.plan(PREF, FALLBACKS, lambda n: n not in ("b", "c"))
    assert p.targets == (Target("a"), Target("d", "b"), Target("e", "c"))


def test_plan_skips_down_fallbacks_and_reports_uncovered() -> None:
    p = quorum.plan(PREF, FALLBACKS, lambda n: n not in ("b", "c", "d"))
    assert p.targets == (Target("a"), Target("e", "b"))
    assert p.uncovered == ("c",)


def test_plan_does_not_ask_about_the_coordinator_itself() -> None:
    asked: list[str] = []

    def is_up(n: str) -> bool:
        asked.append(n)
        return n != "c"

    p = quorum.plan(PREF, FALLBACKS, is_up, me=PREF[0])
    assert PREF[0] not in asked and PREF[0] in [t.node for t in p.targets]
    assert p == quorum.plan(PREF, FALLBACKS, lambda n: n != "c")


def test_plan_strict_has_no_fallbacks() -> None:
    p = quorum.plan(PREF, FALLBACKS, lambda n: n != "b", sloppy=False)
    assert p.nodes == ("a", "c")
    assert p.uncovered == ("b",)


def test_write_done_after_w_acks() -> None:
    wq = WriteQuorum(targets(*PREF), 2, deadline=1.0)
    assert wq.on_ack("a") is Status.PENDING
    assert wq.on_ack("c") is Status.OK
    # Late replies change nothing.
    assert wq.on_error("b", "timeout") is Status.OK


def test_write_unavailable_as_soon_as_w_is_out_of_reach() -> None:
    wq = WriteQuorum(targets(*PREF), 2, deadline=1.0)
    assert wq.on_error("a", "refused") is Status.PENDING
    assert wq.on_error("b", "refused") is Status.UNAVAILABLE
    assert wq.acks == 0
    assert "0 of 2" in wq.explain()


def test_too_few_targets_say_why_and_what_to_do() -> None:
    # A lone node with the defaults: one replica to ask, two needed. Nobody failed, so the
    # message must say why the request could never succeed.
    wq = WriteQuorum(targets("a"), 2, deadline=1.0)
    assert wq.decide() is Status.UNAVAILABLE
    why = wq.explain()
    assert why.startswith("0 of 2 required replicas acknowledged the write: only 1 live replica to ask")
    assert "--n-replicas 1 --r 1 --w 1" in why
    rq = ReadQuorum(targets("a"), 2, deadline=1.0)
    rq.on_reply("a", None)
    assert rq.explain().startswith("1 of 2 required replicas answered the read: only 1 live replica")
    # Stand-ins that do not count (pw) leave too few primaries: said as such.
    strict = WriteQuorum((Target("a"), Target("d", hint_for="b")), 2, deadline=1.0, strict=True)
    assert "only 1 live primary replica to ask" in strict.explain()
    # Enough targets: a failure is the reason, and nothing more is added.
    enough = WriteQuorum(targets(*PREF), 2, deadline=1.0)
    enough.on_error("a", "refused")
    enough.on_error("b", "refused")
    assert enough.explain() == "0 of 2 required replicas acknowledged the write (a: refused, b: refused)"


def test_write_unavailable_at_deadline() -> None:
    wq = WriteQuorum(targets(*PREF), 2, deadline=1.0)
    wq.on_ack("a")
    assert wq.tick(0.5) is Status.PENDING
    assert wq.tick(1.0) is Status.UNAVAILABLE
    assert wq.acks == 1


def test_strict_write_counts_only_primaries() -> None:
    ts = (Target("a"), Target("d", hint_for="b"), Target("e", hint_for="c"))
    wq = WriteQuorum(ts, 2, deadline=1.0, strict=True)
    wq.on_ack("d")
    wq.on_ack("e")
    assert wq.status is Status.UNAVAILABLE
    sloppy = WriteQuorum(ts, 2, deadline=1.0)
    sloppy.on_ack("d")
    assert sloppy.on_ack("e") is Status.OK


def test_read_merges_siblings_and_finds_stale_replicas() -> None:
    old = vclock.update(None, {}, b"v1", "a", 1)
    newer = vclock.update(old, vclock.context_of(old), b"v2", "a", 2)
    rq = ReadQuorum(targets(*PREF), 2, deadline=1.0)
    assert rq.on_reply("a", newer) is Status.PENDING
    assert rq.on_reply("b", old) is Status.OK
    assert vclock.values(rq.merged) == [b"v2"]  # type: ignore[arg-type]
    rq.on_reply("c", None)
    assert rq.all_answered
    assert sorted(n for n, _ in rq.repairs()) == ["b", "c"]


def test_read_keeps_concurrent_values() -> None:
    x = vclock.update(None, {}, b"x", "a", 1)
    y = vclock.update(None, {}, b"y", "b", 1)
    rq = ReadQuorum(targets(*PREF), 2, deadline=1.0)
    rq.on_reply("a", x)
    rq.on_reply("b", y)
    assert sorted(vclock.values(rq.merged)) == [b"x", b"y"]  # type: ignore[arg-type]


def test_read_unavailable_names_count() -> None:
    rq = ReadQuorum(targets(*PREF), 2, deadline=1.0)
    rq.on_reply("a", None)
    rq.on_error("b", "timeout")
    assert rq.on_error("c", "refused") is Status.UNAVAILABLE
    assert "1 of 2" in rq.explain()


@given(
    st.lists(st.tuples(st.sampled_from(PREF), st.booleans()), max_size=10),
    st.integers(1, 3),
)
def test_write_outcome_is_monotone_and_consistent(events: list[tuple[str, bool]], w: int) -> None:
    wq = WriteQuorum(targets(*PREF), w, deadline=1.0)
    seen_final: Status | None = None
    for node, ok in events:
        status = wq.on_ack(node) if ok else wq.on_error(node, "x")
        if seen_final is not None:
            assert status is seen_final  # once decided, never changes
        elif status is not Status.PENDING:
            seen_final = status
    if wq.status is Status.OK:
        assert wq.acks >= w
    if wq.status is Status.UNAVAILABLE:
        assert len(wq.failed) > len(PREF) - w


def test_read_fails_loudly_on_a_dot_minted_twice() -> None:
    rq = ReadQuorum(targets(*PREF), 2, 10.0)
    assert rq.on_reply("a", vclock.update(None, {}, b"x", "n~1", 1)) is Status.PENDING
    assert rq.on_reply("b", vclock.update(None, {}, b"y", "n~1", 2)) is Status.UNAVAILABLE
    assert "dot_conflict" in rq.explain()
    assert rq.merged is not None and vclock.values(rq.merged) == [b"x"]
