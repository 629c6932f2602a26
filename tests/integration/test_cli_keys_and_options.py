"""`kv keys` against a real cluster, `--node/--timeout/--json` after every command, and
`kv cluster status/watch` showing hints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.testing.processes import LocalCluster, wait_until

REPO = Path(__file__).resolve().parents[2]


def kv(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KV_NODES"}
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # Small pages, so every partition with more than a few keys is listed through cursors.
    with LocalCluster(tmp_path_factory.mktemp("keys"), nodes=3, extra=["--keys-list-page-keys", "3"]) as c:
        c.start_all()
        yield c


def test_keys_lists_each_live_key_once(cluster: LocalCluster) -> None:
    c = cluster.client()
    live = {f"user:{i:03d}" for i in range(150)} | {f"item:{i}" for i in range(60)}
    for k in sorted(live):
        c.put(k, b"v")
    for i in range(0, 150, 10):
        c.delete(f"user:{i:03d}")
        live.discard(f"user:{i:03d}")
    node = cluster.addrs()[1]

    got = kv("--node", node, "keys")
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert len(lines) == len(set(lines)), "a key was listed twice"
    assert set(lines) == live

    users = kv("keys", "--prefix", "user:", "--node", node, "--json")
    assert users.returncode == 0, users.stderr
    listed = [json.loads(x) for x in users.stdout.splitlines()]
    assert set(listed) == {k for k in live if k.startswith("user:")}

    some = kv("keys", "--limit", "17", "--node", node)
    assert some.returncode == 0 and len(some.stdout.splitlines()) == 17
    assert set(some.stdout.splitlines()) <= live

    none = kv("keys", "--prefix", "nothing-here:", "--node", node)
    assert (none.returncode, none.stdout) == (0, "")


def test_connection_and_json_options_after_every_command(cluster: LocalCluster) -> None:
    node = cluster.addrs()[0]
    dead = "127.0.0.1:1"  # before the command: overridden by the --node after it
    put = kv("--node", dead, "put", "opt", "1", "--node", node, "--timeout", "5", "--json")
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["context"]
    assert json.loads(kv("--node", dead, "get", "opt", "--node", node, "--json").stdout)["values"] == ["1"]
    assert json.loads(kv("--json", "--node", node, "get", "opt").stdout)["found"] is True
    for args in (
        ["cluster", "status"], ["cluster", "hints"], ["cluster", "transfers"], ["node", "ping"],
        ["incr", "opt-counter", "2"], ["fetch", "opt-counter"],
    ):
        after = kv("--node", dead, *args, "--node", node, "--json")
        assert after.returncode == 0, f"{args}: {after.stderr}"
        json.loads(after.stdout)
        before = kv("--json", "--node", node, *args[:1], *args[1:])
        assert before.returncode == 0, f"{args}: {before.stderr}"
        json.loads(before.stdout)
    gone = kv("delete", "opt", "--node", node, "--json")
    assert gone.returncode == 0 and json.loads(gone.stdout)["deleted"] is True
    assert kv("get", "opt", "--node", node).returncode == 1


def test_status_shows_hints_pending_and_watch_stops_cleanly(cluster: LocalCluster) -> None:
    node = cluster.addrs()[0]
    cluster.stop("n3")
    try:
        c = cluster.client("n1")
        for i in range(30):
            c.put(f"hinted:{i}", b"v")

        def hints_shown() -> bool:
            st = kv("cluster", "status", "--node", node)
            return st.returncode == 0 and "n3: " in st.stdout

        wait_until(hints_shown, 60, 0.5, what="hints for n3 in kv cluster status")
        doc = json.loads(kv("cluster", "status", "--node", node, "--json").stdout)
        assert any(st and st["hints"].get("n3") for st in doc["nodes"].values())
        assert set(doc["transfers"]) == {"n1", "n2", "n3"}

        counted = kv("cluster", "watch", "--count", "2", "--interval", "0.2", "--node", node)
        assert counted.returncode == 0, counted.stderr
        assert "n3: " in counted.stdout and "Traceback" not in counted.stderr

        p = subprocess.Popen([sys.executable, "-m", "cli", "cluster", "watch", "--interval", "0.2", "--node", node],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            time.sleep(3)
            p.send_signal(signal.SIGINT)
            outs, errs = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, errs
        assert "Traceback" not in errs and "n1" in outs
    finally:
        cluster.start("n3")


def test_get_marks_a_tombstone_sibling(cluster: LocalCluster) -> None:
    node = cluster.addrs()[0]
    assert kv("put", "tomb", "1", "--node", node).returncode == 0
    seen = json.loads(kv("get", "tomb", "--node", node, "--json").stdout)
    assert "tombstone" not in seen
    # A write the delete's context did not see: the tombstone stays beside it as a sibling.
    assert kv("put", "tomb", "2", "--node", node).returncode == 0
    assert kv("delete", "tomb", "--context", seen["context"], "--node", node).returncode == 0
    got = kv("get", "tomb", "--node", node)
    assert (got.returncode, got.stdout) == (0, "2\n"), got.stderr
    assert "tombstone" in got.stderr
    doc = json.loads(kv("get", "tomb", "--node", node, "--json").stdout)
    assert doc["values"] == ["2"] and doc["tombstone"] is True
    # Resolved with the read's context: one value, no tombstone left to mark.
    assert kv("put", "tomb", "3", "--context", doc["context"], "--node", node).returncode == 0
    final = kv("get", "tomb", "--node", node)
    assert final.stdout == "3\n" and "tombstone" not in final.stderr
    # The library's own get is unchanged: no mark, values only.
    assert cluster.client().get("tomb").values == [b"3"]
