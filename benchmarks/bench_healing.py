"""Healing on a real 3-node cluster: hint delivery, anti-entropy repair, convergence after an outage.

    python benchmarks/bench_healing.py                          # all three phases, full size
    python benchmarks/bench_healing.py --phase hints --hint-keys 20000
    python benchmarks/bench_healing.py --phase aae --aae-keys 100000 \
        [--aae-interval-s 10 --aae-exchanges-per-min 60 --aae-max-repairs-per-s 2000]
    python benchmarks/bench_healing.py --phase outage --outage-s 60 --rate 2000 [--fault stop|kill]
    python benchmarks/bench_healing.py --quick                  # small sizes, 10 s outage

Each phase starts its own fresh cluster (kvstore.testing.processes.LocalCluster: N=3, R=2,
W=2, Q=256, loopback, SWIM at the harness's fast timings) so phases cannot disturb one
another. With N=3 on 3 nodes every node replicates every partition, and there is no node
outside a preference list: a write for a down replica is hinted on its coordinator.

hints    SIGKILL n3, write --hint-keys keys (W=2; each leaves one hint on its coordinator),
         restart n3 and time: process start -> n3 serving -> first hint delivered -> every
         hint store empty (``cluster.hints`` on every node). hints/s = hints / (last - first
         delivery) and hints / (drained - restart).
aae      hints off (--max-hints 0): stop n3 gracefully, write --aae-keys keys, restart n3 and
         time until every partition's Merkle root agrees on all three nodes (``aae.roots``),
         with the anti-entropy counters of all nodes (keys compared at the leaf stage and
         keys repaired, per second of that time) and each node's CPU%.
outage   a steady write load of --rate puts/s (new keys, W=2) for --pre-s, then n3 is
         SIGSTOPped (or SIGKILLed with --fault kill) for --outage-s while the load goes on,
         then SIGCONT (or restarted); the load stops at the return (or --post-s later). Time
         from the return until hints are drained on every node and all Merkle roots agree.

After the hints and outage phases every acknowledged key is read from n3 alone with
``replica.get`` (its local record, so the check itself repairs nothing) and counted missing
if the value written is not among its siblings.

CPU% is (utime + stime) from /proc/PID/stat over the phase's wall time (100% = one core).
All load is bounded in count and time; the client is kvstore's AsyncClient in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvstore.client import AsyncClient
from kvstore.core import vclock
from kvstore.core.ring import partition_of
from kvstore.errors import KVError
from kvstore.testing.processes import LocalCluster

Q = 256
TICK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.05
RPC_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------- measuring


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuMeter:
    """CPU% of every running node since construction (pids taken now: construct after a
    restart, so the restarted process is the one measured)."""

    def __init__(self, c: LocalCluster) -> None:
        self.pids = {n: p.proc.pid for n, p in c.nodes.items() if p.proc is not None and p.running}
        self.t0 = time.monotonic()
        self.c0 = {n: cpu_seconds(pid) for n, pid in self.pids.items()}

    def percent(self) -> dict[str, float]:
        dt = time.monotonic() - self.t0
        out = {}
        for n, pid in self.pids.items():
            try:
                out[n] = 100.0 * (cpu_seconds(pid) - self.c0[n]) / dt
            except OSError:
                out[n] = float("nan")
        return out


def fmt_cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{n} {v:.0f}%" for n, v in cpu.items())


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def call(kv: AsyncClient, addr: str, method: str, *params: Any) -> Any:
    return await kv.rpc.call(addr, method, list(params), RPC_TIMEOUT_S)


async def try_call(kv: AsyncClient, addr: str, method: str, *params: Any) -> Any:
    try:
        return await kv.rpc.call(addr, method, list(params), 2.0)
    except KVError:
        return None


async def wait_for(
    what: str, pred: Callable[[], Awaitable[Any]], timeout: float, every: float = POLL_S
) -> float:
    """Poll ``pred`` until truthy; returns the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while True:
        if await pred():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


async def hint_state(c: LocalCluster, kv: AsyncClient) -> tuple[int, int]:
    """(hints pending, hints delivered) summed over the running nodes."""
    pending = delivered = 0
    for node in c.nodes.values():
        if not node.running:
            continue
        doc = await try_call(kv, node.addr, "cluster.hints")
        if doc is None:
            return -1, -1  # a node did not answer: unknown, never "drained"
        pending += sum(int(v) for v in doc["pending"].values())
        delivered += int(doc["delivered"])
    return pending, delivered


async def roots_agree(c: LocalCluster, kv: AsyncClient) -> bool:
    rs = []
    for node in c.nodes.values():
        r = await try_call(kv, node.addr, "aae.roots", list(range(Q)))
        if r is None or None in r:
            return False
        rs.append(r)
    return all(r == rs[0] for r in rs)


async def aae_totals(c: LocalCluster, kv: AsyncClient) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in c.nodes.values():
        st = await call(kv, node.addr, "aae.status")
        for k in ("exchanges", "exchange_errors", "keys_compared", "keys_repaired", "root_checks"):
            out[k] = out.get(k, 0) + int(st[k])
    return out


async def ping_ok(kv: AsyncClient, addr: str) -> bool:
    return await try_call(kv, addr, "ping") is not None


async def members_up(
    c: LocalCluster, kv: AsyncClient, observers: list[str], target: str, up: bool
) -> bool:
    """Every observer's cluster view says ``target`` is up (or down)."""
    for o in observers:
        st = await try_call(kv, c.nodes[o].addr, "cluster.status")
        if st is None:
            return False
        m = [x for x in st["members"] if x["name"] == target]
        if not m or bool(m[0]["up"]) != up:
            return False
    return True


def key_of(prefix: str, i: int) -> bytes:
    return f"{prefix}{i:08d}".encode()


def value_of(key: bytes) -> bytes:
    return b"v-" + key + b"-" + b"x" * 64


async def write_keys(
    kv: AsyncClient, keys: list[bytes], concurrency: int = 128
) -> tuple[float, int]:
    """Write every key once with W=2; returns (seconds, failures)."""
    sem = asyncio.Semaphore(concurrency)
    failed = 0

    async def put(k: bytes) -> None:
        nonlocal failed
        async with sem:
            try:
                await kv.put(k, value_of(k), w=2)
            except KVError:
                failed += 1

    t0 = time.monotonic()
    await asyncio.gather(*(put(k) for k in keys))
    return time.monotonic() - t0, failed


async def missing_on(kv: AsyncClient, addr: str, keys: list[bytes], concurrency: int = 256) -> int:
    """Keys whose value is not in ``addr``'s own record (replica.get: no coordinator, no
    read repair)."""
    sem = asyncio.Semaphore(concurrency)
    missing = 0

    async def check(k: bytes) -> None:
        nonlocal missing
        async with sem:
            rec = await call(kv, addr, "replica.get", partition_of(k, Q), k)
        if rec is None or value_of(k) not in vclock.values(vclock.decode(bytes(rec))):
            missing += 1

    await asyncio.gather(*(check(k) for k in keys))
    return missing


def cluster(root: Path, extra: list[str]) -> LocalCluster:
    root.mkdir(parents=True, exist_ok=True)
    return LocalCluster(root, nodes=3, n=3, r=2, w=2, extra=["--partitions", str(Q), *extra])


Rows = list[tuple[str, str]]


def print_rows(title: str, rows: Rows) -> None:
    print(f"\n{title}")
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    sys.stdout.flush()


def note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- a) hints


async def phase_hints(c: LocalCluster, args: argparse.Namespace) -> Rows:
    rows: Rows = []
    keys = [key_of("h", i) for i in range(args.hint_keys)]
    async with AsyncClient(c.addrs(), timeout_s=5.0) as kv:
        c.kill("n3")
        await wait_for(
            "n1, n2 to see n3 down", lambda: members_up(c, kv, ["n1", "n2"], "n3", False), 60
        )
        dt, failed = await write_keys(kv, keys)
        rows.append(
            (
                "writes while n3 down (W=2)",
                f"{len(keys)} in {dt:.1f} s ({len(keys) / dt:,.0f}/s), {failed} failed",
            )
        )
        pending0, delivered0 = await hint_state(c, kv)
        rows.append(("hints pending before restart", f"{pending0}"))

        c.start("n3", wait=False)
        meter = CpuMeter(c)
        t0 = time.monotonic()
        t_serve = await wait_for("n3 to serve", lambda: ping_ok(kv, c.nodes["n3"].addr), 60, 0.01)
        first: list[float] = []
        seen = [delivered0]

        async def drained() -> bool:
            pending, delivered = await hint_state(c, kv)
            now = time.monotonic()
            if delivered > seen[0]:
                if not first:
                    first.append(now)
                seen[0] = delivered
            return pending == 0

        t_done = await wait_for("every hint store to drain", drained, args.timeout_s)
        cpu = meter.percent()
        delivered = seen[0] - delivered0
        t_first = first[0] if first else t_done
        rows.append(("n3 serving after restart", f"{t_serve - t0:.2f} s"))
        rows.append(("first hint delivered", f"{t_first - t0:.2f} s after restart"))
        rows.append(
            ("all hint stores empty", f"{t_done - t0:.2f} s after restart ({delivered} delivered)")
        )
        # From n3 serving, not from the first delivery seen: a poll every 50 ms can first
        # see a delivery when much has already gone.
        span = max(t_done - t_serve, 1e-9)
        rows.append(
            (
                "delivery rate, n3 serving to drained",
                f"{delivered / span:,.0f} hints/s over {span:.2f} s",
            )
        )
        rows.append(
            ("delivery rate, restart to drained", f"{delivered / (t_done - t0):,.0f} hints/s")
        )
        rows.append(("CPU% restart to drained", fmt_cpu(cpu)))
        missing = await missing_on(kv, c.nodes["n3"].addr, keys)
        rows.append(("keys missing on n3 afterwards", f"{missing} of {len(keys)}"))
    return rows


# ---------------------------------------------------------------------- b) anti-entropy


async def phase_aae(c: LocalCluster, args: argparse.Namespace) -> Rows:
    rows: Rows = []
    keys = [key_of("a", i) for i in range(args.aae_keys)]
    async with AsyncClient(c.addrs(), timeout_s=5.0) as kv:
        if args.aae_base_keys:
            base = [key_of("b", i) for i in range(args.aae_base_keys)]
            dt, failed = await write_keys(kv, base)
            rows.append(("keys in sync beforehand", f"{len(base)} (W=2, {failed} failed)"))
            await wait_for(
                "roots to agree before the test", lambda: roots_agree(c, kv), args.timeout_s, 0.5
            )
        await asyncio.to_thread(c.stop, "n3")
        await wait_for(
            "n1, n2 to see n3 gone", lambda: members_up(c, kv, ["n1", "n2"], "n3", False), 60
        )
        dt, failed = await write_keys(kv, keys)
        rows.append(
            (
                "writes while n3 stopped (W=2, no hints)",
                f"{len(keys)} in {dt:.1f} s ({len(keys) / dt:,.0f}/s), {failed} failed",
            )
        )
        pending, _ = await hint_state(c, kv)
        rows.append(("hints pending (should be 0)", f"{pending}"))

        c.start("n3", wait=False)
        t0 = time.monotonic()
        await wait_for("n3 to serve", lambda: ping_ok(kv, c.nodes["n3"].addr), 60, 0.01)
        meter = CpuMeter(c)
        before = await aae_totals(c, kv)
        t_serve = time.monotonic()
        progress = [t_serve + 10.0]

        async def agreed() -> bool:
            if time.monotonic() >= progress[0]:
                progress[0] += 10.0
                now = await aae_totals(c, kv)
                note(
                    f"aae: {now['keys_repaired'] - before['keys_repaired']} keys repaired, "
                    f"{now['exchanges'] - before['exchanges']} exchanges, {time.monotonic() - t_serve:.0f} s"
                )
            return await roots_agree(c, kv)

        t_done = await wait_for("every Merkle root to agree", agreed, args.timeout_s, 0.25)
        cpu = meter.percent()
        after = await aae_totals(c, kv)
        dt = t_done - t_serve
        d = {k: after[k] - before[k] for k in after}
        rows.append(("n3 serving after restart", f"{t_serve - t0:.2f} s"))
        rows.append(("all roots agree", f"{dt:.1f} s after n3 served"))
        rows.append(("exchanges started (errors)", f"{d['exchanges']} ({d['exchange_errors']})"))
        rows.append(
            (
                "keys compared at leaf stage",
                f"{d['keys_compared']:,} ({d['keys_compared'] / dt:,.0f} keys/s)",
            )
        )
        rows.append(
            ("keys repaired", f"{d['keys_repaired']:,} ({d['keys_repaired'] / dt:,.0f} keys/s)")
        )
        rows.append(("CPU% until agreement", fmt_cpu(cpu)))
        rows.append(
            (
                "CPU s per 1000 keys repaired",
                f"{sum(cpu.values()) / 100 * dt / max(d['keys_repaired'], 1) * 1000:.3f}",
            )
        )
        missing = await missing_on(kv, c.nodes["n3"].addr, keys)
        rows.append(("keys missing on n3 afterwards", f"{missing} of {len(keys)}"))
    return rows


# ---------------------------------------------------------------------- c) outage under load


@dataclass
class LoadStats:
    sent: int = 0
    skipped: int = 0  # due while --max-inflight requests were outstanding: not sent
    acked: list[bytes] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)
    lat: dict[str, list[float]] = field(default_factory=dict)
    errs: dict[str, int] = field(default_factory=dict)
    fail_at: list[float] = field(default_factory=list)  # send times (monotonic) of failures


class Load:
    """Open-loop puts of new keys at ``rate``/s, at most ``cap`` outstanding; each outcome
    is filed under the phase that was current when the put was sent."""

    def __init__(self, kv: AsyncClient, rate: float, cap: int) -> None:
        self.kv = kv
        self.rate = rate
        self.cap = cap
        self.phase = "before"
        self.stats = LoadStats()
        self.inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def _put(self, k: bytes, phase: str) -> None:
        t = time.monotonic()
        try:
            await self.kv.put(k, value_of(k), w=2)
        except KVError as e:
            self.stats.fail_at.append(t)
            self.stats.failed[phase] = self.stats.failed.get(phase, 0) + 1
            name = f"{phase}:{type(e).__name__}"
            self.stats.errs[name] = self.stats.errs.get(name, 0) + 1
        else:
            self.stats.acked.append(k)
            self.stats.lat.setdefault(phase, []).append(time.monotonic() - t)
        finally:
            self.inflight -= 1

    async def run(self, until: float) -> None:
        t0 = time.monotonic()
        i = 0
        while True:
            now = time.monotonic()
            if now >= until:
                break
            due = int((now - t0) * self.rate) - i
            for _ in range(due):
                i += 1
                if self.inflight >= self.cap:
                    self.stats.skipped += 1
                    continue
                self.inflight += 1
                self.stats.sent += 1
                task = asyncio.ensure_future(self._put(key_of("c", i), self.phase))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(0.01)

    async def settle(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def phase_outage(c: LocalCluster, args: argparse.Namespace) -> Rows:
    rows: Rows = []
    async with (
        AsyncClient(c.addrs(), timeout_s=5.0) as kv,
        AsyncClient(c.addrs(), timeout_s=5.0) as probe,
    ):
        load = Load(kv, args.rate, args.max_inflight)
        start = time.monotonic()
        t_fault = start + args.pre_s
        t_back = t_fault + args.outage_s
        runner = asyncio.ensure_future(load.run(t_back + args.post_s))
        await asyncio.sleep(max(0.0, t_fault - time.monotonic()))
        load.phase = "outage"
        if args.fault == "stop":
            c.kill("n3", signal.SIGSTOP)
        else:
            await asyncio.to_thread(c.kill, "n3")
        note(
            f"n3 {'SIGSTOPped' if args.fault == 'stop' else 'SIGKILLed'}; load goes on for {args.outage_s:.0f} s"
        )
        t_fault_real = time.monotonic()
        seen_down: list[float] = []
        try:
            seen_down.append(
                await wait_for(
                    "n1, n2 to see n3 down",
                    lambda: members_up(c, probe, ["n1", "n2"], "n3", False),
                    max(0.0, t_back - time.monotonic() - 0.5),
                    0.1,
                )
            )
        except TimeoutError:
            pass
        await asyncio.sleep(max(0.0, t_back - time.monotonic()))
        load.phase = "after"
        if args.fault == "stop":
            c.kill("n3", signal.SIGCONT)
        else:
            c.start("n3", wait=False)
        t_ret = time.monotonic()
        note("n3 back")
        meter = CpuMeter(c) if args.fault == "stop" else None
        t_serve = await wait_for(
            "n3 to answer", lambda: ping_ok(probe, c.nodes["n3"].addr), 120, 0.01
        )
        if meter is None:
            meter = CpuMeter(c)
        await runner
        t_load_end = time.monotonic()
        pending_at_return = [-1]
        t_drained: list[float] = []
        t_agree: list[float] = []
        next_note = [time.monotonic() + 10.0]

        async def converged() -> bool:
            pending, _ = await hint_state(c, probe)
            if pending_at_return[0] < 0:
                pending_at_return[0] = pending
            now = time.monotonic()
            if pending == 0 and not t_drained:
                t_drained.append(now)
            agree = await roots_agree(c, probe) if now >= t_load_end else False
            if agree and not t_agree:
                t_agree.append(time.monotonic())
            if now >= next_note[0]:
                next_note[0] += 10.0
                note(
                    f"outage: {now - t_ret:.0f} s after return, {pending} hints pending, roots agree: {agree}"
                )
            return pending == 0 and agree

        t_conv = await wait_for("hints drained and roots agreeing", converged, args.timeout_s, 0.25)
        cpu = meter.percent()
        await load.settle()
        st = load.stats
        elapsed = t_back + args.post_s - start
        rows.append(
            (
                "load",
                f"{args.rate:.0f} puts/s offered for {elapsed:.0f} s: {st.sent} sent, "
                f"{len(st.acked)} acked, {sum(st.failed.values())} failed, {st.skipped} not sent (cap {args.max_inflight})",
            )
        )
        for ph in ("before", "outage", "after"):
            lat = st.lat.get(ph, [])
            if lat or st.failed.get(ph):
                rows.append(
                    (
                        f"  puts {ph}",
                        f"{len(lat)} acked, {st.failed.get(ph, 0)} failed; latency p50 "
                        f"{pct(lat, 0.5) * 1e3:.1f} ms, p99 {pct(lat, 0.99) * 1e3:.1f} ms, max {max(lat, default=0) * 1e3:.0f} ms",
                    )
                )
        if st.errs:
            rows.append(("  errors", ", ".join(f"{k} {v}" for k, v in sorted(st.errs.items()))))
            # Where in the run the failed puts were sent: 10 s windows from the fault on.
            win: dict[int, int] = {}
            for t in st.fail_at:
                w = int((t - t_fault) // 10)
                win[w] = win.get(w, 0) + 1
            rows.append(
                (
                    "  failed puts by send time",
                    ", ".join(
                        f"{w * 10:+d}..{w * 10 + 10:+d} s: {n}" for w, n in sorted(win.items())
                    )
                    + " (relative to the fault)",
                )
            )
        down = (
            f"{seen_down[0] - t_fault_real:.2f} s after the fault"
            if seen_down
            else "not within the outage"
        )
        rows.append(("n1, n2 see n3 down", down))
        rows.append(("n3 answering after its return", f"{t_serve - t_ret:.2f} s"))
        rows.append(("hints pending when first polled", f"{pending_at_return[0]}"))
        drained = t_drained[0] - t_ret if t_drained else float("nan")
        agree = t_agree[0] - t_ret if t_agree else float("nan")
        rows.append(("hints drained on every node", f"{drained:.2f} s after return"))
        rows.append(
            (
                "all Merkle roots agree",
                f"{agree:.2f} s after return (load ended {t_load_end - t_ret:.1f} s after return)",
            )
        )
        rows.append(("converged (both)", f"{t_conv - t_ret:.2f} s after return"))
        rows.append(("CPU% return to converged", fmt_cpu(cpu)))
        totals = await aae_totals(c, probe)
        rows.append(("anti-entropy keys repaired (whole run)", f"{totals['keys_repaired']}"))
        t = time.monotonic()
        missing = await missing_on(probe, c.nodes["n3"].addr, st.acked)
        rows.append(
            (
                "acked keys missing on n3",
                f"{missing} of {len(st.acked)} (checked in {time.monotonic() - t:.1f} s)",
            )
        )
    return rows


# ---------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--phase", default="hints,aae,outage", help="comma-separated: hints, aae, outage"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: 2k hints, 10k AAE keys, 10 s outage at 500/s",
    )
    ap.add_argument("--hint-keys", type=int, default=20_000)
    ap.add_argument("--aae-keys", type=int, default=100_000)
    ap.add_argument(
        "--aae-base-keys",
        type=int,
        default=0,
        help="keys written (and in sync) before the divergence",
    )
    ap.add_argument(
        "--aae-interval-s", type=float, default=None, help="node setting; default: the node's"
    )
    ap.add_argument("--aae-exchanges-per-min", type=int, default=None)
    ap.add_argument("--aae-max-repairs-per-s", type=int, default=None)
    ap.add_argument("--outage-s", type=float, default=60.0)
    ap.add_argument("--pre-s", type=float, default=10.0, help="load before the fault")
    ap.add_argument("--post-s", type=float, default=0.0, help="load after the return")
    ap.add_argument("--rate", type=float, default=2000.0, help="puts/s offered in the outage phase")
    ap.add_argument("--max-inflight", type=int, default=20_000)
    ap.add_argument("--fault", choices=("stop", "kill"), default="stop")
    ap.add_argument("--fsync", default="everysec")
    ap.add_argument(
        "--timeout-s", type=float, default=900.0, help="longest wait for any one condition"
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the cluster directory (logs) and print it"
    )
    args = ap.parse_args()
    if args.quick:
        args.hint_keys, args.aae_keys, args.outage_s, args.rate, args.pre_s = (
            2000,
            10_000,
            10.0,
            500.0,
            3.0,
        )
    phases = [p.strip() for p in args.phase.split(",") if p.strip()]
    aae_flags: list[str] = []
    for flag in ("aae_interval_s", "aae_exchanges_per_min", "aae_max_repairs_per_s"):
        v = getattr(args, flag)
        if v is not None:
            aae_flags += ["--" + flag.replace("_", "-"), str(v)]
    base = ["--fsync", args.fsync, *aae_flags]
    settings = " ".join(aae_flags) or "node defaults for anti-entropy"
    print(
        f"3 nodes, N=3 R=2 W=2, Q={Q}, fsync {args.fsync}; {settings}; load average {os.getloadavg()[0]:.1f}"
    )

    root = Path(tempfile.mkdtemp(prefix="kv-bench-healing-"))
    runs: dict[
        str,
        tuple[
            list[str], Callable[[LocalCluster, argparse.Namespace], Coroutine[Any, Any, Rows]], str
        ],
    ] = {
        "hints": ([], phase_hints, f"a) hint delivery: {args.hint_keys} hints for a SIGKILLed n3"),
        "aae": (
            ["--max-hints", "0"],
            phase_aae,
            f"b) anti-entropy: {args.aae_keys} keys missed by n3, hints off",
        ),
        "outage": (
            [],
            phase_outage,
            f"c) {args.outage_s:.0f} s outage of n3 ({args.fault}) under {args.rate:.0f} puts/s",
        ),
    }
    try:
        for ph in phases:
            extra, fn, title = runs[ph]
            with cluster(root / ph, [*base, *extra]) as c:
                c.start_all()
                note(f"phase {ph}: cluster up")
                t0 = time.monotonic()
                rows: Rows = asyncio.run(fn(c, args))
                rows.append(("phase wall time", f"{time.monotonic() - t0:.0f} s"))
            print_rows(title, rows)
    finally:
        if args.keep:
            print(f"cluster directories kept in {root}")
        else:
            import shutil

            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
