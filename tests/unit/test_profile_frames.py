"""benchmarks/profile_node.py's py-spy sampler: which frames its table shows, and with what
share of the node's busy samples."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import profile_node as pn

LOOP = "main (cli/main.py:310);run_forever (asyncio/base_events.py:1);run_forever (loop.c:1);uv_run (libuv);uv__io_poll (libuv)"


def test_shares_are_of_busy_samples_inclusive_without_the_loop_and_its_internals() -> None:
    raw = "\n".join([
        f"{LOOP};epoll_pwait (libc.so.6) 50",  # waiting: not busy
        f"{LOOP};uv__read (libuv);CPyPy_server____ServerConn___data_received (x);"
        "CPyDef_server____ServerConn___data_received (x);CPyDef_coordinator___Coordinator___put (x) 6",
        f"{LOOP};uv__read (libuv);CPyDef_server____ServerConn___data_received (x);write (libc.so.6) 2",
        f"{LOOP};Loop__on_idle (loop.c:9);CPyDef_engine___Engine____flush_pending (x);write (libc.so.6) 2",
        "clone3 (libc.so.6);leveldb::DBImpl::BackgroundCall (libleveldb) 1",  # the compaction thread
        "clone3 (libc.so.6);pthread_cond_wait (libc.so.6) 40",  # its idle wait
        "Thread.run (threading.py:1);PyThread_acquire_lock_timed (x);0x7f00 (libc.so.6) 30",  # a worker's
        "not a sample line",
    ])  # fmt: skip
    busy, rows = pn.busy_frames(raw, top=10)
    assert busy == 11
    shares = {f: round(sh * busy) for sh, f in rows}
    assert shares == {
        "server____ServerConn___data_received": 8,
        "coordinator___Coordinator___put": 6,
        "write": 4,
        "engine___Engine____flush_pending": 2,
        "clone3": 1,
        "leveldb::DBImpl::BackgroundCall": 1,
    }
    assert [f for _, f in rows][:3] == ["server____ServerConn___data_received", "coordinator___Coordinator___put", "write"]


def test_top_bounds_the_rows_and_no_busy_samples_is_no_rows() -> None:
    raw = f"{LOOP};a (x);b (x);c (x) 3\n{LOOP};a (x) 1"
    busy, rows = pn.busy_frames(raw, top=2)
    assert busy == 4 and rows == [(1.0, "a"), (0.75, "b")]  # on every busy sample: still shown
    assert pn.busy_frames("", top=5) == (0, [])
    assert pn.busy_frames(f"{LOOP};epoll_pwait (libc.so.6) 9", top=5) == (0, [])
