"""Disk faults under a real node process: a full disk (a small tmpfs), a read-only data
directory and a corrupt LevelDB at start. Each is one clear error naming the path and the
cause; a write that could not be stored is never acknowledged, and reads go on.

Needs root (mount); skipped elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.errors import KVError, StorageError, Unavailable
from kvstore.testing.processes import LocalCluster, free_port

REPO = Path(__file__).resolve().parents[2]


def _mount(target: Path, size: str, *opts: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *opts]), "tmpfs", str(target)],
        check=True, capture_output=True,
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "disk"
    try:
        _mount(mnt, "3m")
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _start_alone(name: str, data_dir: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    port = free_port()
    return subprocess.run(
        [sys.executable, "-m", "cli", "node", "start", "--name", name, "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(data_dir), "--snapshot-dir", str(tmp / "shm")],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )


def test_a_full_disk_refuses_writes_and_keeps_serving_reads(tmp_path: Path, small_disk: Path) -> None:
    data = small_disk / "n1"
    with LocalCluster(tmp_path, nodes=1, n=1, r=1, w=1, extra=["--fsync", "always"]) as c:
        node = c.nodes["n1"]
        node.data_dir = data
        node.args[node.args.index("--data-dir") + 1] = str(data)
        c.start_all()
        kv = c.client(timeout_s=10.0)
        acked: dict[str, bytes] = {}
        refused: KVError | None = None
        value = os.urandom(64 * 1024)  # incompressible: LevelDB cannot squeeze it onto the disk
        for i in range(200):  # 3 MiB fills in well under 200 writes of 64 KiB
            try:
                kv.put(f"k{i}", value)
            except (Unavailable, StorageError) as e:  # W=1 and the one replica could not store it
                refused = e
                failed_key = f"k{i}"
                break
            acked[f"k{i}"] = value
        assert refused is not None, "the disk never filled"
        assert str(data) in str(refused) and "disk full" in str(refused), refused
        assert acked, "nothing fit at all"
        # Reads go on, and what was acknowledged is there; what was refused is not.
        for k, v in acked.items():
            assert kv.get(k).value == v
        assert kv.get(failed_key).values == []
        # Later writes are refused too (never acknowledged), with the same clear cause.
        with pytest.raises((Unavailable, StorageError), match=f"{data} refuses writes.*disk full"):
            kv.put("after", b"small")
        assert kv.get("after").values == []
        assert node.running


def test_a_read_only_data_dir_is_one_clear_error_at_start(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "ro"
    try:
        _mount(mnt, "1m", "ro")
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    try:
        r = _start_alone("n1", mnt / "n1", tmp_path)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    assert r.returncode == 1
    assert str(mnt / "n1") in r.stderr and "read-only file system" in r.stderr.lower(), r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_a_corrupt_store_is_one_clear_error_at_start(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=1, n=1, r=1, w=1) as c:
        c.start_all()
        kv = c.client()
        for i in range(50):
            kv.put(f"k{i}", b"v" * 100)
        data = c.nodes["n1"].data_dir
        c.kill("n1")  # no snapshot: the next start must read LevelDB
    manifests = list(data.glob("MANIFEST-*"))
    assert manifests
    for m in manifests:
        m.write_bytes(b"\x00garbage" * 64)
    r = _start_alone("n1", data, tmp_path)
    assert r.returncode == 1
    assert str(data) in r.stderr and "corrupt" in r.stderr.lower(), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
