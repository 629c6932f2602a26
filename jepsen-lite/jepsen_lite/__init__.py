"""jepsen-lite: drive a real kvstore cluster through faults and check that nothing acked is lost.

The pieces, in the order a run uses them:

    schedule   seeded fault plan (pure): which fault, when, on which nodes
    netns      private network namespace and iptables partitions (root only)
    cluster    real `kv node` processes: start, kill -9, SIGSTOP/SIGCONT, restart under faketime
    nemesis    carries out the schedule against the cluster and the network
    workloads  concurrent clients (set, register, independent) and the final reads
    history    one JSON line per event: invoke, ok, fail, info
    checker    pure judgement of a history: lost, recovered, unexpected, stale, availability
    report     index.html (matplotlib, offline) and results.json
    runner     one run end to end; cli is the `jepsen-lite` command
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
