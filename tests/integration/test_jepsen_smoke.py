"""jepsen-lite against the real thing: a private network namespace whose iptables rules
really stop traffic, a harness that leaves nothing behind, and a short fault-injection run
(3 nodes, partition + kill) whose history must be valid.

Partitions need root and iptables (CI is root and installs iptables); without them these
tests skip and say why.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jepsen-lite"))

from jepsen_lite.cluster import Cluster, find_libfaketime
from jepsen_lite.netns import (
    CHAIN,
    Firewall,
    NetNS,
    can_partition,
    list_namespaces,
    node_address,
    sweep_stale,
)

ROOT = Path(__file__).resolve().parents[2]
JEPSEN_DIR = ROOT / "jepsen-lite"
_OK, _WHY = can_partition()
# One at a time: the harness runs whole clusters with fixed addresses and namespaces.
pytestmark = pytest.mark.xdist_group("jepsen")

needs_netns = pytest.mark.skipif(not _OK, reason=f"partitions need root, ip and iptables: {_WHY}")


def wait_until(cond: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.1) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


def host_rules() -> str:
    return subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def netns() -> Iterator[NetNS]:
    ns = NetNS.create([node_address(0), node_address(1)])
    try:
        yield ns
    finally:
        ns.destroy()


ECHO_SERVER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(8)
print("listening", flush=True)
while True:
    c, _ = srv.accept()
    c.settimeout(5)
    try:
        c.sendall(c.recv(100))
    except OSError:
        pass
    c.close()
"""

ECHO_CLIENT = """
import socket, sys
c = socket.socket()
c.bind((sys.argv[1], 0))
c.settimeout(float(sys.argv[4]))
try:
    c.connect((sys.argv[2], int(sys.argv[3])))
    c.sendall(b"ping")
    print(c.recv(100).decode())
except OSError as e:
    print("error", type(e).__name__)
"""


@needs_netns
def test_partition_rules_really_stop_traffic_inside_the_namespace_only(netns: NetNS) -> None:
    a, b = node_address(0), node_address(1)
    before = host_rules()
    server = subprocess.Popen([*netns.exec_prefix(), sys.executable, "-c", ECHO_SERVER, b, "7777"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"

        def echo(timeout_s: float = 1.0) -> str:
            res = subprocess.run([*netns.exec_prefix(), sys.executable, "-c", ECHO_CLIENT, a, b, "7777",
                                  str(timeout_s)], capture_output=True, text=True, timeout=30)
            return res.stdout.strip()

        assert echo() == "ping"
        fw = Firewall(netns.name)
        fw.cut([(a, b)])
        assert fw.rules() == [f"-A {CHAIN} -s {a}/32 -d {b}/32 -j DROP"]
        assert echo(0.5).startswith("error")
        assert host_rules() == before, "a partition must never touch the host's tables"
        fw.cut([(b, a)])  # replaces the previous cut: only the reply direction is dropped now
        assert len(fw.rules()) == 1
        assert echo(0.5).startswith("error")
        fw.heal()
        assert fw.rules() == []
        assert echo() == "ping"
    finally:
        netns.destroy()
        server.wait(timeout=10)
    assert netns.name not in list_namespaces()
    assert host_rules() == before


@needs_netns
def test_sweep_removes_namespaces_of_dead_harnesses() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    # What a SIGKILLed harness leaves: a bare namespace named for its pid. Made with a bare
    # `ip netns add` because a harness starting in another test worker sweeps too, and may
    # remove it at any moment; NetNS.create would then fail half way through its setup.
    stale = f"jl-{dead.pid}-test"
    subprocess.run(["ip", "netns", "add", stale], check=True, capture_output=True)
    try:
        live = NetNS.create([node_address(0)])
        try:
            swept = sweep_stale()
            assert live.name not in swept, "a namespace of a live process must be kept"
            assert live.name in list_namespaces()
        finally:
            live.destroy()
        # Whichever sweep got there first (ours, or a harness's in another worker), it is gone.
        assert stale not in list_namespaces()
    finally:
        NetNS(stale, created=True).destroy()


# ----------------------------------------------------------------- the harness


def harness(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "jepsen_lite.cli", "run", "--out", str(out), *args]


def harness_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(JEPSEN_DIR), str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def ours(pid: int) -> list[str]:
    """Namespaces created by harness process pid."""
    return [n for n in list_namespaces() if n.startswith(f"jl-{pid}-")]


def pids_in(ns: str) -> list[int]:
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in res.stdout.split()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
        for ns in ours(p.pid):
            NetNS(ns, created=True).destroy()


@needs_netns
@pytest.mark.timeout(300)
def test_smoke_run_partition_and_kill_is_valid(tmp_path: Path) -> None:
    out = tmp_path / "run"
    before = host_rules()
    t0 = time.monotonic()
    res = subprocess.run(
        harness(out, "--nodes", "3", "--workload", "set", "--nemesis", "partition,kill", "--time", "45",
                "--concurrency", "4", "--rate", "30", "--seed", "7", "--fault-s", "6:9", "--heal-s", "3:5",
                "--settle", "5", "--final-timeout", "30"),
        env=harness_env(), capture_output=True, text=True, timeout=280,
    )
    elapsed = time.monotonic() - t0
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    counts = {k: v for k, v in results.get("workload_result", {}).items() if not isinstance(v, list)}
    assert res.returncode == 0, f"exit {res.returncode}; checker: {counts}\n{res.stderr[-3000:]}"
    assert results["valid"] is True
    w = results["workload_result"]
    assert w["lost_count"] == 0 and w["unexpected_count"] == 0 and w["acknowledged_count"] > 0
    assert "partition preflight ok" in res.stderr
    kinds = {f["kind"] for f in results["schedule"]}
    assert kinds == {"partition", "kill"}
    assert not results["nemesis_errors"], results["nemesis_errors"]
    events = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert {e["value"]["kind"] for e in events if e["process"] == "nemesis"} == {"partition", "kill"}
    assert any(str(e["process"]).startswith("final") and e["type"] == "ok" for e in events)
    page = (out / "index.html").read_text()
    assert "VALID" in page and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page, "the report must work offline"
    assert results["availability"]["overall"]["total"] == results["ops"]
    assert host_rules() == before
    network = results["run"]["network"]
    assert network.startswith("namespace jl-")
    assert network.split()[1] not in list_namespaces()
    # Informational: the CI budget for this smoke run is 90 s of harness time.
    print(f"smoke run took {elapsed:.0f}s")


@pytest.mark.timeout(300)
def test_smoke_deletes_with_lose_unsynced_and_ring_changes(tmp_path: Path) -> None:
    """The deletes workload under the power-loss and ring-change nemeses, end to end. The
    verdict may be either (the store may really lose or resurrect something); what must hold
    is that the run decided it, that every fault really happened, and that an invalid verdict
    names what it found."""
    out = tmp_path / "run"
    res = subprocess.run(
        harness(out, "--nodes", "4", "--workload", "deletes", "--nemesis", "lose-unsynced,ring",
                "--time", "40", "--concurrency", "4", "--rate", "30", "--keys", "6", "--seed", "3",
                "--fault-s", "8:10", "--heal-s", "2:4", "--settle", "8", "--final-timeout", "60"),
        env=harness_env(), capture_output=True, text=True, timeout=280,
    )
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    w = results.get("workload_result", {})
    counts = {k: v for k, v in w.items() if not isinstance(v, list)}
    assert res.returncode in (0, 1), f"exit {res.returncode}; checker: {counts}\n{res.stderr[-3000:]}"
    assert results["valid"] is (res.returncode == 0)
    if results["valid"] is False:
        found = w["lost_count"] + w["resurrected_count"] + w["unexpected_count"] + w["revived_count"]
        assert found > 0 and (w["lost"] or w["resurrected"] or w["unexpected"] or w["revived"])
    print(f"deletes smoke: valid={results['valid']} {counts}")
    assert not results["nemesis_errors"], results["nemesis_errors"]
    assert not results["node_crashes"], results["node_crashes"]
    assert not results["unreadable_keys"]
    schedule = results["schedule"]
    assert {f["kind"] for f in schedule} == {"lose-unsynced", "ring"}
    assert w["acknowledged_count"] > 0 and w["deletes_acknowledged"] > 0

    events = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    # A key re-added blindly after an acked delete of it (what the workload is for).
    deleted_at: dict[str, int] = {}
    readded = 0
    for e in events:
        if isinstance(e["process"], int) and e["type"] == "ok":
            if e["f"] == "delete":
                deleted_at.setdefault(e["key"], e["time"])
            elif e["f"] == "add" and e["key"] in deleted_at:
                readded += 1
    assert readded > 0
    finals = {e["key"] for e in events if str(e["process"]).startswith("final") and e["type"] == "ok"}
    assert finals == {f"del-{i}" for i in range(6)}, "every key read at R=N after healing"

    logs = {p.stem: p.read_text(errors="replace") for p in (out / "nodes").glob("n*.log")}
    for f in schedule:
        if f["kind"] == "lose-unsynced":
            for i in f["nodes"]:
                log = logs[f"n{i + 1}"]
                assert "with KV_TEST_LOSE_UNSYNCED=1" in log and "TEST fault mode" in log
        if f["kind"] == "ring":
            log = logs[f"n{f['nodes'][0] + 1}"]
            left = log.index("has left the ring")
            assert "joined the cluster" in log[left:], "the leaver must have joined again"
    # Only the nemesis's targets ever ran in the power-loss mode.
    targets = {f"n{i + 1}" for f in schedule if f["kind"] == "lose-unsynced" for i in f["nodes"]}
    assert {n for n, log in logs.items() if "KV_TEST_LOSE_UNSYNCED=1" in log} == targets


def _start_and_wait_for_test_phase(out: Path, reaper: list[subprocess.Popen[bytes]]) -> tuple[subprocess.Popen[bytes], str]:
    p = subprocess.Popen(
        harness(out, "--nodes", "3", "--workload", "independent", "--nemesis", "partition", "--time", "120",
                "--concurrency", "2", "--rate", "20", "--seed", "1", "--settle", "1"),
        env=harness_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    reaper.append(p)
    ns = str(wait_until(lambda: (ours(p.pid) or [None])[0], 30, "the run's namespace"))

    def testing() -> bool:
        h = out / "history.jsonl"
        return h.exists() and h.stat().st_size > 0

    wait_until(testing, 60, "the first operations in the history")
    return p, ns


@needs_netns
@pytest.mark.timeout(300)
def test_ctrl_c_still_checks_and_leaves_nothing_behind(tmp_path: Path, reaper: list[subprocess.Popen[bytes]]) -> None:
    out = tmp_path / "run"
    p, ns = _start_and_wait_for_test_phase(out, reaper)
    node_pids = wait_until(lambda: [q for q in pids_in(ns) if " node start " in cmdline(q)], 30, "node pids")
    p.send_signal(signal.SIGINT)
    code = p.wait(timeout=200)
    assert code in (0, 1, 3), code
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["interrupted"] == "SIGINT"
    assert ns not in list_namespaces()
    wait_until(lambda: not any(Path(f"/proc/{q}").exists() for q in node_pids), 10, "nodes gone")  # type: ignore[union-attr]


@needs_netns
@pytest.mark.timeout(300)
def test_a_crashed_harness_leaves_no_namespace_or_node(tmp_path: Path, reaper: list[subprocess.Popen[bytes]]) -> None:
    out = tmp_path / "run"
    p, ns = _start_and_wait_for_test_phase(out, reaper)
    inside = wait_until(lambda: [q for q in pids_in(ns) if "jepsen_lite.cli" in cmdline(q)], 30, "the inner harness")
    node_pids = [q for q in pids_in(ns) if " node start " in cmdline(q)]
    assert node_pids
    os.kill(inside[0], signal.SIGKILL)  # type: ignore[index]
    code = p.wait(timeout=60)
    assert code != 0
    assert ns not in list_namespaces()
    wait_until(lambda: not any(Path(f"/proc/{q}").exists() for q in node_pids), 10, "nodes gone")
    assert not Path(f"/dev/shm/jepsen-lite-{ns}").exists()


@pytest.mark.skipif(find_libfaketime() is None, reason="the clock nemesis needs libfaketime (Debian package faketime)")
def test_clock_nemesis_environment_shifts_the_wall_clock_only(tmp_path: Path) -> None:
    cluster = Cluster(["127.0.0.1:1"], tmp_path, kv_cmd=["true"])
    node = cluster.nodes[0]
    node.clock_offset_s = -120.0
    env = cluster._env(node)
    probe = "import time; print(time.time(), time.monotonic())"
    real_wall, real_mono = time.time(), time.monotonic()
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    wall, mono = (float(x) for x in out.stdout.split())
    assert -130 < wall - real_wall < -110, "the wall clock must be skewed"
    assert abs(mono - real_mono) < 10, "the monotonic clock must stay true"
    node.clock_offset_s = 0.0
    assert "LD_PRELOAD" not in cluster._env(node) or "faketime" not in cluster._env(node)["LD_PRELOAD"]
