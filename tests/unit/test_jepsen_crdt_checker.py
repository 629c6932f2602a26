"""The counters and sets checkers (convergent data types) on hand-made histories."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jepsen-lite"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jepsen_lite.checker import check
from test_jepsen_checker import H


def incr(h: H, t: float, p: int, n: int, outcome: str, key: str = "k") -> H:
    return h.inv(t, p, "incr", n, key=key).done(t + 0.1, p, outcome, "incr", key=key)


def read(h: H, t: float, p: int, v: Any, key: str = "k") -> H:
    return h.inv(t, p, "read", key=key).done(t + 0.1, p, "ok", "read", v, key=key)


def counters(h: H) -> dict[str, Any]:
    return check(h.events, "counters")["workload_result"]  # type: ignore[no-any-return]


def test_counter_final_within_acked_and_unknown_is_valid() -> None:
    h = H()
    incr(h, 0, 0, 3, "ok")
    incr(h, 0, 1, 2, "info")
    incr(h, 1, 0, 5, "fail")
    read(h, 2, 0, 3)
    w = counters(h.final(5, 5))  # the info increment took effect
    assert w["valid"] is True and w["acknowledged_sum"] == 3 and w["indeterminate_sum"] == 2
    assert counters(incr(incr(H(), 0, 0, 3, "ok"), 0, 1, 2, "info").final(5, 3))["valid"] is True


def test_counter_below_acked_is_lost_and_above_is_unexpected() -> None:
    w = counters(incr(incr(H(), 0, 0, 3, "ok"), 0, 1, 2, "ok").final(5, 4))
    assert w["valid"] is False and w["lost_count"] == 1 and w["lost"][0]["missing"] == 1
    # a failed increment must not count
    w = counters(incr(incr(H(), 0, 0, 3, "ok"), 0, 1, 2, "fail").final(5, 5))
    assert w["valid"] is False and w["unexpected_count"] == 1


def test_counter_read_above_what_was_invoked_is_unexpected_below_is_stale() -> None:
    h = incr(H(), 0, 0, 3, "ok")
    read(h, 1, 1, 9)
    assert counters(h.final(5, 3))["unexpected_count"] == 1
    h = incr(H(), 0, 0, 3, "ok")
    read(h, 1, 1, 0)
    w = counters(h.final(5, 3))
    assert w["valid"] is True and w["stale_reads"] == 1


def test_counter_without_final_read_is_unknown() -> None:
    assert counters(incr(H(), 0, 0, 3, "ok"))["valid"] == "unknown"


def remove(h: H, t: float, p: int, v: int, outcome: str) -> H:
    return h.inv(t, p, "remove", v).done(t + 0.1, p, outcome, "remove", v)


def sets(h: H) -> dict[str, Any]:
    return check(h.events, "sets")["workload_result"]  # type: ignore[no-any-return]


def test_sets_removed_members_may_go_acked_adds_must_stay() -> None:
    h = H().add(0, 0, 1, "ok").add(0, 1, 2, "ok").add(0, 2, 3, "info")
    remove(h, 1, 0, 1, "ok")
    remove(h, 1, 1, 2, "info")
    assert sets(h.final(5, [3]))["valid"] is True
    h = H().add(0, 0, 1, "ok").add(0, 1, 2, "ok")
    w = sets(h.final(5, [1]))
    assert w["valid"] is False and w["lost"] == [{"key": "k", "value": 2}]


def test_sets_acked_remove_that_comes_back_is_resurrected() -> None:
    h = H().add(0, 0, 1, "ok")
    remove(h, 1, 0, 1, "ok")
    w = sets(h.final(5, [1]))
    assert w["valid"] is False and w["resurrected_count"] == 1
    w = sets(H().add(0, 0, 1, "fail").final(5, [1, 7]))
    assert w["revived_count"] == 1 and w["unexpected_count"] == 1
