"""Restart in place and rolling restarts of a live cluster: no failed request, nothing lost."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

from kvstore.client import AsyncClient, Client
from kvstore.testing.processes import LocalCluster, wait_until


class Traffic(threading.Thread):
    """Continuous reads of known keys and writes of new ones (N=3, R=2, W=2)."""

    def __init__(self, addrs: list[str]) -> None:
        super().__init__(daemon=True)
        self.addrs = addrs
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.acked: list[str] = []
        self.reads = 0

    def run(self) -> None:
        asyncio.run(self._go())

    async def _go(self) -> None:
        async with AsyncClient(self.addrs, timeout_s=10.0, ring_refresh_s=0.5) as c:
            i = 0
            while not self.stop.is_set() and i < 100_000:
                key = f"t{i}"
                try:
                    await c.put(key, key)
                    self.acked.append(key)
                except Exception as e:
                    self.failures.append(f"put {key}: {type(e).__name__}: {e}")
                if self.acked:
                    k = self.acked[(i * 7919) % len(self.acked)]
                    try:
                        got = await c.get(k)
                        if got.values != [k.encode()]:
                            self.failures.append(f"get {k}: {got.values}")
                        self.reads += 1
                    except Exception as e:
                        self.failures.append(f"get {k}: {type(e).__name__}: {e}")
                i += 1


def test_node_restart_in_place_keeps_data_and_uses_the_snapshot(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=3) as c:
        c.start_all()
        client = c.client()
        for i in range(200):
            client.put(f"k{i}", f"v{i}")
        pid = c.nodes["n2"].proc.pid  # type: ignore[union-attr]
        res = subprocess.run(
            [sys.executable, "-m", "cli", "node", "restart", c.nodes["n2"].addr],
            capture_output=True, text=True, timeout=120,
        )
        assert res.returncode == 0, res.stderr
        assert "restarted" in res.stdout
        assert c.nodes["n2"].proc.pid == pid  # type: ignore[union-attr]  # re-exec keeps the pid
        st = c.status("n2")
        assert st is not None and st["load"]["path"] == "snapshot", st["load"]
        with Client(c.addrs("n2"), route=False) as alone:
            for i in range(200):
                assert alone.get(f"k{i}", r=1).value == f"v{i}".encode()


def test_rolling_restart_under_load_fails_no_request(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=3) as c:
        c.start_all()
        traffic = Traffic(c.addrs())
        traffic.start()
        try:
            wait_until(lambda: traffic.reads > 100, 60, what="traffic to start")
            res = subprocess.run(
                [sys.executable, "-m", "cli", "--node", c.nodes["n1"].addr, "cluster", "rolling-restart"],
                capture_output=True, text=True, timeout=600,
            )
            assert res.returncode == 0, res.stdout + res.stderr
            assert "rolling restart done: 3 nodes" in res.stdout
            reads_after = traffic.reads
            wait_until(lambda: traffic.reads > reads_after + 100, 60, what="traffic to continue")
        finally:
            traffic.stop.set()
            traffic.join(60)
        assert traffic.failures == [], traffic.failures[:10]
        with Client(c.addrs()) as check:
            missing = [k for k in traffic.acked if check.get(k, r=3).value != k.encode()]
        assert missing == []


def test_kv_node_stop_is_graceful_and_leaves_a_snapshot(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=3) as c:
        c.start_all()
        c.client().put("s", "1")
        res = subprocess.run(
            [sys.executable, "-m", "cli", "node", "stop", c.nodes["n3"].addr],
            capture_output=True, text=True, timeout=120,
        )
        assert res.returncode == 0, res.stderr
        proc = c.nodes["n3"].proc
        assert proc is not None and proc.wait(30) == 0
        assert list((tmp_path / "shm").glob("*n3*"))  # its snapshot, for a fast start
        c.start("n3")
        st = c.status("n3")
        assert st is not None and st["load"]["path"] == "snapshot"
        assert c.client("n3", route=False).get("s", r=1).value == b"1"
