"""The Prometheus view of a node, built at scrape time from plain counters.

Every metric is listed, with its type, labels and meaning, in docs/metrics.md; a test checks
that the table and this collector name the same metrics. Nothing here runs per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from kvstore.core.membership import MemberState
from kvstore.runtime.observe.histogram import Histogram
from kvstore.runtime.observe.source import ObservedNode

P = "kvstore_"


def _hist(name: str, doc: str, labels: list[str], rows: list[tuple[list[str], Histogram]]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(P + name, doc, labels=labels)
    for values, h in rows:
        fam.add_metric(values, h.cumulative(), h.sum)
    return fam


def _counter(name: str, doc: str, value: float | None = None, labels: list[str] | None = None) -> CounterMetricFamily:
    # prometheus_client appends _total to counter names itself.
    return CounterMetricFamily(P + name, doc, value=value, labels=labels)


def _gauge(name: str, doc: str, value: float | None = None, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(P + name, doc, value=value, labels=labels)


class NodeCollector(Collector):
    def __init__(self, node: ObservedNode) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        n = self.node
        yield from self._requests(n)
        yield from self._coordinator(n)
        yield from self._hints(n)
        yield from self._handoff(n)
        yield from self._aae(n)
        yield from self._swim(n)
        yield from self._storage(n)
        yield from self._node(n)

    def _requests(self, n: ObservedNode) -> Iterator[Metric]:
        rs = n.obs.requests
        req = _counter("requests", "Client requests received, by operation (get, put, delete).", labels=["op"])
        err = _counter("request_errors", "Client requests that failed, by operation and error code.", labels=["op", "code"])
        for op, s in rs.ops.items():
            req.add_metric([op], s.requests)
            for code, k in sorted(s.errors.items()):
                err.add_metric([op, code], k)
        yield req
        yield err
        yield _hist(
            "request_duration_seconds", "Time from a request's arrival to its reply, by operation.",
            ["op"], [([op], s.latency) for op, s in rs.ops.items()],
        )
        rep = _counter("replica_requests", "Replica work: replica.* calls served for coordinators, by operation.", labels=["op"])
        for op, k in rs.replica.items():
            rep.add_metric([op], k)
        yield rep
        yield _hist("read_siblings", "Values (siblings) returned per read (0: not found).", [], [([], rs.siblings)])

    def _coordinator(self, n: ObservedNode) -> Iterator[Metric]:
        if n.coord is None:
            return
        c = n.coord.counters
        coord = _counter("coordinated", "Requests this node coordinated (it was in the key's preference list), by kind.", labels=["kind"])
        coord.add_metric(["read"], c.gets)
        coord.add_metric(["write"], c.puts)
        yield coord
        yield _counter("forwarded", "Requests forwarded to a preference-list node (handle-or-forward).", c.forwarded)
        yield _counter("unavailable", "Coordinated requests that failed for want of R or W replicas.", c.unavailable)
        yield _counter("read_repairs", "Read repairs sent (a replica was stale or missing the key).", c.read_repairs)

    def _hints(self, n: ObservedNode) -> Iterator[Metric]:
        h = getattr(n, "hints", None)
        if h is None:
            return
        targets = sorted(set(h.pending) | set(h.stored_to) | set(h.delivered_to))
        stored = _counter("hints_stored", "Hints stored for a down replica, by target node.", labels=["target"])
        delivered = _counter("hints_delivered", "Hints delivered to their target and dropped here, by target node.", labels=["target"])
        pending = _gauge("hints_pending", "Hints held for a target node, waiting for it.", labels=["target"])
        for t in targets:
            stored.add_metric([t], h.stored_to.get(t, 0))
            delivered.add_metric([t], h.delivered_to.get(t, 0))
            pending.add_metric([t], h.pending.get(t, 0))
        yield stored
        yield delivered
        yield pending
        st = h.stats
        gone = _counter(
            "hints_undelivered",
            "Hints that never reached their target from here, by reason: refused_full (store full), "
            "expired, refused_invalid, unreadable, rerouted (handed to the partition's current replicas).",
            labels=["reason"],
        )
        for reason in ("refused_full", "expired", "refused_invalid", "unreadable", "rerouted"):
            gone.add_metric([reason], getattr(st, reason))
        yield gone

    def _handoff(self, n: ObservedNode) -> Iterator[Metric]:
        if n.handoff is None:
            return
        st = n.handoff.status()
        yield _gauge("handoff_pending", "1 while a ring change is pending (ownership handoff running), else 0.", 1 if st["pending"] else 0)
        yield _gauge("handoff_partitions_needed", "Partitions this node must pull for the pending ring change.", max(0, st["needed"]))
        yield _gauge("handoff_partitions_done", "Of those, partitions pulled completely.", st["done"])
        yield _counter("handoff_keys", "Records received through ownership handoff since start.", n.handoff.keys_received)

    def _aae(self, n: ObservedNode) -> Iterator[Metric]:
        if n.aae is None:
            return
        c = n.aae.counters
        yield _counter("aae_root_checks", "Partition Merkle roots compared with a peer.", c.root_checks)
        ex = _counter("aae_exchanges", "Anti-entropy exchanges: started (a differing tree descended), failed (cut short by a peer error or timeout).", labels=["result"])
        ex.add_metric(["started"], c.exchanges)
        ex.add_metric(["failed"], c.exchange_errors)
        yield ex
        yield _counter("aae_keys_compared", "(key, digest) pairs compared at the leaf stage.", c.keys_compared)
        yield _counter("aae_keys_repaired", "Keys repaired (here or on the peer) by anti-entropy.", c.keys_repaired)
        builds = _counter("aae_tree_builds", "Partition Merkle trees built, by reason: start, or self_check (a tree found out of step is rebuilt).", labels=["reason"])
        builds.add_metric(["start"], max(0, c.trees_built - c.trees_rebuilt))
        builds.add_metric(["self_check"], c.trees_rebuilt)
        yield builds
        yield _gauge("aae_tree_build_seconds", "Duration of the last tree builder pass (all partitions waiting for a build).", n.aae.last_build_s)

    def _swim(self, n: ObservedNode) -> Iterator[Metric]:
        o = n.obs
        tr = _counter("swim_transitions", "Member state changes seen by this node, by member and new state.", labels=["member", "state"])
        for (member, state), k in sorted(o.transitions.items()):
            tr.add_metric([member, state], k)
        yield tr
        g = n.gossip
        stats = g.stats if g is not None else {}
        for key, name, doc in (
            ("suspicions_raised", "swim_suspicions", "Suspicions this node raised about members that missed probes."),
            ("deaths_declared", "swim_deaths_declared", "Members this node declared dead after their suspicion timed out."),
            ("refutes", "swim_refutes", "Suspicions of this node it refuted (by raising its incarnation)."),
            ("probes", "swim_probes", "Probes (pings) sent."),
            ("probe_failures", "swim_probe_failures", "Probes that got no ack, directly or through others."),
        ):
            yield _counter(name, doc, stats.get(key, 0))
        yield _counter("swim_damping_changes", "Members that became damped or undamped (flap dampening).", o.damped_changes)
        members = g.members() if g is not None and n.gossip_on else []
        states = _gauge("swim_members", "Members known to gossip, by state.", labels=["state"])
        for s in MemberState:
            states.add_metric([s.value], sum(1 for x in members if x.state is s))
        yield states
        yield _gauge("swim_damped_members", "Members currently damped (routed to last).", sum(1 for x in members if x.damped))
        pen = _gauge("swim_penalty", "Flap-dampening penalty of each member.", labels=["member"])
        for x in members:
            pen.add_metric([x.name], x.penalty)
        yield pen
        me = next((x for x in members if x.name == n.name), None)
        health = me.awareness if me is not None and me.awareness is not None else 0
        yield _gauge("swim_health_score", "Lifeguard local health score (0 healthy; higher: this node is slow).", health)

    def _storage(self, n: ObservedNode) -> Iterator[Metric]:
        e = n.engine
        o = n.obs
        yield _hist("storage_batch_ops", "Operations per LevelDB write batch (group commit).", [], [([], o.storage.batch_ops)])
        yield _hist("storage_fsync_seconds", "Duration of synced LevelDB batch writes (write + fsync).", [], [([], o.storage.fsync)])
        if e is None:
            return
        yield _counter("storage_batches", "LevelDB write batches written.", e.batches_written)
        yield _counter("storage_syncs", "LevelDB writes with sync=True.", e.syncs_written)
        yield _gauge("storage_keys", "Keys in the local store (all partitions, tombstones included).", e.count())
        ls = e.load_stats
        load = _gauge("store_load_seconds", "Time the last start took to load the store, by source (snapshot or leveldb).", labels=["source"])
        load.add_metric([ls.path], ls.seconds)
        yield load
        yield _gauge(
            "snapshot_write_seconds",
            "Time the previous graceful stop took to write its shared-memory snapshot (NaN if none).",
            float("nan") if o.snapshot_write_s is None else o.snapshot_write_s,
        )

    def _node(self, n: ObservedNode) -> Iterator[Metric]:
        o = n.obs
        yield _hist("event_loop_lag_seconds", "How late the event loop ran a timer (sampled every 0.5 s).", [], [([], o.live.loop_lag)])
        view = n.view
        ring = view.ring if view is not None else None
        yield _gauge("ring_version", "Version of the committed ring this node holds.", ring.version if ring else 0)
        yield _gauge("partitions_owned", "Partitions this node owns in the committed ring.", len(ring.owned_by(n.name)) if ring else 0)


def registry_for(node: Any) -> CollectorRegistry:
    """A registry of its own (not the global default): one node, no process-wide state."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(node))
    return reg
