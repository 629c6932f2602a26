"""Real node processes on loopback for integration tests and benchmarks.

    with LocalCluster(tmp_path, nodes=3) as c:
        c.client().put("a", "1")
        c.kill("n2")                 # SIGKILL
        c.start("n2")                # same name, port and data dir

Every process is stopped when the context exits, whatever happened inside it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvstore.client import Client
from kvstore.config import LOCAL_TIMINGS, node_flags
from kvstore.core import messages as m

# Tests wait for membership to settle after restarts and ring changes: full-state exchanges
# more often than a local cluster's shorten those waits.
TEST_TIMINGS = {**LOCAL_TIMINGS, "push_pull_interval_s": 2.0}


def die_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent dies (PR_SET_PDEATHSIG), so
    a parent killed outright leaves no child running. For ``Popen(preexec_fn=...)``, or
    first thing in a child; does nothing where libc has no prctl."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


# Ports free_port has handed out in this process. A port stays free until its node binds it,
# and a cluster picks all its ports before starting any node: without this, two nodes of one
# cluster could be given the same port (it happened: one failed with "address already in use").
_HANDED_OUT: set[int] = set()
_HANDED_OUT_MAX = 8192  # past this many, start over: the oldest are long bound or closed

# Under pytest-xdist each worker takes ports from its own slice of the range below the
# kernel's ephemeral ports, in order. A port the kernel picks for port 0 (or for any outgoing
# connection) can be one a node of another worker's test had a moment ago, while that test's
# other nodes still gossip with it and send it replica calls: the new node then hears a
# foreign cluster of the same node names (CI saw a cluster that never converged). Ports no
# one else hands out, never reused in a run, cannot be anyone's old address.
SLICE_LOW = 10000
_next_in_slice: int | None = None


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_slice() -> range | None:
    """This xdist worker's ports, or None outside xdist (or when the range is too small)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    # The worker itself, not a process it started (a benchmark, the kv CLI): those inherit the
    # variable but not xdist, and take kernel-picked ports, which no slice holds.
    if "xdist" not in sys.modules or not worker.startswith("gw") or not worker[2:].isdigit():
        return None
    index = int(worker[2:])
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    width = (_ephemeral_low() - SLICE_LOW) // count
    if width < 1000:
        return None
    return range(SLICE_LOW + index * width, SLICE_LOW + (index + 1) * width)


def _binds(host: str, port: int, kind: socket.SocketKind) -> bool:
    try:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, port))
    except OSError:
        return False
    return True


def _bindable(host: str, port: int) -> bool:
    return _binds(host, port, socket.SOCK_STREAM) and _binds(host, port, socket.SOCK_DGRAM)


def _from_slice(host: str, ports: range) -> int:
    global _next_in_slice
    if _next_in_slice is None or _next_in_slice not in ports:
        _next_in_slice = ports.start
    for _ in range(len(ports)):
        port = _next_in_slice
        _next_in_slice = port + 1 if port + 1 < ports.stop else ports.start
        if _bindable(host, port):
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP (nodes gossip on UDP at their TCP port), and not one
    this process was given before (nor, under xdist, one another worker is given)."""
    ports = _worker_slice()
    if ports is not None:
        return _from_slice(host, ports)
    if len(_HANDED_OUT) >= _HANDED_OUT_MAX:
        _HANDED_OUT.clear()
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = t.getsockname()[1]
            if port in _HANDED_OUT or not _binds(host, port, socket.SOCK_DGRAM):
                continue
            _HANDED_OUT.add(port)
            return int(port)
    raise RuntimeError("no free port")


def wait_until(pred: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class NodeProc:
    def __init__(self, name: str, addr: str, data_dir: Path, log_path: Path, args: list[str]) -> None:
        self.name = name
        self.addr = addr
        self.data_dir = data_dir
        self.log_path = log_path
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class LocalCluster:
    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        *,
        n: int = 3,
        r: int = 2,
        w: int = 2,
        extra: list[str] | None = None,
        host: str = "127.0.0.1",
        secret_file: str | None = None,
        wrap: dict[str, list[str]] | None = None,
    ) -> None:
        self.root = Path(root)
        # Per node name, a command its process runs under (e.g. valgrind, for
        # benchmarks/profile_node.py): the node's own command line follows it.
        self.wrap = wrap or {}
        # For this harness's own clients; the nodes get theirs through ``extra`` flags.
        self.secret_file = secret_file
        self.host = host
        self.settings = ["--n-replicas", str(n), "--r", str(r), "--w", str(w), *node_flags(TEST_TIMINGS), *(extra or [])]
        self.nodes: dict[str, NodeProc] = {}
        self._clients: list[Client] = []
        for i in range(nodes):
            self.add(f"n{i + 1}")

    def add(self, name: str, port: int | None = None) -> NodeProc:
        addr = f"{self.host}:{port or free_port(self.host)}"
        data = self.root / name
        seeds = [] if not self.nodes else ["--seed", next(iter(self.nodes.values())).addr]
        args = [
            "--name", name, "--listen", addr, "--data-dir", str(data),
            # Snapshots stay inside the test's directory, not in the machine's /dev/shm.
            "--snapshot-dir", str(self.root / "shm"), *seeds, *self.settings,
        ]
        node = NodeProc(name, addr, data, self.root / f"{name}.log", args)
        self.nodes[name] = node
        return node

    def start(self, name: str, *, wait: bool = True) -> NodeProc:
        node = self.nodes[name]
        assert not node.running, f"{name} is already running"
        logf = open(node.log_path, "ab")  # noqa: SIM115 - handed to the child
        node.proc = subprocess.Popen(
            [*self.wrap.get(name, []), sys.executable, "-m", "cli", "node", "start", *node.args],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        logf.close()
        if wait:
            self.wait_serving(name)
        return node

    def start_all(self) -> LocalCluster:
        names = list(self.nodes)
        self.start(names[0])
        for name in names[1:]:
            self.start(name, wait=False)
        for name in names:
            self.wait_serving(name)
        self.wait_ring(len(names))
        return self

    def status(self, name: str) -> dict[str, Any] | None:
        c = Client([self.nodes[name].addr], timeout_s=2.0, secret_file=self.secret_file)
        try:
            return c.call(self.nodes[name].addr, m.STATUS)  # type: ignore[no-any-return]
        except Exception:
            return None
        finally:
            c.close()

    def wait_serving(self, name: str, timeout: float = 30.0) -> None:
        node = self.nodes[name]

        def ok() -> bool:
            if not node.running:
                raise RuntimeError(f"{name} exited with {node.proc.returncode if node.proc else None}:\n{node.log()[-3000:]}")
            st = self.status(name)
            return st is not None and st["ring_version"] > 0

        wait_until(ok, timeout, what=f"{name} to serve")

    def wait_ring(self, members: int, timeout: float = 60.0) -> None:
        def ok() -> bool:
            for name, node in self.nodes.items():
                if not node.running:
                    continue
                st = self.status(name)
                if st is None or len(st["members"]) != members or st["pending"]:
                    return False
            return True

        try:
            wait_until(ok, timeout, what=f"every node to see {members} members")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.describe()}") from None

    def describe(self, log_lines: int = 40) -> str:
        """What each node says of the ring, and its log's tail: for a wait that timed out on
        a machine (CI's) where the logs are gone once the test's tmp dir is."""
        out: list[str] = []
        for name, node in self.nodes.items():
            st = self.status(name) if node.running else None
            if st is None:
                seen = "not running" if not node.running else "no answer to status"
            else:
                names = [f"{mm['name']}{'' if mm['up'] else '(down)'}" for mm in st["members"]]
                seen = f"ring v{st['ring_version']} pending={st['pending']} members={names}"
            tail = node.log().splitlines()[-log_lines:]
            out.append(f"--- {name} {node.addr}: {seen}\n" + "\n".join(tail))
        return "\n".join(out)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[name]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                node.proc.wait(timeout=60)

    def stop(self, name: str) -> int:
        node = self.nodes[name]
        if node.proc is None:
            return 0
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGCONT)
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        return node.proc.returncode

    def addrs(self, *names: str) -> list[str]:
        return [self.nodes[n].addr for n in (names or self.nodes)]

    def client(self, *names: str, **kw: Any) -> Client:
        kw.setdefault("secret_file", self.secret_file)
        c = Client(self.addrs(*names), **kw)
        self._clients.append(c)
        return c

    def close(self) -> None:
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
        for name in self.nodes:
            try:
                self.stop(name)
            except Exception:
                node = self.nodes[name]
                if node.proc is not None and node.proc.poll() is None:
                    node.proc.kill()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def give_http_ports(cluster: LocalCluster, *names: str) -> dict[str, int]:
    """A free metrics/dashboard HTTP port for each named node (default: all) of a cluster not
    yet started; returns name -> port."""
    ports: dict[str, int] = {}
    for name in names or list(cluster.nodes):
        port = free_port(cluster.host)
        cluster.nodes[name].args += ["--http-port", str(port), "--http-host", cluster.host]
        ports[name] = port
    return ports


def http_get(port: int, path: str = "/metrics", host: str = "127.0.0.1", timeout: float = 5.0) -> str:
    """GET http://host:port/path and return the body (raises OSError on failure)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as r:
        return r.read().decode()  # type: ignore[no-any-return]
