"""A private network namespace for the cluster, and partitions as iptables rules inside it.

Why a namespace: partitions are DROP rules on source/destination addresses, and rules in
the host's tables would cut traffic of everything else on the machine. Inside a namespace
of our own, each node gets its own loopback address (127.0.0.11, .12, ...) and the host's
tables are never touched. Nodes bind their outgoing sockets to their listen address, so the
source address of every packet names the sending node. Clients connect from 127.0.0.1 (or
the destination's own address), which no rule matches: clients are never partitioned, only
nodes from each other, as in Jepsen.

Lifetime: the process that creates a namespace deletes it (``destroy`` kills whatever still
runs inside first). Namespaces are named ``jl-<creator pid>-<random>``, so one left behind
by a creator that was SIGKILLed is recognised and removed by ``sweep_stale``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from jepsen_lite.errors import HarnessError

__all__ = [
    "CHAIN",
    "Firewall",
    "NetNS",
    "can_partition",
    "list_namespaces",
    "node_address",
    "probe_link",
    "sweep_stale",
]

CHAIN = "JEPSEN"
PREFIX = "jl-"


def node_address(i: int) -> str:
    """Loopback address of node i (0-based): 127.0.0.11, 127.0.0.12, ..."""
    if not 0 <= i < 200:
        raise ValueError("node index out of range")
    return f"127.0.0.{11 + i}"


def can_partition() -> tuple[bool, str]:
    """Whether this process can make namespaces and iptables rules, and if not, why."""
    if os.geteuid() != 0:
        return False, "not running as root"
    for tool in ("ip", "iptables", "iptables-restore"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` not found (install the iptables and iproute2 packages)"
    return True, ""


def _run(cmd: Sequence[str], *, input_: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(list(cmd), input=input_, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"{' '.join(cmd)}: {e}") from None
    if check and res.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()}")
    return res


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class NetNS:
    name: str
    addresses: list[str] = field(default_factory=list)
    created: bool = False

    @classmethod
    def create(cls, addresses: Iterable[str], name: str | None = None) -> NetNS:
        ns = cls(name or f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}", list(addresses))
        _run(["ip", "netns", "add", ns.name])
        ns.created = True
        try:
            _run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
            for a in ns.addresses:
                _run(["ip", "-n", ns.name, "addr", "add", f"{a}/32", "dev", "lo"])
            Firewall(ns.name).install()
        except BaseException:
            ns.destroy()
            raise
        return ns

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def pids(self) -> list[int]:
        res = _run(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in res.stdout.split() if p.isdigit()]

    def destroy(self, *, timeout_s: float = 10.0) -> None:
        """Kill every process still inside, then delete the namespace. Idempotent."""
        if not self.created:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            pids = [p for p in self.pids() if p != os.getpid()]
            if not pids or time.monotonic() > deadline:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        _run(["ip", "netns", "del", self.name], check=False)
        self.created = False


def list_namespaces() -> list[str]:
    res = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def sweep_stale() -> list[str]:
    """Remove namespaces left by harness processes that no longer exist; returns their names."""
    removed = []
    for name in list_namespaces():
        if not name.startswith(PREFIX):
            continue
        pid_part = name[len(PREFIX) :].split("-", 1)[0]
        if pid_part.isdigit() and not _pid_alive(int(pid_part)):
            NetNS(name, created=True).destroy()
            removed.append(name)
    return removed


class Firewall:
    """Partitions as DROP rules in a chain of our own, jumped to from INPUT.

    Rules go in with one ``iptables-restore --noflush`` so a partition starts at one instant
    instead of link by link; healing flushes the chain. ``netns`` None means "the namespace
    this process is in" (the harness re-execs itself inside the namespace).
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _cmd(self, *args: str) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, *args]

    def install(self) -> None:
        _run(self._cmd("iptables", "-w", "-N", CHAIN))
        _run(self._cmd("iptables", "-w", "-I", "INPUT", "-j", CHAIN))

    def cut(self, links: Iterable[tuple[str, str]]) -> None:
        """Drop every packet from src to dst for each (src, dst); replaces any previous cut."""
        lines = ["*filter", f"-F {CHAIN}"]
        lines += [f"-A {CHAIN} -s {src}/32 -d {dst}/32 -j DROP" for src, dst in sorted(set(links))]
        lines.append("COMMIT")
        _run(self._cmd("iptables-restore", "-w", "--noflush"), input_="\n".join(lines) + "\n")

    def heal(self) -> None:
        _run(self._cmd("iptables", "-w", "-F", CHAIN))

    def rules(self) -> list[str]:
        res = _run(self._cmd("iptables", "-w", "-S", CHAIN))
        return [line for line in res.stdout.splitlines() if line.startswith("-A")]


def probe_link(src: str, dst: str, *, timeout_s: float = 1.0) -> bool:
    """Whether a TCP connection from src to a listener on dst completes (in this namespace)."""
    with socket.socket() as srv:
        srv.bind((dst, 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        with socket.socket() as c:
            c.bind((src, 0))
            c.settimeout(timeout_s)
            try:
                c.connect((dst, port))
            except (TimeoutError, OSError):
                return False
            return True
