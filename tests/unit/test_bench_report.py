"""The pure parts of benchmarks/bench_throughput.py: which ratio and target rows a run's points
make, and the CPU sampler's interpolation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_throughput as bt
from throughput_systems import CpuSampler


def pt(system: str, shape: str, ops: int) -> dict[str, Any]:
    return {"system": system, "shape": shape, "ops_s": ops}


def test_ratios_pair_kvstore_with_its_own_base_and_skip_what_did_not_run() -> None:
    rows = bt.ratio_rows([pt("kv3", "put-4x64", 250), pt("ceiling", "put-4x64", 1000),
                          pt("kv1", "get-1x1", 10), pt("redis", "get-1x1", 99)])  # fmt: skip
    assert [r["shape"] for r in rows] == ["put-4x64", "get-1x1"]  # the order
    put, get = rows
    assert put["3n_ratio"] == 0.25 and put["1n_ratio"] is None and put["redis_ops_s"] is None
    assert get["3n_ratio"] is None and get["1n_ratio"] is None and get["redis_ops_s"] == 99


def test_targets_only_for_what_was_measured_and_inclusive_at_the_bound() -> None:
    doc = {"ratios": bt.ratio_rows([pt("kv3", "put-4x64", 250), pt("ceiling", "put-4x64", 1000)]),
           "open_loop": {"rate_per_s": 100.0, "p99_us": 5000.0, "lost": 0}, "memory": {"ratio": 1.51}}  # fmt: skip
    rows = {r["name"].split(" (")[0]: r for r in bt.target_rows(doc)}
    assert rows["put-4x64 3 nodes kvstore/ceiling"]["pass"] is True  # 0.25 >= 0.25
    assert not any("1 node" in n for n in rows)
    assert next(r for n, r in rows.items() if n.startswith("open-loop"))["pass"] is True
    assert rows["memory per key kvstore/redis"]["pass"] is False
    doc["open_loop"]["lost"] = 3  # a lost request is never a pass, whatever the percentiles
    assert not next(r for r in bt.target_rows(doc) if r["name"].startswith("open-loop"))["pass"]


def test_the_ceiling_at_kv3s_rate_is_shown_beside_the_open_loop_target_and_judges_nothing() -> None:
    doc = {"ratios": [], "open_loop": {"rate_per_s": 20_000.0, "p99_us": 9000.0, "lost": 0},
           bt.OPEN_LOOP_SAME_RATE_KEY: {"rate_per_s": 20_000.0, "p99_us": 4500.0, "lost": 0}}  # fmt: skip
    (row,) = bt.target_rows(doc)
    assert "ceiling at this rate 4.5 ms" in row["name"]
    assert row["value"] == 9000.0 and row["pass"] is False  # kv3's own p99 is the target
    del doc[bt.OPEN_LOOP_SAME_RATE_KEY]
    (row,) = bt.target_rows(doc)
    assert "ceiling" not in row["name"]


@given(st.lists(st.floats(0, 10), min_size=2, max_size=20), st.floats(0, 1), st.floats(0, 1))
def test_sampler_interpolation_is_monotone_and_bounded(steps: list[float], a: float, b: float) -> None:
    s = CpuSampler([42])
    total = 0.0
    for i, d in enumerate(steps):  # samples at t = 0, 1, 2 ... of a CPU counter that only grows
        total += d
        s.t.append(float(i))
        s.cpu[42].append(total)
    end = len(steps) - 1
    lo, hi = sorted((a * end, b * end))
    got = s.cpu_between(42, lo, hi)
    assert got is not None and -1e-9 <= got <= total - steps[0] + 1e-9
    assert s.cpu_between(42, 0.0, float(end)) == pytest.approx(total - steps[0], abs=1e-9)
    assert s.cpu_between(7, 0.0, 1.0) is None  # a pid it was not asked to sample


@pytest.mark.parametrize("i", [0, 1, 99_999, 10**15 - 1])
def test_put_shapes_write_keys_apart_from_the_get_keys_and_as_long(i: int) -> None:
    put, get = bt._key_fmt("put", False).encode() % i, bt._key_fmt("get", False).encode() % i
    assert len(put) == len(get) == 16  # the same load: 16-byte keys either way
    assert put != get
    assert bt._key_fmt("put", False) not in (bt.KEY_FMT, bt.COUNTER_KEY_FMT)


def test_shared_keys_puts_the_put_shapes_back_on_the_get_keys() -> None:
    assert bt._key_fmt("put", True) == bt._key_fmt("get", True) == bt.KEY_FMT
