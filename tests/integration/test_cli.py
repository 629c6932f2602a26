"""The `kv` command as a user types it: `kv cluster up`, put/get/delete, exit codes, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.testing.processes import free_port, wait_until


def consecutive_free_ports(count: int) -> int:
    for _ in range(200):
        base = free_port()
        if base + count > 65535:
            continue
        ok = True
        for p in range(base, base + count):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    try:
                        s.bind(("127.0.0.1", p))
                    except OSError:
                        ok = False
        if ok:
            return base
    raise RuntimeError("no run of free ports")


def kv(
    *args: str, env_nodes: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if env_nodes is not None:
        env["KV_NODES"] = env_nodes
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


class Up:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.port = port
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "cluster",
                "up",
                "--nodes",
                "3",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--log-dir",
                str(data_dir / "logs"),
                "--set",
                f"snapshot_dir={data_dir / 'shm'}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip())
            if line.strip() == "ready":
                return
        self.stop()
        raise AssertionError(
            f"cluster up never printed ready: {self.lines} {self.proc.stderr.read() if self.proc.stderr else ''}"
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    u = Up(tmp_path / "kvdata", consecutive_free_ports(3))
    try:
        yield u
    finally:
        u.stop()


def test_cluster_up_put_get_and_restart_keeps_keys(up: Up) -> None:
    node = f"127.0.0.1:{up.port}"
    assert [line.split()[0] for line in up.lines[:3]] == ["n1", "n2", "n3"]
    assert kv("put", "a", "1", env_nodes=node).returncode == 0
    got = kv("get", "a", env_nodes=node)
    assert (got.returncode, got.stdout) == (0, "1\n")
    # Through another node, with --node instead of the env var.
    got = kv("--node", f"127.0.0.1:{up.port + 2}", "get", "a")
    assert got.stdout == "1\n"
    # --node and --timeout after the subcommand too; they win over the environment.
    got = kv("get", "a", "--node", f"127.0.0.1:{up.port + 1}", "--timeout", "3", env_nodes="127.0.0.1:1")
    assert (got.returncode, got.stdout) == (0, "1\n"), got.stderr
    missing = kv("get", "nope", env_nodes=node)
    assert (missing.returncode, missing.stdout) == (1, "")
    js = json.loads(kv("get", "a", "--json", env_nodes=node).stdout)
    assert js["values"] == ["1"] and js["found"] and js["context"]
    # Delete with the context, then it is gone.
    assert kv("delete", "a", "--context", js["context"], env_nodes=node).returncode == 0
    assert kv("get", "a", env_nodes=node).returncode == 1
    assert kv("put", "b", "2", env_nodes=node).returncode == 0
    status = kv("cluster", "status", env_nodes=node)
    assert status.returncode == 0, status.stderr
    for name in ("n1", "n2", "n3"):
        assert name in status.stdout
    assert up.stop() == 0
    again = Up(up.data_dir, up.port)
    try:
        assert kv("get", "b", env_nodes=node).stdout == "2\n"
    finally:
        assert again.stop() == 0


def test_siblings_print_each_value_and_a_note(up: Up) -> None:
    node = f"127.0.0.1:{up.port}"
    kv("put", "s", "x", env_nodes=node)
    kv("put", "s", "y", env_nodes=node)
    got = kv("get", "s", "-r", "3", env_nodes=node)
    assert got.returncode == 0
    assert sorted(got.stdout.split()) == ["x", "y"]
    assert "2 siblings" in got.stderr and "--context" in got.stderr


def test_errors_are_one_line_with_the_right_exit_code(tmp_path: Path) -> None:
    port = free_port()
    res = kv("get", "a", env_nodes=f"127.0.0.1:{port}", timeout=60)
    assert res.returncode == 3
    assert res.stderr.startswith("kv: ") and "Traceback" not in res.stderr
    assert f"127.0.0.1:{port}" in res.stderr and "refused" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    bad = kv("put", "a", "1", "--context", "!!!not-base64!!!", env_nodes=f"127.0.0.1:{port}")
    assert bad.returncode == 2 and "context" in bad.stderr
    usage = kv("get")
    assert usage.returncode == 2


def test_node_start_rejects_bad_config_clearly(tmp_path: Path) -> None:
    res = kv("node", "start", "--listen", "nonsense", "--data-dir", str(tmp_path / "d"))
    assert res.returncode == 2
    assert "nonsense" in res.stderr and "Traceback" not in res.stderr
    res = kv("node", "start", "--r", "5", "--data-dir", str(tmp_path / "d"))
    assert res.returncode == 2 and "r must be" in res.stderr
    cfg = tmp_path / "bad.toml"
    cfg.write_text("n_replicas = 'three'\n")
    res = kv("node", "start", "--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert res.returncode == 2 and "n_replicas" in res.stderr


def test_node_start_refuses_a_bad_name_or_unsafe_timings(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    res = kv("node", "start", "--name", "rack1/n1", "--listen", listen, "--data-dir", str(tmp_path / "d"))
    assert res.returncode == 2, res.stderr
    assert "node name 'rack1/n1' contains '/'" in res.stderr and "letter or digit" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was created
    res = kv("node", "start", "--tombstone-grace-s", "3600", "--listen", listen, "--data-dir", str(tmp_path / "d"))
    assert res.returncode == 2 and "tombstone_grace_s (3600) must exceed hint_max_age_s" in res.stderr


def test_node_refuses_to_start_on_a_locked_store(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "d"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "node",
            "start",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data),
            "--snapshot-dir",
            str(tmp_path / "shm"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: kv("node", "ping", env_nodes=f"127.0.0.1:{port}").returncode == 0, 30)
        second = kv(
            "node", "start", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data)
        )
        assert second.returncode == 1
        assert str(data) in second.stderr and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0


def test_cluster_up_on_busy_ports_fails_clearly_instead_of_adopting_another_cluster(up: Up, tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "cli", "cluster", "up", "--nodes", "3", "--port", str(up.port),
         "--data-dir", str(tmp_path / "other"), "--set", f"snapshot_dir={tmp_path / 'shm2'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 1
    assert "ready" not in res.stdout.splitlines()
    assert "address already in use" in res.stderr and "Traceback" not in res.stderr
