"""The checker on hand-made histories, including ones it must judge invalid."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jepsen-lite"))

from jepsen_lite.checker import check, latency_quantiles
from jepsen_lite.history import Event, History, pair_ops, read_history

S = 1_000_000_000


class H:
    """Builds a history with explicit times (seconds) so windows and staleness are exact."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def _add(self, ev: Event) -> H:
        ev.index = len(self.events)
        self.events.append(ev)
        return self

    def inv(self, t: float, p: int | str, f: str, value: Any = None, key: str | None = "k",
            client: int | None = None) -> H:
        return self._add(Event("invoke", p, f, int(t * S), key=key, value=value,
                               client=p if client is None and isinstance(p, int) else client))

    def done(self, t: float, p: int | str, type_: str, f: str, value: Any = None,
             key: str | None = "k", client: int | None = None, **extra: Any) -> H:
        return self._add(Event(type_, p, f, int(t * S), key=key, value=value,
                               client=p if client is None and isinstance(p, int) else client,
                               extra=extra))

    def add(self, t: float, p: int, v: int, outcome: str, dt: float = 0.1) -> H:
        return self.inv(t, p, "add", v).done(t + dt, p, outcome, "add", v)

    def final(self, t: float, values: list[Any], key: str = "k") -> H:
        return self.inv(t, "final-0", "read", key=key).done(t + 0.1, "final-0", "ok", "read", values, key=key)

    def nemesis(self, t0: float, t1: float, fid: int, kind: str) -> H:
        v = {"id": fid, "kind": kind, "label": kind}
        self.inv(t0, "nemesis", "start", v, key=None).done(t0 + 0.01, "nemesis", "info", "start", v, key=None)
        return self.inv(t1, "nemesis", "stop", v, key=None).done(t1 + 0.01, "nemesis", "info", "stop", v, key=None)


# --------------------------------------------------------------------------- set


def test_set_all_present_is_valid() -> None:
    h = H().add(0, 0, 1, "ok").add(0, 1, 2, "ok").add(1, 0, 3, "fail").add(1, 1, 4, "info")
    r = check(h.final(5, [1, 2]).events, "set")
    w = r["workload_result"]
    assert r["valid"] is True
    assert (w["acknowledged_count"], w["lost_count"], w["recovered_count"]) == (2, 0, 0)


def test_set_lost_acked_add_is_invalid() -> None:
    h = H().add(0, 0, 1, "ok").add(0, 1, 2, "ok").add(1, 0, 3, "ok")
    r = check(h.final(5, [1, 3]).events, "set")
    w = r["workload_result"]
    assert r["valid"] is False
    assert w["lost"] == [2] and w["lost_count"] == 1
    assert w["lost_fraction"] == pytest.approx(1 / 3)


def test_set_indeterminate_present_is_recovered() -> None:
    h = H().add(0, 0, 1, "ok").add(0, 1, 2, "info")
    w = check(h.final(5, [1, 2]).events, "set")["workload_result"]
    assert w["recovered"] == [2] and w["recovered_count"] == 1 and w["valid"] is True


def test_set_never_attempted_is_unexpected_and_invalid() -> None:
    h = H().add(0, 0, 1, "ok")
    r = check(h.final(5, [1, 99]).events, "set")
    assert r["valid"] is False
    assert r["workload_result"]["unexpected"] == [99]


def test_set_failed_but_present_is_revived_and_invalid() -> None:
    h = H().add(0, 0, 1, "ok").add(1, 0, 2, "fail")
    r = check(h.final(5, [1, 2]).events, "set")
    assert r["valid"] is False
    assert r["workload_result"]["revived"] == [2]


def test_set_without_final_read_is_unknown() -> None:
    h = H().add(0, 0, 1, "ok")
    h.inv(5, "final-0", "read").done(6, "final-0", "fail", "read", error="unavailable")
    r = check(h.events, "set")
    assert r["valid"] == "unknown"
    assert r["workload_result"]["lost_count"] == 0


def test_set_with_nothing_acked_is_unknown() -> None:
    h = H().add(0, 0, 1, "fail")
    assert check(h.final(5, []).events, "set")["valid"] == "unknown"


def test_set_invoke_without_completion_counts_as_indeterminate() -> None:
    h = H().add(0, 0, 1, "ok").inv(1, 1, "add", 2)
    w = check(h.final(5, [1, 2]).events, "set")["workload_result"]
    assert w["indeterminate_count"] == 1 and w["recovered"] == [2]


# --------------------------------------------------------------------- register


def write(h: H, t: float, p: int, v: int, outcome: str, observed: list[int], key: str = "k") -> H:
    h.inv(t, p, "write", v, key=key)
    extra = {} if outcome == "fail" else {"observed": observed}
    return h.done(t + 0.1, p, outcome, "write", v, key=key, **extra)


def read(h: H, t: float, p: int, values: list[int], key: str = "k") -> H:
    return h.inv(t, p, "read", key=key).done(t + 0.1, p, "ok", "read", values, key=key)


def test_register_superseded_writes_are_not_lost() -> None:
    h = H()
    write(h, 0, 0, 1, "ok", [])
    write(h, 1, 1, 2, "ok", [1])
    write(h, 2, 0, 3, "ok", [2])
    r = check(h.final(5, [3]).events, "register")
    assert r["valid"] is True
    assert r["workload_result"]["lost_count"] == 0


def test_register_concurrent_write_dropped_is_lost() -> None:
    # Both writers saw 1; LWW keeps one of their values and silently drops the other.
    h = H()
    write(h, 0, 0, 1, "ok", [])
    write(h, 1, 0, 2, "ok", [1])
    write(h, 1, 1, 3, "ok", [1])
    r = check(h.final(5, [3]).events, "register")
    assert r["valid"] is False
    assert r["workload_result"]["lost"] == [{"key": "k", "value": 2}]


def test_register_siblings_keep_both() -> None:
    h = H()
    write(h, 0, 0, 1, "ok", [])
    write(h, 1, 0, 2, "ok", [1])
    write(h, 1, 1, 3, "ok", [1])
    assert check(h.final(5, [2, 3]).events, "register")["valid"] is True


def test_register_info_write_through_an_observer_is_recovered() -> None:
    h = H()
    write(h, 0, 0, 1, "info", [])
    write(h, 1, 1, 2, "ok", [1])
    w = check(h.final(5, [2]).events, "register")["workload_result"]
    assert w["recovered"] == [{"key": "k", "value": 1}] and w["valid"] is True


def test_register_unexpected_value_in_read_is_invalid() -> None:
    h = H()
    write(h, 0, 0, 1, "ok", [])
    read(h, 1, 1, [1, 42])
    r = check(h.final(5, [1]).events, "register")
    assert r["valid"] is False
    assert r["workload_result"]["unexpected"][0]["value"] == 42


def test_register_stale_reads_and_read_your_writes() -> None:
    h = H()
    write(h, 0, 0, 1, "ok", [])
    write(h, 1, 0, 2, "ok", [1])
    read(h, 2, 0, [1])   # own write 2 missed: stale and a read-your-writes violation
    read(h, 2, 1, [1])   # someone else's write missed: stale only
    read(h, 3, 1, [2])   # fresh
    read(h, 1.05, 1, [1])  # concurrent with write 2: not stale
    r = check(h.final(5, [2]).events, "register")
    w = r["workload_result"]
    assert r["valid"] is True
    assert w["reads_ok"] == 4
    assert w["stale_reads"] == 2
    assert w["read_your_writes_violations"] == 1


def test_register_keys_are_independent() -> None:
    h = H()
    write(h, 0, 0, 1, "ok", [], key="a")
    write(h, 0, 1, 2, "ok", [], key="b")
    h.final(5, [1], key="a").final(5, [1], key="b")
    r = check(h.events, "register")
    assert r["valid"] is False
    assert r["workload_result"]["lost"] == [{"key": "b", "value": 2}]
    assert r["workload_result"]["unexpected"] == [{"key": "b", "value": 1}]


def test_register_missing_final_read_is_unknown() -> None:
    h = H()
    write(h, 0, 0, 1, "ok", [], key="a")
    write(h, 0, 1, 2, "ok", [], key="b")
    h.final(5, [1], key="a")
    r = check(h.events, "register")
    assert r["valid"] == "unknown"
    assert r["workload_result"]["undecided_keys"] == ["b"]


# ------------------------------------------------------------------ independent


def iwrite(h: H, t: float, p: int, key: str, v: int, outcome: str) -> H:
    return h.inv(t, p, "write", v, key=key).done(t + 0.1, p, outcome, "write", v, key=key)


def test_independent_valid_and_lost() -> None:
    h = H()
    iwrite(h, 0, 0, "a", 1, "ok")
    iwrite(h, 0, 1, "b", 2, "ok")
    iwrite(h, 0, 2, "c", 3, "info")
    iwrite(h, 0, 3, "d", 4, "fail")
    h.final(5, [1], "a").final(5, [2], "b").final(5, [3], "c").final(5, [], "d")
    r = check(h.events, "independent")
    assert r["valid"] is True
    assert r["workload_result"]["recovered_count"] == 1
    h2 = H()
    iwrite(h2, 0, 0, "a", 1, "ok")
    iwrite(h2, 0, 1, "b", 2, "ok")
    h2.final(5, [1], "a").final(5, [], "b")
    r2 = check(h2.events, "independent")
    assert r2["valid"] is False
    assert r2["workload_result"]["lost"] == [{"key": "b", "value": 2}]


def test_independent_revived_and_unexpected() -> None:
    h = H()
    iwrite(h, 0, 0, "a", 1, "fail")
    iwrite(h, 0, 1, "b", 2, "ok")
    h.final(5, [1], "a").final(5, [2, 7], "b")
    w = check(h.events, "independent")["workload_result"]
    assert w["revived_count"] == 1 and w["unexpected_count"] == 1 and w["valid"] is False


# ---------------------------------------------------------------------- deletes


def dele(h: H, t: float, p: int, observed: list[int] | None, outcome: str, key: str = "k",
         dt: float = 0.1) -> H:
    """A delete whose read saw ``observed`` (None: abandoned with nothing on record)."""
    h.inv(t, p, "delete", key=key)
    extra = {} if observed is None else {"observed": observed}
    return h.done(t + dt, p, outcome, "delete", key=key, **extra)


def deletes(h: H) -> dict[str, Any]:
    return check(h.events, "deletes")


def test_deletes_add_delete_readd_is_valid() -> None:
    h = H().add(0, 0, 1, "ok").add(0.5, 1, 2, "ok")
    dele(h, 1, 0, [1, 2], "ok")
    h.add(2, 1, 3, "ok")  # re-added blindly after the delete
    r = deletes(h.final(9, [3]))
    w = r["workload_result"]
    assert r["valid"] is True
    assert (w["acknowledged_count"], w["deletes_acknowledged"]) == (3, 1)
    assert w["lost_count"] == w["resurrected_count"] == 0


def test_deletes_lost_acked_write_is_invalid() -> None:
    # Value 2 was acked after the delete's read (the delete did not observe it): it must live.
    h = H().add(0, 0, 1, "ok")
    dele(h, 1, 0, [1], "ok")
    h.add(1.05, 1, 2, "ok")
    r = deletes(h.final(9, []))
    w = r["workload_result"]
    assert r["valid"] is False
    assert w["lost"] == [{"key": "k", "value": 2}]
    assert w["resurrected_count"] == 0


def test_deletes_write_acked_before_a_delete_that_missed_it_must_survive() -> None:
    # The delete's read came after 2 was acked but did not see it (a stale read): its
    # context does not cover 2, so 2 must survive even though it is older than the delete.
    h = H().add(0, 0, 1, "ok").add(0, 1, 2, "ok")
    dele(h, 1, 0, [1], "ok")
    r = deletes(h.final(9, []))
    assert r["valid"] is False and r["workload_result"]["lost"] == [{"key": "k", "value": 2}]


def test_deletes_resurrection_is_invalid() -> None:
    # Deleted with the context of a read that saw 1, never re-added: 1 back at the end.
    h = H().add(0, 0, 1, "ok")
    dele(h, 1, 0, [1], "ok")
    r = deletes(h.final(9, [1]))
    w = r["workload_result"]
    assert r["valid"] is False
    assert w["resurrected_count"] == 1 and w["resurrected_keys"] == ["k"]
    assert w["resurrected"][0]["value"] == 1 and w["lost_count"] == 0


def test_deletes_resurrection_of_an_indeterminate_add_is_invalid_too() -> None:
    # Whether or not its add was acked, a value an acked delete observed must stay gone.
    h = H().add(0, 0, 1, "info")
    dele(h, 1, 1, [1], "ok")
    r = deletes(h.final(9, [1]))
    assert r["valid"] is False and r["workload_result"]["resurrected_count"] == 1


def test_deletes_unknown_outcomes_may_go_either_way() -> None:
    for final in ([], [1], [2], [1, 2], [3], [1, 3]):
        h = H().add(0, 0, 1, "ok")
        dele(h, 1, 0, [1], "info")  # may or may not have removed 1
        h.add(2, 1, 2, "info")  # may or may not be there
        h.add(2, 2, 3, "ok")
        dele(h, 3, 2, None, "info")  # abandoned with its read unknown: may have removed 3
        h.add(5, 3, 4, "ok")  # invoked after that delete ended: must be there
        r = deletes(h.final(9, [*final, 4]))
        assert r["valid"] is True, (final, r["workload_result"])
        assert r["workload_result"]["recovered_count"] == (2 in final)
    h = H().add(0, 0, 1, "ok")
    dele(h, 3, 2, None, "info")
    h.add(5, 3, 4, "ok")
    r = deletes(h.final(9, [1]))
    assert r["valid"] is False and r["workload_result"]["lost"] == [{"key": "k", "value": 4}]


def test_deletes_failed_delete_removes_nothing_and_failed_add_must_not_appear() -> None:
    h = H().add(0, 0, 1, "ok")
    dele(h, 1, 0, [], "fail")  # its read failed: never sent
    r = deletes(h.final(9, []))
    assert r["valid"] is False and r["workload_result"]["lost_count"] == 1
    h = H().add(0, 0, 1, "ok").add(1, 1, 2, "fail")
    r = deletes(h.final(9, [1, 2]))
    assert r["valid"] is False and r["workload_result"]["revived_count"] == 1
    r = deletes(H().add(0, 0, 1, "ok").final(9, [1, 77]))
    assert r["valid"] is False and r["workload_result"]["unexpected_count"] == 1


def test_deletes_keys_are_judged_apart_and_a_missing_final_read_is_unknown() -> None:
    h = H().add(0, 0, 1, "ok").add(0, 1, 2, "ok")
    h.inv(0, 2, "add", 3, key="j").done(0.1, 2, "ok", "add", 3, key="j")
    dele(h, 1, 0, [1], "ok")
    r = deletes(h.final(9, [2]).final(10, [3], key="j"))
    assert r["valid"] is True and r["workload_result"]["keys"] == 2
    assert deletes(H().add(0, 0, 1, "ok").final(9, [1], key="j"))["valid"] == "unknown"


def test_deletes_read_of_a_deleted_value_is_counted_not_judged() -> None:
    h = H().add(0, 0, 1, "ok")
    dele(h, 1, 0, [1], "ok")
    h.inv(2, 1, "read").done(2.1, 1, "ok", "read", [1])
    r = deletes(h.final(9, []))
    assert r["valid"] is True and r["workload_result"]["reads_of_deleted"] == 1


# ------------------------------------------------------- availability, latency


def test_availability_per_window_and_kind() -> None:
    h = H().nemesis(10, 20, 0, "partition").nemesis(30, 40, 1, "kill")
    h.add(1, 0, 1, "ok").add(2, 0, 2, "ok")          # healthy
    h.add(12, 0, 3, "ok").add(13, 0, 4, "fail").add(14, 0, 5, "info")  # partition
    h.add(35, 1, 6, "fail")                            # kill
    r = check(h.final(50, [1, 2, 3, 5]).events, "set")
    a = r["availability"]
    assert a["overall"]["total"] == 6 and a["overall"]["availability"] == pytest.approx(0.5)
    assert a["by_kind"]["healthy"]["availability"] == 1.0
    assert a["by_kind"]["partition"]["availability"] == pytest.approx(1 / 3)
    assert a["by_kind"]["kill"]["availability"] == 0.0
    assert [w["kind"] for w in a["windows"]] == ["partition", "kill"]
    assert a["windows"][0]["start_s"] == 10 and a["windows"][0]["end_s"] == pytest.approx(20.01)
    assert r["faults"] == 2


def test_unhealed_fault_window_ends_at_history_end() -> None:
    h = H()
    v = {"id": 0, "kind": "pause", "label": "pause n1"}
    h.inv(1, "nemesis", "start", v, key=None).done(1.1, "nemesis", "info", "start", v, key=None)
    h.add(2, 0, 1, "ok").final(9, [1])
    a = check(h.events, "set")["availability"]
    assert a["windows"][0]["end_s"] == pytest.approx(9.1)
    assert a["by_kind"]["pause"]["ok"] == 1


def test_latency_quantiles_nearest_rank() -> None:
    h = H()
    for i in range(100):
        h.add(i, 0, i, "ok", dt=(i + 1) / 1000)
    q = latency_quantiles(pair_ops(h.events))
    assert q["add:ok"]["count"] == 100
    assert q["add:ok"]["p50"] == pytest.approx(50)
    assert q["add:ok"]["p99"] == pytest.approx(99)
    assert q["add:ok"]["max"] == pytest.approx(100)


# ----------------------------------------------------------------- history file


def test_malformed_history_is_refused() -> None:
    h = H().inv(0, 0, "add", 1).inv(1, 0, "add", 2)
    with pytest.raises(ValueError, match="invoked twice"):
        check(h.events, "set")
    h2 = H().done(0, 0, "ok", "add", 1)
    with pytest.raises(ValueError, match="without invocation"):
        check(h2.events, "set")


def test_history_round_trips_through_jsonl_and_tolerates_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    hist = History(path)
    inv = hist.invoke(0, "write", key="a", value=1, client=0)
    hist.complete(inv, "ok", observed=[7])
    hist.close()
    with path.open("a") as fh:
        fh.write('{"index": 2, "ty')
    events = read_history(path)
    assert [e.type for e in events] == ["invoke", "ok"]
    assert events[1].extra == {"observed": [7]} and events[1].value == 1 and events[1].key == "a"
    assert events[1].time >= events[0].time
    assert json.loads(path.read_text().splitlines()[0])["f"] == "write"


def test_concurrent_final_readers_interleave() -> None:
    h = H()
    iwrite(h, 0, 0, "a", 1, "ok")
    iwrite(h, 0, 1, "b", 2, "ok")
    h.inv(5, "final-0", "read", key="a").inv(5, "final-1", "read", key="b")
    h.done(5.2, "final-1", "ok", "read", [2], key="b").done(5.3, "final-0", "ok", "read", [1], key="a")
    r = check(h.events, "independent")
    assert r["valid"] is True
    assert r["ops"] == 2  # final reads are not client operations
    assert r["availability"]["overall"]["total"] == 2
