"""`kv cluster up --zones` and the zone column of `kv cluster status`, as a user types them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.test_cli import consecutive_free_ports, kv


def test_cluster_up_refuses_a_bad_zone_list(tmp_path: Path) -> None:
    for bad, why in (("a,,b", "empty"), ("a,b,a", "twice"), ("a b", "' '")):
        res = kv("cluster", "up", "--nodes", "2", "--zones", bad, "--data-dir", str(tmp_path / "d"))
        assert res.returncode == 2, res.stderr
        assert why in res.stderr and "Traceback" not in res.stderr


def test_cluster_up_with_zones_and_status_shows_them(tmp_path: Path) -> None:
    port = consecutive_free_ports(3)
    data = tmp_path / "kvdata"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "cluster", "up", "--nodes", "3", "--zones", "east,west",
         "--port", str(port), "--data-dir", str(data), "--set", f"snapshot_dir={data / 'shm'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or line.strip() == "ready":
                break
            lines.append(line)
        assert line.strip() == "ready", lines
        # Round-robin: n1 east, n2 west, n3 east.
        assert [ln.split()[3] for ln in lines] == ["east", "west", "east"]
        node = f"127.0.0.1:{port}"
        res = kv("--node", node, "cluster", "status")
        assert res.returncode == 0, res.stderr
        assert "zones east,west" in res.stdout
        rows = {ln.split("│")[1].strip(): ln.split("│")[3].strip() for ln in res.stdout.splitlines() if ln.startswith("│")}
        assert rows == {"n1": "east", "n2": "west", "n3": "east"}
        res = kv("--node", node, "cluster", "status", "--json")
        doc = json.loads(res.stdout)
        assert {mem["name"]: mem["zone"] for mem in doc["members"]} == rows
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
