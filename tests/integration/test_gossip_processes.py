"""SWIM between real processes on loopback: join, kill -9, pause/resume, leave, garbage.

Each process runs only the gossip (UDP) and its push-pull RPC (TCP) on one port, from
tests/integration/_gossip_node.py, and publishes its view as a JSON file the test reads.
"""

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
from typing import Any

import pytest

from kvstore.testing.processes import free_port, wait_until

SCRIPT = Path(__file__).with_name("_gossip_node.py")
PERIOD = 0.2


class GossipProc:
    def __init__(self, tmp: Path, name: str, seeds: list[str], extra: list[str]) -> None:
        self.name = name
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.state_file = tmp / f"{name}.json"
        self.log_file = tmp / f"{name}.log"
        args = [
            sys.executable,
            str(SCRIPT),
            "--name",
            name,
            "--port",
            str(self.port),
            "--seeds",
            ",".join(seeds),
            "--state-file",
            str(self.state_file),
            "--period",
            str(PERIOD),
            *extra,
        ]
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)

    def view(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return {m["name"]: m for m in doc["members"]}

    def stats(self) -> dict[str, int]:
        try:
            return dict(json.loads(self.state_file.read_text())["stats"])
        except (OSError, ValueError, KeyError):
            return {}

    def state_of(self, name: str) -> str | None:
        m = self.view().get(name)
        return None if m is None else str(m["state"])

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            # A stopped process must be resumed to die on SIGTERM; SIGKILL works regardless.
            self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    procs: list[GossipProc] = []

    def start(name: str, seeds: list[str], *extra: str) -> GossipProc:
        p = GossipProc(tmp_path, name, seeds, list(extra))
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            if p.proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM):
                print(f"--- {p.name} exited {p.proc.returncode}:\n{p.log_file.read_text(errors='replace')[-3000:]}")


def all_see(observers: list[GossipProc], name: str, states: tuple[str, ...]) -> bool:
    return all(o.state_of(name) in states for o in observers)


def test_five_processes_join_detect_kill_and_refute_after_pause(
    spawn: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = spawn("g0", [])
    procs = [seed] + [spawn(f"g{i}", [seed.addr]) for i in range(1, 5)]
    names = [p.name for p in procs]

    # join through one seed: everyone sees five alive members, with their metadata
    wait_until(
        lambda: all(all(p.state_of(n) == "alive" for n in names) for p in procs),
        timeout=60,
        what="5 alive everywhere",
    )
    assert all(m["meta"] == {"ring_version": 1} for m in procs[1].view().values())

    # garbage on the UDP port is dropped, the node carries on
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\xc1", b"\x93\x01\x01\x90", os.urandom(600), b"\x95" + b"\xff" * 40):
            s.sendto(junk, ("127.0.0.1", seed.port))
    wait_until(lambda: seed.stats().get("bad_packets", 0) >= 4, timeout=10, what="garbage counted")
    assert seed.proc.poll() is None

    # SIGKILL one: all others mark it dead
    victim, others = procs[4], procs[:4]
    t0 = time.monotonic()
    victim.signal(signal.SIGKILL)
    wait_until(lambda: all_see(others, victim.name, ("dead",)), timeout=60, what="victim dead everywhere")
    detection = time.monotonic() - t0

    # SIGSTOP one until the others give up on it, then SIGCONT: it refutes with a higher incarnation
    paused, watchers = procs[3], procs[:3]
    inc_before = max(w.view()[paused.name]["incarnation"] for w in watchers)
    paused.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: all_see(watchers, paused.name, ("dead",)), timeout=60, what="paused seen dead")
    finally:
        paused.signal(signal.SIGCONT)
    t1 = time.monotonic()
    wait_until(
        lambda: all(
            (m := w.view().get(paused.name)) is not None
            and m["state"] == "alive"
            and m["incarnation"] > inc_before
            for w in watchers
        ),
        timeout=60,
        what="paused member alive again with a higher incarnation",
    )
    back = time.monotonic() - t1
    # its own view (the file lags its memory by up to one write interval) agrees
    wait_until(
        lambda: paused.view().get(paused.name, {}).get("incarnation", 0) > inc_before,
        timeout=10,
        what="paused member's own incarnation raised",
    )
    # the survivors see each other alive (a passing suspicion under load is allowed)
    wait_until(
        lambda: all(all(w.state_of(x.name) == "alive" for x in watchers) for w in watchers),
        timeout=30,
        what="survivors alive to each other",
    )
    with capsys.disabled():
        print(
            f"\ngossip processes (period {PERIOD}s): kill -9 seen dead by all in {detection:.2f}s; "
            f"resumed member alive again everywhere {back:.2f}s after SIGCONT"
        )


def test_graceful_leave_is_left_not_dead(spawn: Any) -> None:
    seed = spawn("h0", [])
    procs = [seed] + [spawn(f"h{i}", [seed.addr], "--leave-on-term") for i in range(1, 3)]
    names = [p.name for p in procs]
    wait_until(
        lambda: all(all(p.state_of(n) == "alive" for n in names) for p in procs),
        timeout=60,
        what="3 alive everywhere",
    )
    leaver = procs[2]
    leaver.signal(signal.SIGTERM)
    leaver.proc.wait(timeout=30)
    assert leaver.proc.returncode == 0
    wait_until(lambda: all_see(procs[:2], leaver.name, ("left",)), timeout=30, what="left everywhere")
    time.sleep(20 * PERIOD)  # long past any suspicion timeout: still left, never dead
    assert all_see(procs[:2], leaver.name, ("left",))
