"""Coverage-guided fuzzing of the decoders a node runs on outside bytes (atheris/libFuzzer).

    pip install -e '.[fuzz]'
    nice -n 10 python benchmarks/fuzz.py frame  --seconds 600     # the RPC receive path
    nice -n 10 python benchmarks/fuzz.py record --seconds 600     # records and contexts
    nice -n 10 python benchmarks/fuzz.py gossip --seconds 600     # SWIM packets, sealed or not

The targets are in kvstore/testing/fuzz_targets.py. Each run starts from the seed corpus in
tests/fuzz_corpus/TARGET (replayed by the tests in `make test`), grows a working corpus in
fuzz-work/TARGET (not committed), and writes any crashing input to fuzz-work/crash-*. At
the end it prints one JSON line: target, seconds, executions, execs/s, coverage (libFuzzer's
edges "cov" and features "ft"), corpus size, and crashes. Not part of `make test`: a run is
minutes long.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(target: str, args: list[str]) -> None:
    import logging

    import atheris

    # Handlers that raise on purpose log a traceback each time: millions of them would be
    # most of the run's cost and bury libFuzzer's own lines.
    logging.disable(logging.CRITICAL)

    with atheris.instrument_imports(include=["kvstore", "storage", "msgpack"]):
        from kvstore.testing.fuzz_targets import TARGETS
    fn = TARGETS[target]
    atheris.Setup([sys.argv[0], *args], fn)
    atheris.Fuzz()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", choices=["frame", "record", "gossip"])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ns, rest = ap.parse_known_args()
    if ns.child:
        child(ns.target, rest)
        return 0
    work = ROOT / "fuzz-work" / ns.target
    work.mkdir(parents=True, exist_ok=True)
    seeds = ROOT / "tests" / "fuzz_corpus" / ns.target
    log_path = ROOT / "fuzz-work" / f"{ns.target}.log"
    cmd = [
        sys.executable, __file__, ns.target, "--child",
        f"-max_total_time={ns.seconds}", f"-seed={ns.seed}", f"-max_len={ns.max_len}",
        "-print_final_stats=1", "-rss_limit_mb=2048", "-timeout=10",
        f"-artifact_prefix={ROOT / 'fuzz-work'}/crash-{ns.target}-",
        str(work), str(seeds),
    ]
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"})
    text = log_path.read_text(errors="replace")
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", text))
    last = [m for m in re.finditer(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", text)]
    execs = int(stats.get("number_of_executed_units", last[-1].group(1) if last else 0))
    crashes = sorted(p.name for p in (ROOT / "fuzz-work").glob(f"crash-{ns.target}-*"))
    out = {
        "target": ns.target,
        "seconds": ns.seconds,
        "exit": rc,
        "executions": execs,
        "execs_per_s": int(stats.get("average_exec_per_sec", 0)),
        "cov": int(last[-1].group(2)) if last else None,
        "ft": int(last[-1].group(3)) if last else None,
        "corpus": int(last[-1].group(4)) if last else None,
        "peak_rss_mb": int(stats.get("peak_rss_mb", 0)),
        "crashes": crashes,
        "log": str(log_path),
    }
    print(json.dumps(out))
    return 0 if rc == 0 and not crashes else 1


if __name__ == "__main__":
    sys.exit(main())
