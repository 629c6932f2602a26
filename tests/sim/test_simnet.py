"""The virtual clock and the simulated network: ordering, faults, counters, determinism."""

from __future__ import annotations

import random

import pytest

from kvstore.testing.clock import VirtualClock
from kvstore.testing.simnet import SimNetwork


def _net(
    seed: int = 1, **kw: object
) -> tuple[VirtualClock, SimNetwork, dict[str, list[tuple[float, str, object]]]]:
    clock = VirtualClock()
    net = SimNetwork(clock, random.Random(seed), **kw)  # type: ignore[arg-type]
    inbox: dict[str, list[tuple[float, str, object]]] = {}
    for name in ("a", "b", "c"):
        box: list[tuple[float, str, object]] = []
        inbox[name] = box
        net.register(name, lambda src, msg, box=box: box.append((clock.now, src, msg)))
    return clock, net, inbox


def test_clock_runs_callbacks_in_time_then_schedule_order() -> None:
    clock = VirtualClock()
    seen: list[tuple[float, str]] = []
    clock.call_at(2.0, lambda: seen.append((clock.now, "late")))
    clock.call_at(1.0, lambda: seen.append((clock.now, "first")))
    clock.call_at(1.0, lambda: seen.append((clock.now, "second")))
    cancelled = clock.call_at(1.5, lambda: seen.append((clock.now, "cancelled")))
    cancelled.cancel()
    clock.advance(1.5)
    assert seen == [(1.0, "first"), (1.0, "second")]
    assert clock.now == 1.5
    clock.advance(10)
    assert seen[-1] == (2.0, "late")
    assert clock.now == 11.5


def test_clock_callbacks_can_schedule_now_and_past_runs_now() -> None:
    clock = VirtualClock(start=5.0)
    seen: list[float] = []

    def chain() -> None:
        seen.append(clock.now)
        if len(seen) < 3:
            clock.call_at(0.0, chain)  # in the past: clamps to now

    clock.call_later(1.0, chain)
    clock.advance(1.0)
    assert seen == [6.0, 6.0, 6.0]
    assert clock.next_time() is None
    assert not clock.step()


def test_delivery_with_delay_in_range() -> None:
    _, net, inbox = _net(delay=(0.01, 0.02))
    for i in range(50):
        net.send("a", "b", i)
    assert net.in_flight == 50
    assert net.run_until_quiet()
    got = inbox["b"]
    assert sorted(m for _, _, m in got) == list(range(50))  # type: ignore[type-var]
    assert all(0.01 <= t <= 0.02 and src == "a" for t, src, _ in got)
    # independent delays reorder messages, as UDP may
    assert [m for _, _, m in got] != list(range(50))
    assert net.stats.sent == net.stats.delivered == 50
    assert net.stats.sent_from["a"] == 50 and net.stats.delivered_to["b"] == 50


def test_loss_rate_is_about_as_set() -> None:
    _, net, inbox = _net(seed=3)
    net.set_loss(0.3)
    for i in range(2000):
        net.send("a", "b", i)
    net.run_until_quiet()
    lost = net.stats.dropped_loss
    assert 480 < lost < 720, lost
    assert len(inbox["b"]) == 2000 - lost
    with pytest.raises(ValueError):
        net.set_loss(1.5)
    with pytest.raises(ValueError):
        net.set_delay(0.2, 0.1)


def test_symmetric_and_one_way_partitions_and_heal() -> None:
    _, net, inbox = _net()
    net.partition({"a"}, {"b"})
    net.send("a", "b", 1)
    net.send("b", "a", 2)
    net.send("a", "c", 3)
    net.run_until_quiet()
    assert inbox["b"] == [] and inbox["a"] == []
    assert [m for _, _, m in inbox["c"]] == [3]
    assert net.stats.dropped_partition == 2

    net.heal()
    net.partition({"a"}, {"c"}, one_way=True)
    net.send("a", "c", 4)
    net.send("c", "a", 5)
    net.run_until_quiet()
    assert [m for _, _, m in inbox["c"]] == [3]
    assert [m for _, _, m in inbox["a"]] == [5]
    net.heal()
    net.send("a", "c", 6)
    net.run_until_quiet()
    assert [m for _, _, m in inbox["c"]] == [3, 6]


def test_partition_cuts_messages_already_in_flight() -> None:
    _, net, inbox = _net(delay=(0.5, 0.5))
    net.send("a", "b", 1)
    net.run_for(0.1)
    net.partition({"a"}, {"b"})
    net.run_until_quiet()
    assert inbox["b"] == []
    assert net.stats.dropped_partition == 1


def test_crash_drops_traffic_and_owned_timers_restart_brings_back() -> None:
    clock, net, inbox = _net(delay=(0.1, 0.1))
    fired: list[str] = []
    net.schedule("b", 1.0, lambda: fired.append("old-b"))
    net.schedule("a", 1.0, lambda: fired.append("a"))
    net.send("a", "b", "in-flight")
    net.crash("b")
    assert not net.is_up("b")
    net.send("a", "b", "to-dead")
    net.send("b", "a", "from-dead")
    net.run_for(2.0)
    assert inbox["b"] == [] and inbox["a"] == []
    assert fired == ["a"]
    assert net.stats.dropped_down == 3

    fresh: list[object] = []
    net.restart("b", lambda src, msg: fresh.append(msg))
    net.schedule("b", clock.now + 1.0, lambda: fired.append("new-b"))
    net.send("a", "b", "hello again")
    net.run_for(2.0)
    assert fresh == ["hello again"]
    assert fired == ["a", "new-b"]


def test_unknown_destination_counts_as_down() -> None:
    _, net, _ = _net()
    net.send("a", "nobody", 1)
    assert net.stats.dropped_down == 1 and net.in_flight == 0


def test_run_until_quiet_gives_up_on_endless_traffic() -> None:
    clock = VirtualClock()
    net = SimNetwork(clock, random.Random(0), delay=(0.01, 0.01))
    net.register("x", lambda src, msg: net.send("x", "y", msg))
    net.register("y", lambda src, msg: net.send("y", "x", msg))
    net.send("x", "y", "ping-pong")
    assert not net.run_until_quiet(max_time=5.0)
    assert clock.now == pytest.approx(5.0)


def test_same_seed_same_history() -> None:
    def history(seed: int) -> list[tuple[float, str, object]]:
        _, net, inbox = _net(seed=seed, delay=(0.0, 0.05))
        net.set_loss(0.2)
        for i in range(200):
            net.send("a", "b", i)
            net.send("c", "b", -i)
        net.run_until_quiet()
        return inbox["b"]

    assert history(11) == history(11)
    assert history(11) != history(12)
