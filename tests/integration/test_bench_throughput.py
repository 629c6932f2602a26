"""benchmarks/bench_throughput.py in a tiny mode: every system it could start, one shape,
short points. Checks the JSON has every field issue 13 asks for and that they fit together
(ratio = kvstore ÷ base, ordered percentiles, a target row per ratio), never the figures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_throughput.py"
PERF = REPO.parent / "shared" / "perf"

pytestmark = pytest.mark.skipif(
    not (PERF / "load_client.py").exists(), reason=f"the shared perf scripts are not at {PERF}"
)
HAVE_REDIS = bool(shutil.which("redis-server") and shutil.which("redis-benchmark"))


def run_bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    cmd = [sys.executable, str(SCRIPT), "--secs", "0.3", "--warm", "0.1", "--shapes", "put-4x64",
           "--mem-keys", "2000", "--mem-secs", "10", "--prefill-secs", "1", "--open-loop-secs", "0.5",
           "--no-install-redis", "--json", "--png", str(tmp_path / "plot.png"), *args]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout), res.stderr


def check_point(p: dict[str, Any]) -> None:
    assert p["ops_s"] > 0, p
    assert 0 < p["p50_us"] <= p["p99_us"], p
    if p["p999_us"] is not None:
        assert p["p99_us"] <= p["p999_us"], p
    assert p["cpu_us_per_op"] is not None and p["cpu_us_per_op"] >= 0, p


def test_tiny_run_has_every_field(tmp_path: Path) -> None:
    doc, err = run_bench(tmp_path)
    systems = {"ceiling", "kv3", "reference", "kv1"} | ({"redis"} if HAVE_REDIS else set())
    assert set(doc["params"]["systems"]) == systems
    assert doc["params"]["fsync"] == "no" and "fsync=no" in doc["durability"]["kvstore"]
    pts = {p["system"]: p for p in doc["points"]}
    assert set(pts) == systems and all(p["shape"] == "put-4x64" for p in pts.values())
    for p in pts.values():
        check_point(p)
        # Each point starts from an idle machine (what the one before left running is waited out).
        assert 0 <= p["settled_s"] <= 10.5, p
    for three in ("kv3", "ceiling"):  # a replica's CPU for the 3-node systems
        assert pts[three]["replica_cpu_us_per_op"] is not None
    assert pts["kv1"]["errors"] == 0 and pts["kv3"]["errors"] == 0

    (row,) = doc["ratios"]
    assert row["shape"] == "put-4x64" and row["target"] == 0.25
    assert row["3n_ratio"] == pytest.approx(pts["kv3"]["ops_s"] / pts["ceiling"]["ops_s"], abs=1e-3)
    assert row["1n_ratio"] == pytest.approx(pts["kv1"]["ops_s"] / pts["reference"]["ops_s"], abs=1e-3)
    assert row["redis_ops_s"] == (pts["redis"]["ops_s"] if HAVE_REDIS else None)

    mem = doc["memory"]
    assert mem["kv1"]["keys"] > 0 and mem["kv1"]["bytes_per_key"] is not None
    if HAVE_REDIS:
        assert mem["redis"]["keys"] == mem["kv1"]["keys"] and "ratio" in mem

    for key, system in (("open_loop", "kv3"), ("open_loop_ceiling", "ceiling")):
        ol = doc[key]
        assert ol["system"] == system and ol["rate_per_s"] == pytest.approx(pts[system]["ops_s"] / 2, rel=0.01)
        assert ol["n"] > 0 and 0 < ol["p50_us"] <= ol["p99_us"] <= ol["p999_us"]
        assert 0 <= ol["settled_s"] <= 10.5

    (cal,) = doc["calibration"]  # put-4x64 on the reference, with load_client.py as well
    assert cal["shape"] == "put-4x64" and cal["load_client_ops_s"] > 0 and cal["kvstore_ops_s"] > 0

    # Counters: increments judged against puts measured right before them, on the same store.
    ctr = doc["counters"]
    assert ctr["shape"] == "incr-4x64" and ctr["ops_s"] > 0 and ctr["errors"] == 0
    assert ctr["put_now_ops_s"] > 0 and ctr["put_now_errors"] == 0
    assert ctr["ratio_to_put_now"] == pytest.approx(ctr["ops_s"] / ctr["put_now_ops_s"], abs=1e-3)
    assert ctr["ratio_to_put"] == pytest.approx(ctr["ops_s"] / pts["kv3"]["ops_s"], abs=1e-3)

    names = [t["name"] for t in doc["targets"]]
    assert any("3 nodes" in n for n in names) and any("1 node" in n for n in names)
    (counter_row,) = [t for t in doc["targets"] if t["name"].startswith("counters")]
    assert "right before" in counter_row["name"] and counter_row["value"] == ctr["ratio_to_put_now"]
    assert any(n.startswith("open-loop") for n in names)
    assert all(isinstance(t["pass"], bool) for t in doc["targets"])
    assert ("memory per key kvstore/redis" in names) == HAVE_REDIS

    assert doc["png"] == str(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "put-4x64 → kv3" in err  # progress on stderr, stdout held only the JSON
    # Each open-loop point runs right after its system's peak, on the store it was measured on.
    assert err.index("put-4x64 → kv3") < err.index("open loop: kv3") < err.index("put-4x64 → reference")


def test_table_with_shared_generator_and_no_redis(tmp_path: Path) -> None:
    cmd = [sys.executable, str(SCRIPT), "--secs", "0.3", "--warm", "0.1", "--shapes", "get-1x1",
           "--systems", "reference,kv1", "--generator", "load_client", "--no-memory", "--prefill-secs", "1",
           "--no-png", "--no-calibration"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "get 1 in flight" in res.stdout and "1 node kvstore/reference" in res.stdout
    assert "PASS" in res.stdout or "FAIL" in res.stdout
    assert not list(tmp_path.iterdir())  # no plot, nothing left behind


def test_bulk_load_writes_every_key_through_the_client(tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "benchmarks" / "bulk_load.py"), "--keys", "3000",
           "--concurrency", "64", "--verify", "50", "--json"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["keys"] == doc["asked"] == 3000 and doc["errors"] == 0
    assert len(doc["nodes"]) == 3 and doc["keys_per_s"] > 0
    assert doc["verified"] == doc["verified_found"] == 50
    assert "target" not in doc  # only a 1M-key load is held to issue 13's minute
