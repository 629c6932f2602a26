"""Real `kv node` processes under the harness's control: start, kill -9, pause, restart.

Each node runs in a session of its own, so a Ctrl-C at the terminal reaches the harness only
and the harness decides how the nodes stop. A node's stderr goes to ``<dir>/<name>.log``
(appended across restarts, each start marked). A clock-skewed node is started with
libfaketime preloaded; only the wall clock is shifted (FAKETIME_DONT_FAKE_MONOTONIC), as
with a real clock that is wrong, so timers keep running at the right pace. A node started
with ``lose_unsynced`` runs its storage engine in the test-only power-loss mode
(``KV_TEST_LOSE_UNSYNCED=1``): a SIGKILL then loses what it acknowledged but had not fsynced.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from jepsen_lite.errors import HarnessError
from kvstore.config import node_flags
from kvstore.core import messages as m
from kvstore.errors import KVError
from kvstore.runtime.rpc import RpcClient
from kvstore.runtime.security import client_options
from storage.engine import LOSE_UNSYNCED_ENV

__all__ = ["Cluster", "Node", "find_kv", "find_libfaketime"]

_FAKETIME_GLOBS = (
    "/usr/lib/*/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)


def find_libfaketime() -> str | None:
    for pattern in _FAKETIME_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def find_kv() -> list[str]:
    """The command that runs `kv`: the script beside this interpreter, else `python -m cli`."""
    beside = Path(sys.executable).parent / "kv"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("kv")
    if found:
        return [found]
    return [sys.executable, "-m", "cli"]


@dataclass
class Node:
    index: int
    name: str
    addr: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    clock_offset_s: float = 0.0
    lose_unsynced: bool = False
    starts: int = 0
    stopped_on_purpose: bool = False
    # Asked to leave the ring: it exits by itself once handed off, which is no crash.
    leaving: bool = False
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """Nodes n1..nN on the given addresses; every setting in ``settings`` goes to every node
    as ``--field-name value`` (e.g. {"conflict": "lww", "n_replicas": 3})."""

    def __init__(
        self,
        addrs: Sequence[str],
        base_dir: Path,
        *,
        settings: Mapping[str, Any] | None = None,
        kv_cmd: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.base_dir = base_dir
        self.settings = dict(settings or {})
        self.kv_cmd = list(kv_cmd or find_kv())
        self.env = dict(env or os.environ)
        self.ready_timeout_s = ready_timeout_s
        self.nodes = [
            Node(i, f"n{i + 1}", a, base_dir / f"n{i + 1}", base_dir / f"n{i + 1}.log")
            for i, a in enumerate(addrs)
        ]
        self.libfaketime = find_libfaketime()

    @property
    def addrs(self) -> list[str]:
        return [n.addr for n in self.nodes]

    # ----------------------------------------------------------------- commands
    def _command(self, node: Node) -> list[str]:
        cmd = [*self.kv_cmd, "node", "start", "--name", node.name, "--listen", node.addr,
               "--data-dir", str(node.data_dir)]
        # First start: join through the nodes already up (the first node founds the ring).
        # A restart may rejoin through anyone, since any one of them may be down.
        seeds = [o for o in self.nodes if o is not node and (node.starts > 0 or o.index < node.index)]
        for other in seeds:
            cmd += ["--seed", other.addr]
        return cmd + node_flags(self.settings)

    def _env(self, node: Node) -> dict[str, str]:
        env = dict(self.env)
        env.pop(LOSE_UNSYNCED_ENV, None)  # only the nemesis decides which node may lose writes
        if node.lose_unsynced:
            env[LOSE_UNSYNCED_ENV] = "1"
        if node.clock_offset_s:
            if self.libfaketime is None:
                raise HarnessError("clock nemesis needs libfaketime (install the faketime package)")
            env["LD_PRELOAD"] = self.libfaketime
            env["FAKETIME"] = f"{node.clock_offset_s:+.1f}s"
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
            env["FAKETIME_NO_CACHE"] = "1"
        return env

    # ----------------------------------------------------------------- lifecycle
    def start(self, node: Node, *, clock_offset_s: float = 0.0, lose_unsynced: bool = False) -> None:
        if node.running:
            raise HarnessError(f"{node.name} is already running")
        node.data_dir.parent.mkdir(parents=True, exist_ok=True)
        node.clock_offset_s = clock_offset_s
        node.lose_unsynced = lose_unsynced
        if node._log is None:
            node._log = node.log_path.open("ab")
        note = f" under faketime {clock_offset_s:+.1f}s" if clock_offset_s else ""
        if lose_unsynced:
            note += f" with {LOSE_UNSYNCED_ENV}=1 (a SIGKILL loses un-synced writes)"
        node._log.write(f"--- jepsen-lite: start #{node.starts + 1}{note} ---\n".encode())
        node._log.flush()
        cmd = self._command(node)
        node.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=node._log, stderr=node._log,
            env=self._env(node), start_new_session=True,
        )
        node.starts += 1
        node.paused = False
        node.stopped_on_purpose = False

    def kill(self, node: Node) -> None:
        """SIGKILL: no graceful stop, no snapshot; whatever was acked must be in LevelDB."""
        if node.proc is None:
            return
        node.stopped_on_purpose = True
        try:
            node.proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.proc.wait()
        node.paused = False

    def pause(self, node: Node) -> None:
        if node.running and not node.paused:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGSTOP)
            node.paused = True

    def resume(self, node: Node) -> None:
        if node.running and node.paused:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGCONT)
        node.paused = False

    def stop(self, node: Node, *, timeout_s: float = 20.0) -> int | None:
        """Graceful stop (SIGTERM); SIGKILL if it takes longer than timeout_s."""
        return self.stop_all([node], timeout_s=timeout_s).get(node.name)

    def stop_all(self, nodes: Sequence[Node] | None = None, *, timeout_s: float = 20.0) -> dict[str, int | None]:
        """SIGTERM to all at once, then wait. One signal only: a second one makes a node
        skip its graceful stop."""
        targets = list(self.nodes if nodes is None else nodes)
        for n in targets:
            n.stopped_on_purpose = True
            self.resume(n)
            if n.running:
                assert n.proc is not None
                n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for n in targets:
            if n.proc is None:
                codes[n.name] = None
                continue
            try:
                n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()
            codes[n.name] = n.proc.returncode
        return codes

    def close_logs(self) -> None:
        for n in self.nodes:
            if n._log is not None:
                n._log.close()
                n._log = None

    def exited(self) -> list[Node]:
        """Nodes that died without the harness asking (a crash is a finding)."""
        return [n for n in self.nodes
                if n.proc is not None and n.proc.poll() is not None and not n.stopped_on_purpose
                and not n.leaving]

    # ----------------------------------------------------------------- readiness
    async def call(self, node: Node, method: str, params: list[Any], timeout_s: float = 5.0) -> Any:
        """One RPC to one node; KVError when it fails."""
        rpc = RpcClient(connect_timeout_s=timeout_s)
        try:
            return await rpc.call(node.addr, method, params, timeout_s)
        finally:
            await rpc.close()

    async def status(self, node: Node, timeout_s: float = 1.0) -> dict[str, Any] | None:
        rpc = RpcClient(connect_timeout_s=timeout_s, **client_options())
        try:
            doc = await rpc.call(node.addr, m.STATUS, [], timeout_s)
            return doc if isinstance(doc, dict) else None
        except KVError:
            return None
        finally:
            await rpc.close()

    async def wait_ready(self, node: Node, *, members: int = 1, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.ready_timeout_s)
        while True:
            if node.proc is not None and node.proc.poll() is not None:
                if node.leaving and node.proc.returncode == 0:
                    return  # it finished leaving the ring while we waited
                raise HarnessError(f"{node.name} exited with status {node.proc.returncode} while starting "
                                   f"(see {node.log_path})")
            st = await self.status(node)
            if st is not None and st.get("ring_version", 0) > 0 and len(st.get("members", [])) >= members:
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"{node.name} not ready after {timeout_s or self.ready_timeout_s:.0f}s "
                                   f"(see {node.log_path})")
            await asyncio.sleep(0.1)

    async def start_all(self) -> None:
        """One node at a time, each waiting until it sees all before it: bringing the cluster
        up is not what is under test, and concurrent joins are a separate question."""
        for i, n in enumerate(self.nodes):
            self.start(n)
            await self.wait_ready(n, members=i + 1)
        await asyncio.gather(*(self.wait_ready(n, members=len(self.nodes)) for n in self.nodes))
