"""`kv bench` against a real 3-node cluster: a JSON result with cluster and reference side by side,
a one-line error when the node is unreachable, and no child process left after Ctrl-C.

Nothing here is timed: the figures only have to be consistent (ops > 0, ordered percentiles,
ratio = cluster / reference), whatever the machine's load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.main import cli
from kvstore.testing.processes import LocalCluster, free_port, wait_until

# Until `kv bench` is registered in cli/main.py, run the same group with it added, in a child
# exactly like `python -m cli`; once registered, the real entry point is what is tested.
if "bench" in cli.commands:
    KV = [sys.executable, "-m", "cli"]
else:
    KV = [
        sys.executable,
        "-c",
        "from cli.main import cli, main; from cli.bench_cmds import bench; "
        "cli.add_command(bench); main()",
    ]

SHORT = ["--secs", "0.5", "--warm", "0.1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("bench"), nodes=3) as c:
        c.start_all()
        yield c


def kv(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KV, *args], capture_output=True, text=True, timeout=timeout)


def check_side(r: dict[str, Any]) -> None:
    assert r["ops_s"] > 0 and r["n"] > 0, r
    assert r["errors"] == 0, r
    assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"], r


def test_bench_json_has_cluster_and_reference_side_by_side(cluster: LocalCluster) -> None:
    addr = cluster.addrs()[0]
    res = kv("--node", addr, "bench", *SHORT, "--keys", "1000", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)  # one JSON object, nothing else on stdout
    assert doc["nodes"] == [addr]
    assert [row["op"] for row in doc["rows"]] == ["put", "get"]
    for row in doc["rows"]:
        assert row["load"] == "4x64"
        c, r = row["cluster"], row["reference"]
        check_side(c)
        check_side(r)
        assert row["ratio"] == pytest.approx(c["ops_s"] / r["ops_s"], abs=1e-3)
    # The get point reads the keys the put point just wrote (same seeded key order).
    get = doc["rows"][1]
    assert get["cluster"]["hit_pct"] > 50 and get["reference"]["hit_pct"] == 100
    # Progress went to stderr: every point named.
    assert res.stderr.count("kv bench: [") >= 4


def test_bench_spreads_over_nodes_and_runs_without_reference(cluster: LocalCluster) -> None:
    nodes = ",".join(cluster.addrs())
    res = kv("--node", nodes, "bench", *SHORT, "--keys", "1000", "--ops", "get",
             "--conns", "3", "--window", "8", "--no-reference")  # fmt: skip
    assert res.returncode == 0, res.stderr
    # Without --json: a table on stdout with the row and its load.
    assert "get" in res.stdout and "3x8" in res.stdout and "ops/s" in res.stdout


def test_one_in_flight_measures_with_one_blocking_socket(cluster: LocalCluster) -> None:
    res = kv("--node", cluster.addrs()[0], "bench", *SHORT, "--keys", "1000",
             "--conns", "1", "--window", "1", "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    for row in doc["rows"]:
        assert row["load"] == "1x1"
        check_side(row["cluster"])
        check_side(row["reference"])
    assert doc["rows"][1]["reference"]["hit_pct"] == 100


def test_unreachable_node_is_one_line_and_exit_3() -> None:
    addr = f"127.0.0.1:{free_port()}"
    res = kv("--node", addr, "bench", *SHORT, "--json")
    assert res.returncode == 3
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kv: cannot reach {addr}"), res.stderr


def test_bad_ops_is_a_usage_error() -> None:
    res = kv("bench", "--ops", "scan")
    assert res.returncode == 2 and res.stderr.startswith("kv: --ops"), res.stderr


def _children(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "cli.bench_cmds" in cmd and marker in cmd:
            pids.append(int(d.name))
    return pids


def test_ctrl_c_stops_every_child(cluster: LocalCluster) -> None:
    marker = "1237"  # an odd --keys: it is in both children's command lines
    p = subprocess.Popen(
        [*KV, "--node", cluster.addrs()[0], "bench", "--secs", "30", "--keys", marker],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job starts with SIGINT ignored: give it back, like a terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert p.stderr is not None
        line = p.stderr.readline()
        assert "[1/4]" in line, line
        wait_until(lambda: len(_children(marker)) >= 2, 10, what="reference and load generator")
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "kv: interrupted", err
    try:
        wait_until(lambda: not _children(marker), 10, what="bench children to exit")
    finally:
        for pid in _children(marker):
            os.kill(pid, signal.SIGKILL)
