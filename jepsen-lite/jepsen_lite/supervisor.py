"""The outside half of a namespaced run: make the namespace, re-exec the harness inside it
with `ip netns exec`, and remove the namespace whatever happens.

Why re-exec rather than setns() from a thread: everything that must be inside (the nodes,
the clients, the iptables calls) then simply is, with no per-thread namespace juggling,
and this thin parent stays outside to clean up after a harness that crashed, was killed or
was interrupted. The child runs in a session of its own so a terminal Ctrl-C reaches it
exactly once (forwarded by this parent), and it is told to die with the parent (SIGTERM
via PR_SET_PDEATHSIG) so a killed parent does not leave a run going. A parent killed with
SIGKILL leaves an empty namespace behind, which the next run's ``sweep_stale`` removes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from jepsen_lite.netns import NetNS, node_address, sweep_stale
from kvstore.testing.processes import die_with_parent

__all__ = ["INSIDE_ENV", "run_in_namespace"]

INSIDE_ENV = "JEPSEN_LITE_NETNS"


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def run_in_namespace(argv: Sequence[str], n_nodes: int, log: object = sys.stderr) -> int:
    stale = sweep_stale()
    if stale:
        print(f"jepsen-lite: removed stale namespaces {', '.join(stale)}", file=log)  # type: ignore[call-overload]
    ns = NetNS.create([node_address(i) for i in range(n_nodes)])
    env = dict(os.environ)
    env[INSIDE_ENV] = ns.name
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH", "")) if p)
    cmd = [*ns.exec_prefix(), sys.executable, "-m", "jepsen_lite.cli", *argv]
    child: subprocess.Popen[bytes] | None = None
    signals_seen = 0

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if child is not None and child.poll() is None:
            child.send_signal(signum if signals_seen <= 2 else signal.SIGKILL)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        child = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=die_with_parent)
        while True:
            try:
                return child.wait()
            except InterruptedError:
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        ns.destroy()
        shutil.rmtree(f"/dev/shm/jepsen-lite-{ns.name}", ignore_errors=True)
