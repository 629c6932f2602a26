"""One run, end to end, in whatever network namespace this process is in:

    cluster up -> clients + nemesis for --time seconds -> stop clients -> heal everything
    -> settle -> final read of every key at R=N -> cluster down -> check -> report

Exit status: 0 valid, 1 invalid (something acknowledged was lost, or worse), 3 the history
cannot decide (e.g. a key could not be read at the end), 4 the harness itself failed.
A first Ctrl-C ends the test phase early and still heals, reads, checks and reports; a
second one aborts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jepsen_lite import __version__
from jepsen_lite.checker import check
from jepsen_lite.cluster import Cluster
from jepsen_lite.errors import HarnessError
from jepsen_lite.history import History
from jepsen_lite.nemesis import Nemesis
from jepsen_lite.netns import Firewall, node_address, probe_link
from jepsen_lite.progress import Progress, Stats
from jepsen_lite.report import write_report, write_results
from jepsen_lite.schedule import PARTITIONS, Timing, make_schedule
from jepsen_lite.workloads import Counter, Ctx, final_reads, make_workload
from kvstore.client import AsyncClient
from kvstore.config import LOCAL_TIMINGS

__all__ = ["EXIT", "RunConfig", "run"]

EXIT = {"valid": 0, "invalid": 1, "usage": 2, "unknown": 3, "harness": 4, "aborted": 130}

# The deletes workload wants tombstones collected, and anti-entropy run, many times within a
# run: a grace of seconds, not an hour. Hints must expire before the grace does (a hint
# delivered after its key's tombstone was collected would bring the value back), so their
# age limit is shorter still. --node-opt overrides any of these.
DELETES_SETTINGS = {"tombstone_grace_s": 5.0, "hint_max_age_s": 2.0, "max_clock_skew_s": 1.0, "aae_interval_s": 1.0}
# The ring nemesis wants handed-off partitions dropped soon after each change commits, so a
# restart right after a change meets the drop as well as the handoff.
RING_SETTINGS = {"handoff_drop_delay_s": 2.0}


@dataclass
class RunConfig:
    nodes: int = 5
    workload: str = "set"
    nemeses: list[str] = field(default_factory=lambda: ["partition", "kill", "pause"])
    time_s: float = 300.0
    concurrency: int = 10
    seed: int = 0
    out: Path = Path("store/run")
    conflict: str = "siblings"
    rate: float = 40.0
    keys: int = 16
    settle_s: float = 10.0
    final_timeout_s: float = 120.0
    client_timeout_s: float = 2.0
    timing: Timing = field(default_factory=Timing)
    partitions: list[str] = field(default_factory=lambda: list(PARTITIONS))
    n_replicas: int | None = None
    r: int | None = None
    w: int | None = None
    node_opts: dict[str, str] = field(default_factory=dict)
    kv_cmd: list[str] | None = None
    netns: str | None = None
    min_acked: int = 0
    client_routing: bool = True
    base_port: int = 7000
    command: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.n_replicas or min(3, self.nodes)


def _free_ports(host: str, count: int) -> list[int]:
    """Ports free for both TCP and UDP on host (nodes use both on the same number)."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            t = socket.socket()
            t.bind((host, 0))
            port = t.getsockname()[1]
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.bind((host, port))
            except OSError:
                t.close()
                u.close()
                continue
            held += [t, u]
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def _addresses(cfg: RunConfig) -> list[str]:
    if cfg.netns:
        return [f"{node_address(i)}:{cfg.base_port}" for i in range(cfg.nodes)]
    return [f"127.0.0.1:{p}" for p in _free_ports("127.0.0.1", cfg.nodes)]


def preflight_partition(fw: Firewall) -> str:
    """Prove that a DROP rule really stops traffic between two node addresses, and that
    healing restores it, before trusting any partition the run makes."""
    a, b = node_address(0), node_address(1)
    if not probe_link(a, b):
        raise HarnessError(f"preflight: {a} cannot reach {b} even with no rule")
    fw.cut([(a, b), (b, a)])
    try:
        if probe_link(a, b, timeout_s=0.5):
            raise HarnessError(f"preflight: {a} still reaches {b} through a partition rule")
    finally:
        fw.heal()
    if not probe_link(a, b):
        raise HarnessError(f"preflight: {a} cannot reach {b} after healing")
    return f"a DROP rule stopped TCP {a} -> {b}; healing restored it"


def _shm_dir(cfg: RunConfig) -> Path:
    base = Path("/dev/shm")
    tag = cfg.netns or f"pid{os.getpid()}"
    return base / f"jepsen-lite-{tag}" if base.is_dir() else cfg.out / "shm"


def kvstore_revision() -> str:
    """The commit of the kvstore source the nodes run (nodes restarted mid-run load whatever
    is on disk then, so a run's figures belong to this revision only if it stays clean)."""
    import subprocess

    import kvstore

    root = Path(kvstore.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "kvstore", "storage", "cli"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def _verdict_word(valid: Any) -> str:
    return "valid" if valid is True else "invalid" if valid is False else "unknown"


async def run(cfg: RunConfig) -> int:
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    stats = Stats()
    progress = Progress(stats, cfg.time_s)
    for w in cfg.warnings:
        progress.log(w, style="bold red")
    firewall = Firewall() if cfg.netns else None
    preflight = None
    if firewall is not None and "partition" in cfg.nemeses:
        try:
            preflight = await asyncio.to_thread(preflight_partition, firewall)
        except HarnessError as e:
            progress.log(f"harness error: {e}", style="bold red")
            (out / "error.txt").write_text(str(e) + "\n")
            return EXIT["harness"]
        progress.log(f"partition preflight ok: {preflight}")
    schedule = make_schedule(cfg.seed, cfg.nodes, cfg.nemeses, cfg.time_s, cfg.timing, cfg.partitions)
    (out / "schedule.json").write_text(json.dumps([f.to_json() for f in schedule], indent=1) + "\n")
    cfg_doc = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    (out / "config.json").write_text(json.dumps(cfg_doc, indent=1, default=str) + "\n")

    revision = await asyncio.to_thread(kvstore_revision)
    shm = _shm_dir(cfg)
    shm.mkdir(parents=True, exist_ok=True)
    n = cfg.n
    node_settings: dict[str, Any] = {
        **LOCAL_TIMINGS,  # failure detection for one machine; --node-opt overrides
        "n_replicas": n,
        "r": cfg.r or min(2, n),
        "w": cfg.w or min(2, n),
        "conflict": cfg.conflict,
        "snapshot_dir": str(shm),
        **(DELETES_SETTINGS if cfg.workload == "deletes" else {}),
        **(RING_SETTINGS if "ring" in cfg.nemeses else {}),
        **cfg.node_opts,
    }
    cluster = Cluster(_addresses(cfg), out / "nodes", settings=node_settings, kv_cmd=cfg.kv_cmd)
    history = History(out / "history.jsonl")
    crashes: list[str] = []
    interrupted: list[str] = []
    loop = asyncio.get_running_loop()
    end_early = asyncio.Event()

    main_task = asyncio.current_task()

    def on_signal(signame: str) -> None:
        if not interrupted:
            interrupted.append(signame)
            progress.log(f"{signame}: ending the test phase early (again to abort)", style="yellow")
            end_early.set()
        elif main_task is not None:
            main_task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)

    code: int | None = None
    try:
        stats.phase = "cluster"
        progress.log(f"starting {cfg.nodes} nodes: {', '.join(cluster.addrs)}")
        await cluster.start_all()
        results = await _drive(cfg, cluster, firewall, history, schedule, stats, progress, crashes, end_early)
    except HarnessError as e:
        progress.stop()
        progress.log(f"harness error: {e}", style="bold red")
        (out / "error.txt").write_text(str(e) + "\n")
        code = EXIT["harness"]
    except asyncio.CancelledError:
        if main_task is not None:
            main_task.uncancel()
        progress.stop()
        progress.log("aborted: nodes killed, no verdict", style="bold red")
        for node in cluster.nodes:
            cluster.kill(node)
        code = EXIT["aborted"]
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        history.close()
        # Whatever happened, no node outlives the run.
        exit_codes = await asyncio.to_thread(cluster.stop_all)
        cluster.close_logs()
        shutil.rmtree(shm, ignore_errors=True)
    if code is not None:
        return code

    results["run"] = {
        "command": cfg.command,
        "jepsen_lite": __version__,
        "kvstore_revision": revision,
        "nodes": cfg.nodes,
        "workload": cfg.workload,
        "nemeses": ",".join(cfg.nemeses) or "none",
        "conflict": cfg.conflict,
        "N/R/W": f"{n}/{node_settings['r']}/{node_settings['w']}",
        "time_s": cfg.time_s,
        "concurrency": cfg.concurrency,
        "rate_ops_s": cfg.rate,
        "client_routing": "preference list" if cfg.client_routing else "own node first",
        "seed": cfg.seed,
        "network": f"namespace {cfg.netns}" if cfg.netns else "host loopback (no partitions)",
        "partition_preflight": preflight or "-",
        "host": platform.node(),
        "interrupted": interrupted[0] if interrupted else "no",
    }
    results["node_exit_codes"] = exit_codes
    results["node_crashes"] = crashes
    results["warnings"] = list(cfg.warnings)
    acked = results["workload_result"].get("acknowledged_count", 0)
    if results["valid"] is True and acked < cfg.min_acked:
        results["valid"] = "unknown"
        results["warnings"].append(f"only {acked} acknowledged operations; --min-acked asks for {cfg.min_acked}")
    write_results(out, results)
    write_report(out, history.events, results)
    _summary(progress, results, out)
    return EXIT[_verdict_word(results["valid"])]


async def _drive(
    cfg: RunConfig, cluster: Cluster, firewall: Firewall | None, history: History,
    schedule: list[Any], stats: Stats, progress: Progress, crashes: list[str], end_early: asyncio.Event,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    counter = Counter()
    workload = make_workload(cfg.workload, counter, keys=cfg.keys)

    def on_fault(label: str | None) -> None:
        stats.fault = label
        if label:
            progress.log(f"{history.now() / 1e9:7.1f}s  fault: {label}")
        else:
            progress.log(f"{history.now() / 1e9:7.1f}s  healed")

    nemesis = Nemesis(cluster, history, firewall, on_change=on_fault)
    op_timeout = 4 * cfg.client_timeout_s + 2.0
    per_client_rate = cfg.rate / cfg.concurrency if cfg.rate > 0 else 0.0
    t0 = time.monotonic()
    history.t0_ns = time.monotonic_ns()
    t_end = loop.time() + cfg.time_s
    ctxs: list[Ctx] = []

    async def worker(i: int) -> None:
        addrs = cluster.addrs[i % cfg.nodes :] + cluster.addrs[: i % cfg.nodes]
        # Without routing a client talks to "its" node first, as Jepsen binds clients to nodes.
        client = AsyncClient(addrs, timeout_s=cfg.client_timeout_s, route=cfg.client_routing)
        ctx = Ctx(history, i, i, random.Random(f"jepsen-lite client {cfg.seed} {i}"))
        ctxs.append(ctx)
        interval = 1.0 / per_client_rate if per_client_rate else 0.0
        next_t = loop.time() + ctx.rng.uniform(0, interval)
        try:
            while not end_early.is_set():
                delay = next_t - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if loop.time() >= t_end or end_early.is_set():
                    break
                next_t = max(next_t + interval, loop.time())
                try:
                    outcome = await asyncio.wait_for(workload.step(client, ctx), op_timeout)
                except TimeoutError:
                    ctx.abandon(f"no answer within the harness's {op_timeout:.0f}s")
                    outcome = "info"
                stats.count(outcome)
                if outcome == "info":
                    # The abandoned operation may still be in flight: never reuse its process.
                    ctx.process += cfg.concurrency
        finally:
            if ctx.abandon("run ended with the operation in flight"):
                stats.count("info")
            await client.close()

    stats.phase = "test"
    progress.start(t0)
    workers = [asyncio.create_task(worker(i)) for i in range(cfg.concurrency)]
    nem_task = asyncio.create_task(nemesis.run(schedule, t0))
    seen_crashed: set[str] = set()
    try:
        while loop.time() < t_end and not end_early.is_set():
            for node in cluster.exited():
                if node.name not in seen_crashed:
                    seen_crashed.add(node.name)
                    code = node.proc.returncode if node.proc else None
                    msg = f"{node.name} exited by itself with status {code} at {history.now() / 1e9:.1f}s"
                    crashes.append(msg)
                    progress.log(msg, style="bold red")
            if nem_task.done() and nem_task.exception() is not None:
                raise HarnessError(f"nemesis failed: {nem_task.exception()}")
            progress.update()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(end_early.wait(), 0.5)
        end_early.set()
        stats.phase = "draining"
        progress.update()
        _done, late = await asyncio.wait(workers, timeout=op_timeout + 5)
        for t in late:
            t.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    finally:
        nem_task.cancel()
        await asyncio.gather(nem_task, return_exceptions=True)
    stats.phase = "healing"
    progress.update()
    await nemesis.heal_all()
    stats.phase = "settling"
    progress.update()
    await asyncio.sleep(cfg.settle_s)
    stats.phase = "final read"
    progress.stop()
    keys = workload.final_keys()
    progress.log(f"final read of {len(keys)} key(s) at R={cfg.n}")
    client = AsyncClient(cluster.addrs, timeout_s=max(cfg.client_timeout_s, 5.0))
    try:
        unread = await final_reads(client, history, keys, r=cfg.n, deadline=loop.time() + cfg.final_timeout_s,
                                   concurrency=cfg.concurrency, read=getattr(workload, "final_value", None))
    finally:
        await client.close()
    results = check(history.events, cfg.workload)
    results["unreadable_keys"] = unread[:100]
    results["nemesis_errors"] = nemesis.errors
    results["schedule"] = [f.to_json() for f in schedule]
    return results


def _summary(progress: Progress, results: dict[str, Any], out: Path) -> None:
    w = results["workload_result"]
    word = _verdict_word(results["valid"])
    style = {"valid": "bold green", "invalid": "bold red", "unknown": "bold yellow"}[word]
    av = results["availability"]["overall"].get("availability")
    lines = [
        f"verdict: {word.upper()}",
        f"acknowledged {w.get('acknowledged_count', 0)}, lost {w.get('lost_count', 0)}"
        f" ({100 * w.get('lost_fraction', 0):.1f}%), recovered {w.get('recovered_count', 0)},"
        f" unexpected {w.get('unexpected_count', 0)}, revived {w.get('revived_count', 0)}"
        + (f", resurrected {w['resurrected_count']} (keys {w.get('resurrected_keys', [])[:10]})"
           if "resurrected_count" in w else ""),
        f"availability {'-' if av is None else f'{100 * av:.1f}%'} over {results['ops']} ops,"
        f" {results['faults']} fault(s)",
    ]
    if "deletes_acknowledged" in w:
        lines.append(f"deletes acknowledged {w['deletes_acknowledged']}, indeterminate"
                     f" {w['deletes_indeterminate']}, failed {w['deletes_failed']};"
                     f" reads that saw an acked-deleted value {w['reads_of_deleted']} of {w['reads_ok']}")
    if "stale_reads" in w:
        lines.append(f"stale reads {w['stale_reads']} of {w['reads_ok']}, read-your-writes violations"
                     f" {w['read_your_writes_violations']}")
    for c in results.get("node_crashes", []):
        lines.append(f"node crash: {c}")
    lines.append(f"report: {out / 'index.html'}")
    for line in lines:
        progress.log(line, style=style if line.startswith("verdict") else "")
