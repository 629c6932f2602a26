"""The systems bench_throughput.py compares, started as real processes in one tmp dir, and the
measurements taken from outside them (CPU from /proc/PID/stat, RSS, bulk key loads).

- reference: ../shared/perf/reference_server.py --loop uvloop --ldb batch (1 node, no replication)
- ceiling: three ../shared/perf/quorum_ceiling_node.py --ldb batch (N=3 W=2 R=2, the leanest)
- kv1 / kv3: kvstore node processes (kvstore.testing.processes.LocalCluster), N=R=W=1 and N3 R2 W2
- redis: redis-server --appendonly yes --appendfsync everysec, when installed

Every process is started in a session of its own with PR_SET_PDEATHSIG, and ``Systems.close``
stops each one it started (by its own Popen, nothing by name).
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from kvstore.testing.load import cpu_seconds
from kvstore.testing.processes import LocalCluster, die_with_parent, free_port, wait_until

VALUE = b"x" * 100  # what the load generators put (load_client.py and kvstore.testing.load)
KEY_FMT = "%016d"  # load_client.py's keys: 16 bytes, drawn from 0 .. keyspace - 1


def key(i: int) -> bytes:
    return KEY_FMT.encode() % i


@dataclass
class System:
    """One system under load: where the generator connects and whose CPU is read."""

    name: str
    port: int
    pid: int  # the process the generator talks to (coordinator)
    replica_pid: int = 0  # a second node's process (3-node systems)
    node_api: bool = False  # kvstore's get answers {"values": ...}; the others a value
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS), 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _popen(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only the harness, which stops them
            preexec_fn=die_with_parent,
        )


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait_log(p: subprocess.Popen[bytes], log: Path, word: str, timeout: float) -> None:
    def ready() -> bool:
        if p.poll() is not None:
            raise RuntimeError(f"{p.args!r} exited with {p.returncode}: {log.read_text()[-2000:]}")
        return word in log.read_text(errors="replace")

    wait_until(ready, timeout, what=f"{log.name} to say {word!r}")


class CpuSampler:
    """CPU seconds of some processes, sampled every ``interval_s`` in a thread, so that the
    CPU of one interval (known only afterwards, e.g. a generator's measured window) can be
    read back: ``cpu_between(pid, t0, t1)`` with ``time.perf_counter`` times."""

    def __init__(self, pids: list[int], interval_s: float = 0.02) -> None:
        self.pids = [p for p in pids if p]
        self.interval_s = interval_s
        self.t: list[float] = []
        self.cpu: dict[int, list[float]] = {p: [] for p in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter()
            vals = [cpu_seconds(p) for p in self.pids]
            self.t.append(now)
            for p, v in zip(self.pids, vals, strict=True):
                self.cpu[p].append(v or 0.0)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _at(self, pid: int, t: float) -> float:
        ts, cs = self.t, self.cpu[pid]
        i = min(max(bisect_left(ts, t), 1), len(ts) - 1)
        t0, t1 = ts[i - 1], ts[i]
        f = 0.0 if t1 <= t0 else min(max((t - t0) / (t1 - t0), 0.0), 1.0)
        return cs[i - 1] + f * (cs[i] - cs[i - 1])

    def cpu_between(self, pid: int, t0: float, t1: float) -> float | None:
        if pid not in self.cpu or len(self.t) < 2:
            return None
        return self._at(pid, t1) - self._at(pid, t0)


def wait_quiet(
    pids: list[int], *, cores: float = 0.1, window_s: float = 0.5, timeout_s: float = 30.0
) -> tuple[bool, float]:
    """Wait until ``pids`` together use less than ``cores`` of CPU over ``window_s``, for at
    most ``timeout_s``: (whether they got there, seconds waited). Loading keys is setup, not a
    measured point: what it leaves running (LevelDB compacting what was written, redis
    rewriting its AOF) would otherwise be charged to whichever point runs next."""
    t0 = time.perf_counter()
    while True:
        before = [cpu_seconds(p) or 0.0 for p in pids]
        time.sleep(window_s)
        used = sum((cpu_seconds(p) or 0.0) - b for p, b in zip(pids, before, strict=True))
        waited = time.perf_counter() - t0
        if used < cores * window_s:
            return True, waited
        if waited >= timeout_s:
            return False, waited


def load_msgpack_keys(port: int, n: int, secs: float, window: int = 256, start: int = 0) -> tuple[int, float]:
    """Write keys start..start+n-1 (``put [key, VALUE]``) over one connection, ``window``
    requests per round trip, for at most ``secs``: how many were written (all acknowledged)
    and the time."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pack = msgpack.Packer(use_bin_type=True).pack
    unp = msgpack.Unpacker(raw=False)
    t0 = time.perf_counter()
    done = 0
    with s:
        while done < n and time.perf_counter() - t0 < secs:
            k = min(window, n - done)
            s.sendall(b"".join(pack([0, i, "put", [key(start + done + i), VALUE]]) for i in range(k)))
            got = 0
            while got < k:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise RuntimeError(f"port {port} closed the connection while loading keys")
                unp.feed(chunk)
                for msg in unp:
                    if msg[2] is not None:
                        raise RuntimeError(f"put failed while loading keys: {msg[2]}")
                    got += 1
            done += k
    return done, time.perf_counter() - t0


def load_redis_keys(port: int, n: int, window: int = 1000, start: int = 0) -> float:
    """SET keys start..start+n-1 to VALUE, pipelined; the time it took."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = b"*3\r\n$3\r\nSET\r\n$16\r\n"
    tail = b"\r\n$%d\r\n%s\r\n" % (len(VALUE), VALUE)
    t0 = time.perf_counter()
    with s:
        for base in range(0, n, window):
            k = min(window, n - base)
            s.sendall(b"".join(head + key(start + base + i) + tail for i in range(k)))
            buf = b""
            while buf.count(b"\r\n") < k:
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise RuntimeError("redis closed the connection while loading keys")
                buf += chunk
            if not buf.startswith(b"+OK"):
                raise RuntimeError(f"redis SET failed: {buf[:80]!r}")
    return time.perf_counter() - t0


def redis_available(install: bool) -> tuple[bool, str]:
    """Whether redis-server and redis-benchmark are here; when missing, as root and asked to,
    install Debian's redis-server with apt first. The note says why it is skipped."""
    if shutil.which("redis-server") and shutil.which("redis-benchmark"):
        return True, ""
    if not install:
        return False, "redis-server not installed (--install-redis, as root, installs it with apt)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False, "redis-server not installed, and not root with apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-qq", "redis-server"], ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "redis-server"]):  # fmt: skip
        r = subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=False)
        if cmd[1] == "install" and r.returncode == 0:
            break
    if shutil.which("redis-server") and shutil.which("redis-benchmark"):
        return True, "redis-server installed with apt for this run"
    return False, "redis-server missing and apt-get could not install it"


class Systems:
    """Starts the systems in ``root`` and stops every process it started on ``close``."""

    def __init__(self, root: Path, perf_dir: Path) -> None:
        self.root = root
        self.perf_dir = perf_dir
        self._procs: list[subprocess.Popen[bytes]] = []
        self._clusters: list[LocalCluster] = []

    def _perf(self, script: str, *args: str, log: str) -> subprocess.Popen[bytes]:
        p = _popen([sys.executable, str(self.perf_dir / script), *args], self.root / log)
        self._procs.append(p)
        return p

    def reference(self) -> System:
        port = free_port()
        log = "reference.log"
        p = self._perf("reference_server.py", "--loop", "uvloop", "--port", str(port), "--ldb", "batch",
                       "--ldbpath", str(self.root / "reference-ldb"), log=log)  # fmt: skip
        _wait_log(p, self.root / log, "ready", 60)
        return System("reference", port, p.pid, procs=[p])

    def ceiling(self) -> System:
        ports = [free_port() for _ in range(3)]
        procs = []
        for i, port in enumerate(ports):
            peers = ",".join(str(q) for q in ports if q != port)
            procs.append(self._perf(
                "quorum_ceiling_node.py", "--port", str(port), "--peers", peers, "--ldb", "batch",
                "--ldbpath", str(self.root / f"ceiling{i + 1}-ldb"), log=f"ceiling{i + 1}.log",
            ))  # fmt: skip
        for i, p in enumerate(procs):
            _wait_log(p, self.root / f"ceiling{i + 1}.log", "ready", 60)
        return System("ceiling", ports[0], procs[0].pid, replica_pid=procs[1].pid, procs=procs)

    def kvstore(self, name: str, nodes: int, fsync: str) -> System:
        n = min(nodes, 3)
        quorum = 1 if n == 1 else 2
        (self.root / name).mkdir()
        c = LocalCluster(self.root / name, nodes=nodes, n=n, r=quorum, w=quorum, extra=["--fsync", fsync])
        self._clusters.append(c)
        c.start_all()
        pids = [nd.proc.pid for nd in c.nodes.values() if nd.proc is not None]
        port = int(c.addrs()[0].rsplit(":", 1)[1])
        return System(name, port, pids[0], replica_pid=pids[1] if len(pids) > 1 else 0, node_api=True)

    def redis(self) -> System:
        port = free_port()
        d = self.root / "redis"
        d.mkdir()
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"]  # fmt: skip
        p = _popen(args, self.root / "redis.log")
        self._procs.append(p)

        def pong() -> bool:
            if p.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.root / 'redis.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(64).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(pong, 30, what="redis-server to answer PING")
        return System("redis", port, p.pid, procs=[p])

    def pids(self) -> list[int]:
        """Every process started so far that still runs."""
        procs = [*self._procs, *(nd.proc for c in self._clusters for nd in c.nodes.values())]
        return [p.pid for p in procs if p is not None and p.poll() is None]

    def close(self) -> None:
        for c in self._clusters:
            c.close()
        for p in self._procs:
            _stop(p)


def read_json_line(p: subprocess.Popen[str], timeout_s: float) -> tuple[str, float]:
    """The last stdout line of child ``p`` and the ``perf_counter`` time it arrived (the end of
    the child's measured window, give or take its exit); kills the child past ``timeout_s``."""
    assert p.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    last, at = "", 0.0
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                line = p.stdout.readline()
                if not line:
                    break
                if line.strip():
                    last, at = line.strip(), time.perf_counter()
            elif p.poll() is not None:
                break
        else:
            p.kill()
    finally:
        sel.close()
        p.wait()
    return last, at


def run_child(args: list[str], timeout_s: float) -> tuple[dict[str, Any] | None, float, str]:
    """Run a generator child that prints one JSON line: (result or None, arrival time, stderr tail)."""
    import json

    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, preexec_fn=die_with_parent)  # fmt: skip
    line, at = read_json_line(p, timeout_s)
    err = p.stderr.read() if p.stderr else ""
    if p.stderr:
        p.stderr.close()
    if p.stdout:
        p.stdout.close()
    try:
        doc = json.loads(line) if line else None
    except ValueError:
        doc = None
    return (doc if isinstance(doc, dict) else None), at, (err.strip().splitlines() or [""])[-1]
