"""A disk that stops answering (a frozen ext4 filesystem: every write to it blocks until it
is thawed) must not hang writes past their deadline, nor reads at all: a write whose local
copy does not become durable in time is answered unavailable (never acknowledged), and
once the disk answers again writes go on."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.errors import Unavailable
from kvstore.testing.processes import LocalCluster, wait_until

TOOLS = ("mkfs.ext4", "mount", "umount", "fsfreeze")


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    """A small ext4 filesystem on a loop device (tmpfs cannot be frozen)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a loop device")
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    image, mnt = tmp_path / "disk.img", tmp_path / "disk"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot mount a loop device here: {e.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True)  # thawed whatever happened
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_stalled_disk_times_lone_writes_out_and_keeps_serving_reads(tmp_path: Path, ext4: Path) -> None:
    data = ext4 / "n1"
    # fsync=always: batches are written in the engine's worker thread, so a blocked disk
    # holds the writes back but not the event loop. N=1: the write is answered alone.
    extra = ["--fsync", "always", "--request-timeout-s", "1"]
    with LocalCluster(tmp_path, nodes=1, n=1, r=1, w=1, extra=extra) as c:
        node = c.nodes["n1"]
        node.data_dir = data
        node.args[node.args.index("--data-dir") + 1] = str(data)
        c.start_all()
        kv = c.client(timeout_s=10.0)
        kv.put("before", b"v1")
        subprocess.run(["fsfreeze", "-f", str(ext4)], check=True, capture_output=True)
        try:
            with pytest.raises(Unavailable) as e:
                kv.put("during", b"v2")
            # The deadline's answer: no replica acknowledged it, and none failed either.
            assert str(e.value).endswith("0 of 1 required replicas acknowledged the write"), e.value
            assert kv.get("before").value == b"v1"  # reads are served from memory meanwhile
        finally:
            subprocess.run(["fsfreeze", "-u", str(ext4)], check=True, capture_output=True)

        def writes_again() -> bool:
            try:
                kv.put("after", b"v3")
            except Unavailable:
                return False
            return True

        wait_until(writes_again, 30, 0.2, "writes to go on once the disk answers")
        assert kv.get("after").value == b"v3" and kv.get("before").value == b"v1"
        assert node.running
