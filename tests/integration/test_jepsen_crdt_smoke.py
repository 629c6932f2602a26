"""jepsen-lite's data type workloads end to end: counters and sets on a real 3-node cluster
under partitions and kill -9, judged by the counters/sets checkers (needs root and iptables,
as the other smoke runs)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_jepsen_smoke import harness, harness_env, needs_netns

pytestmark = pytest.mark.xdist_group("jepsen")


def _run(out: Path, workload: str, seed: str) -> dict[str, object]:
    res = subprocess.run(
        harness(out, "--nodes", "3", "--workload", workload, "--nemesis", "partition,kill", "--time", "35",
                "--concurrency", "4", "--rate", "40", "--seed", seed, "--fault-s", "6:8", "--heal-s", "3:5",
                "--settle", "5", "--final-timeout", "30"),
        env=harness_env(), capture_output=True, text=True, timeout=280,
    )
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    w = results.get("workload_result", {})
    counts = {k: v for k, v in w.items() if not isinstance(v, list)}
    assert res.returncode == 0, f"exit {res.returncode}; checker: {counts}\n{res.stderr[-3000:]}"
    assert results["valid"] is True
    assert {f["kind"] for f in results["schedule"]} == {"partition", "kill"}
    assert not results["nemesis_errors"] and not results["node_crashes"] and not results["unreadable_keys"]
    print(f"{workload} smoke: {counts}")
    return w


@needs_netns
@pytest.mark.timeout(300)
def test_counters_under_partitions_and_kills(tmp_path: Path) -> None:
    w = _run(tmp_path / "run", "counters", "11")
    assert w["acknowledged_count"] > 0 and w["lost_count"] == 0 and w["unexpected_count"] == 0
    assert w["acknowledged_sum"] <= w["final_sum"] <= w["acknowledged_sum"] + w["indeterminate_sum"]


@needs_netns
@pytest.mark.timeout(300)
def test_sets_under_partitions_and_kills(tmp_path: Path) -> None:
    w = _run(tmp_path / "run", "sets", "12")
    assert w["acknowledged_count"] > 0 and w["removes_acknowledged"] > 0
    assert w["lost_count"] == 0 and w["resurrected_count"] == 0 and w["unexpected_count"] == 0
