"""SIGKILL a writer mid-stream: every put it acknowledged must be there after reopening."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage.engine import Engine

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from _crash_writer import partition_for, value_for  # type: ignore[import-not-found]  # noqa: E402

ACKS_BEFORE_KILL = 3000
TIMEOUT_S = 60.0


@pytest.mark.parametrize(
    ("fsync", "loop"), [("always", "asyncio"), ("everysec", "uvloop"), ("no", "asyncio")]
)
def test_acknowledged_writes_survive_sigkill(tmp_path: Path, fsync: str, loop: str) -> None:
    path = str(tmp_path / "db")
    child = subprocess.Popen(
        [sys.executable, str(HERE / "_crash_writer.py"), path, fsync, loop],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=str(REPO),
    )
    acked: list[bytes] = []
    assert child.stdout is not None
    stdout = child.stdout

    def read() -> None:
        for line in stdout:
            acked.append(line.rstrip(b"\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while len(acked) < ACKS_BEFORE_KILL + 1:
            if child.poll() is not None or time.monotonic() > deadline:
                err = child.stderr.read().decode() if child.stderr else ""
                pytest.fail(f"writer acked {len(acked) - 1} puts, exit {child.poll()}: {err}")
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        reader.join(timeout=30)
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert acked[0] == b"ready"
    keys = acked[1:]  # every line was printed only after its put was acknowledged
    assert len(keys) >= ACKS_BEFORE_KILL

    engine = Engine.open(path)
    try:
        missing = [k for k in keys if engine.get(partition_for(k), k) != value_for(k)]
        assert not missing, (
            f"{len(missing)} of {len(keys)} acknowledged puts lost, e.g. {missing[:3]}"
        )
        assert engine.count() >= len(keys)
        assert engine.position >= len(keys)
    finally:
        engine.close_sync()
