"""The `jepsen-lite` command.

    jepsen-lite run --nodes 5 --workload set --nemesis partition,kill,pause --time 300 \\
                    --concurrency 10 --seed 7 --out store/<timestamp>/
    jepsen-lite check store/<run>/history.jsonl --workload set     # re-judge a history
    jepsen-lite report store/<run>/                                 # rebuild index.html
    jepsen-lite summary store/*/                                    # markdown table of runs
    jepsen-lite cleanup                                             # stale namespaces

As root with `ip` and `iptables`, `run` puts the cluster in a private network namespace
(partitions are iptables rules in there; the host is never touched). Otherwise it runs on
plain loopback and says loudly that partitions are unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jepsen_lite.checker import WORKLOADS, check
from jepsen_lite.history import read_history
from jepsen_lite.schedule import NEMESES, PARTITIONS, Timing

if TYPE_CHECKING:
    from jepsen_lite.runner import RunConfig

__all__ = ["main"]

EXIT_USAGE = 2


def _range(text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition(":")
    try:
        a = float(lo)
        b = float(hi) if sep else a
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN:MAX seconds") from None
    if not 0 < a <= b:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 < MIN <= MAX")
    return a, b


def _csv(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip() and x.strip() != "none"]
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(choices)}")
        return items
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jepsen-lite", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a test end to end; exit 0 only if the history is valid")
    r.add_argument("--nodes", type=int, default=5, help="cluster size (default 5)")
    r.add_argument("--workload", choices=WORKLOADS, default="set")
    r.add_argument("--nemesis", type=_csv(NEMESES), default=["partition", "kill", "pause"],
                   help=f"comma-separated faults from {','.join(NEMESES)}, or none (default partition,kill,pause)")
    r.add_argument("--partitions", type=_csv(PARTITIONS), default=list(PARTITIONS),
                   help="partition shapes to draw from (default: all)")
    r.add_argument("--time", type=float, default=300.0, help="seconds of test phase (default 300)")
    r.add_argument("--concurrency", type=int, default=10, help="concurrent clients (default 10)")
    r.add_argument("--rate", type=float, default=40.0, help="target ops/s over all clients, 0 = flat out (default 40)")
    r.add_argument("--seed", type=int, default=None, help="seed of the schedule and the clients (default: random)")
    r.add_argument("--out", type=Path, default=None, help="output folder (default store/<timestamp>/)")
    r.add_argument("--secret-file", default=None,
                   help="cluster secret for the nodes and the clients (default: env KV_SECRET_FILE)")
    r.add_argument("--conflict", choices=("siblings", "lww"), default="siblings",
                   help="the cluster's conflict mode (default siblings)")
    r.add_argument("--keys", type=int, default=16, help="register and deletes workloads: number of keys (default 16); counters and sets use at most 4")
    r.add_argument("--n-replicas", type=int, default=None, help="N (default min(3, nodes))")
    r.add_argument("--r", type=int, default=None, help="R (default min(2, N))")
    r.add_argument("--w", type=int, default=None, help="W (default min(2, N))")
    r.add_argument("--fault-s", type=_range, default=(10.0, 30.0), metavar="MIN:MAX", help="fault durations (default 10:30)")
    r.add_argument("--heal-s", type=_range, default=(5.0, 15.0), metavar="MIN:MAX", help="healthy gaps (default 5:15)")
    r.add_argument("--clock-s", type=_range, default=(2.0, 300.0), metavar="MIN:MAX",
                   help="clock skew magnitude, either sign (default 2:300)")
    r.add_argument("--settle", type=float, default=10.0, help="seconds between healing and the final read (default 10)")
    r.add_argument("--final-timeout", type=float, default=120.0, help="seconds to keep retrying final reads (default 120)")
    r.add_argument("--client-timeout", type=float, default=2.0, help="client request timeout (default 2)")
    r.add_argument("--no-client-routing", action="store_true",
                   help="clients send to their own node first (Jepsen-style) instead of the key's replicas")
    r.add_argument("--min-acked", type=int, default=0, help="verdict is unknown unless at least this many ops were acked")
    r.add_argument("--node-opt", action="append", default=[], metavar="SETTING=VALUE",
                   help="extra node setting, e.g. fsync=always (repeatable)")
    r.add_argument("--kv", default=None, help="command that runs kv (default: the kv beside this python)")
    r.add_argument("--no-netns", action="store_true", help="stay on host loopback even as root (no partitions)")
    r.add_argument("--base-port", type=int, default=7000, help="node port inside the namespace (default 7000)")

    c = sub.add_parser("check", help="judge a history file again")
    c.add_argument("history", type=Path)
    c.add_argument("--workload", choices=WORKLOADS, required=True)

    rep = sub.add_parser("report", help="rebuild index.html and results.json of a run folder")
    rep.add_argument("dir", type=Path)

    sm = sub.add_parser("summary", help="a markdown table of the verdicts of run folders")
    sm.add_argument("dirs", type=Path, nargs="+")

    sub.add_parser("cleanup", help="remove namespaces left by killed runs")
    return p


def _config(a: argparse.Namespace, argv: Sequence[str]) -> RunConfig:
    from jepsen_lite.runner import RunConfig

    opts: dict[str, str] = {}
    for item in a.node_opt:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SystemExit(f"jepsen-lite: --node-opt {item!r}: expected SETTING=VALUE")
        opts[k.replace("-", "_")] = v
    return RunConfig(
        nodes=a.nodes, workload=a.workload, nemeses=a.nemesis, time_s=a.time, concurrency=a.concurrency,
        seed=a.seed, out=a.out, conflict=a.conflict, rate=a.rate, keys=a.keys, settle_s=a.settle,
        final_timeout_s=a.final_timeout, client_timeout_s=a.client_timeout,
        timing=Timing(fault_min_s=a.fault_s[0], fault_max_s=a.fault_s[1], heal_min_s=a.heal_s[0],
                      heal_max_s=a.heal_s[1], tail_s=max(5.0, a.heal_s[0]),
                      clock_min_s=a.clock_s[0], clock_max_s=a.clock_s[1]),
        partitions=a.partitions, n_replicas=a.n_replicas, r=a.r, w=a.w, node_opts=opts,
        kv_cmd=shlex.split(a.kv) if a.kv else None, netns=os.environ.get("JEPSEN_LITE_NETNS"),
        min_acked=a.min_acked, base_port=a.base_port, client_routing=not a.no_client_routing,
        command="jepsen-lite run " + " ".join(shlex.quote(x) for x in argv),
    )


def _run(a: argparse.Namespace, argv: list[str]) -> int:
    from jepsen_lite.netns import can_partition
    from jepsen_lite.supervisor import INSIDE_ENV, run_in_namespace

    if a.nodes < 1 or a.concurrency < 1 or a.time <= 0:
        print("jepsen-lite: --nodes, --concurrency and --time must be positive", file=sys.stderr)
        return EXIT_USAGE
    # Fix the seed and the output folder once, so the re-exec'd child uses the same ones.
    if a.seed is None:
        a.seed = int.from_bytes(os.urandom(4), "big") % 1_000_000
        argv += ["--seed", str(a.seed)]
    if a.out is None:
        a.out = Path("store") / time.strftime("%Y%m%dT%H%M%S")
        argv += ["--out", str(a.out)]
    inside = os.environ.get(INSIDE_ENV)
    if not inside and not a.no_netns:
        ok, why = can_partition()
        if ok:
            return run_in_namespace(["run", *argv], a.nodes)
    warnings: list[str] = []
    if not inside and "partition" in a.nemesis:
        why = "--no-netns was given" if a.no_netns else can_partition()[1]
        msg = (f"WARNING: the partition nemesis is UNAVAILABLE ({why}); running on plain loopback "
               "WITHOUT partitions. Run as root with ip and iptables installed to get them.")
        print("!" * 78 + "\n" + msg + "\n" + "!" * 78, file=sys.stderr)
        a.nemesis = [x for x in a.nemesis if x != "partition"]
        warnings.append(msg)
    cfg = _config(a, argv)
    cfg.warnings.extend(warnings)
    from jepsen_lite.runner import run

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        return asyncio.run(run(cfg))
    except KeyboardInterrupt:
        return 130
    except Exception:
        # A harness bug must not exit 1, which means "the store lost data".
        traceback.print_exc()
        return 4


def _check(a: argparse.Namespace) -> int:
    res = check(read_history(a.history), a.workload)
    w = res["workload_result"]
    print(json.dumps({k: v for k, v in w.items() if not isinstance(v, list)}, indent=1))
    print(f"valid: {res['valid']}")
    return 0 if res["valid"] is True else 1 if res["valid"] is False else 3


def _report(a: argparse.Namespace) -> int:
    from jepsen_lite.report import write_report, write_results

    results = json.loads((a.dir / "results.json").read_text())
    events = read_history(a.dir / "history.jsonl")
    fresh = check(events, results["workload"])
    results.update({k: v for k, v in fresh.items() if k != "valid"})
    write_results(a.dir, results)
    print(write_report(a.dir, events, results))
    return 0


def _summary(a: argparse.Namespace) -> int:
    print("| run | workload | conflict | faults | kvstore | acked | lost | lost % | availability | verdict |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for d in a.dirs:
        path = d / "results.json"
        if not path.exists():
            print(f"| {d.name} | no results.json | | | | | | | | |")
            continue
        r = json.loads(path.read_text())
        w, run = r["workload_result"], r.get("run", {})
        av = r["availability"]["overall"].get("availability")
        valid = {True: "valid", False: "INVALID"}.get(r["valid"], str(r["valid"]))
        print(f"| {d.name} | {r['workload']} | {run.get('conflict', '?')} | {run.get('nemeses', '?')} "
              f"| {run.get('kvstore_revision', '?')} | {w.get('acknowledged_count', 0)} | {w.get('lost_count', 0)} "
              f"| {100 * w.get('lost_fraction', 0):.1f}% | {'-' if av is None else f'{100 * av:.1f}%'} | {valid} |")
    return 0


def _cleanup() -> int:
    from jepsen_lite.netns import can_partition, sweep_stale

    ok, why = can_partition()
    if not ok:
        print(f"nothing to clean: {why}")
        return 0
    for name in sweep_stale():
        print(f"removed {name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(args)
    if a.cmd == "run":
        if a.secret_file:
            # Read from the environment by the nodes started and by every client made.
            os.environ["KV_SECRET_FILE"] = os.path.abspath(a.secret_file)
        return _run(a, args[1:] if args and args[0] == "run" else args)
    if a.cmd == "check":
        return _check(a)
    if a.cmd == "report":
        return _report(a)
    if a.cmd == "summary":
        return _summary(a)
    return _cleanup()


if __name__ == "__main__":
    sys.exit(main())
