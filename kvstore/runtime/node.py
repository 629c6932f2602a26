"""A kvstore node: the local store, the RPC server, the coordinator and the cluster view,
wired together, with a start and a graceful stop.

Order of stopping matters: stop taking requests, let in-flight writes finish, flush the
store, then close it, so every acknowledged write is durable before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import time
from typing import Any, Final

from kvstore import __version__
from kvstore.config import Settings, parse_addr
from kvstore.core import messages as m
from kvstore.core.membership import MemberEvent, SwimConfig, route_rank
from kvstore.core.ring import Ring, claim
from kvstore.core.zones import DEFAULT_ZONE, zone_problem
from kvstore.errors import ForeignCluster, InvalidRequest, KVError, StorageError, Unavailable
from kvstore.runtime import batch
from kvstore.runtime.antientropy import AntiEntropy
from kvstore.runtime.buckets import BucketRegistry
from kvstore.runtime.cluster import ClusterView
from kvstore.runtime.coordinator import Coordinator
from kvstore.runtime.datamodel import DataModel
from kvstore.runtime.datatypes import Datatypes
from kvstore.runtime.expiry import Expiry
from kvstore.runtime.gossip import Gossip, push_pull_via
from kvstore.runtime.gossip import rpc_handlers as gossip_handlers
from kvstore.runtime.handoff import STATUS, Handoff
from kvstore.runtime.hints import Hints
from kvstore.runtime.keylist import handlers as keylist_handlers
from kvstore.runtime.observe.dashboard import OPS_METHOD, ops_summary, routes
from kvstore.runtime.observe.http import HttpServer
from kvstore.runtime.observe.state import Observability
from kvstore.runtime.replica import Replica, ReplicaServer
from kvstore.runtime.resolver import Resolver, family_of
from kvstore.runtime.rpc import RpcClient, RpcServer
from kvstore.runtime.security import GOSSIP_OVERHEAD_BYTES, Security
from kvstore.runtime.tombstones import MarkedGet
from storage.engine import Engine
from storage.errors import StorageError as RawStorageError
from storage.snapshot import write_snapshot

log = logging.getLogger("kvstore.node")

# A chunk of client requests whose replica calls reach this many ops sends them at once
# (see Node._send_replica_calls); fewer wait for the end of the loop turn, unless the calls
# queued in the turn so far carry AFTER_CHUNK_MIN_BYTES (about a dozen 100-byte puts to two
# peers): then they go too, and the peers store them while this node reads on.
AFTER_CHUNK_MIN_OPS: Final = 16
AFTER_CHUNK_MIN_BYTES: Final = 4096

# Error reason a node gives while it has no ring yet (see Node._join_through).
NO_RING: Final = "no_ring"
# Seconds the last graceful stop took to write its snapshot (read back by the next start).
SNAPSHOT_WRITE_KEY: Final = b"node.snapshot_write_s"
# Set once this node has been a member of a committed ring: only such a node may conclude,
# on finding itself outside the ring, that it was asked to leave.
WAS_MEMBER_KEY: Final = b"node.was_member"


def store_identity(data_dir: str) -> str:
    """A random id made when the data directory is first used. Snapshots are named and
    checked by node name plus this id, so a snapshot can never be adopted by a different
    store that happens to have the same node name and write position."""
    path = os.path.join(data_dir, "STORE_ID")
    try:
        with open(path) as fh:
            ident = fh.read().strip()
            if ident:
                return ident
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StorageError(f"storage: cannot read {path}: {e.strerror}", path=path) from None
    ident = secrets.token_hex(8)
    try:
        os.makedirs(data_dir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(ident + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise StorageError(f"storage: cannot write {path}: {e.strerror}", path=path) from None
    return ident


class Node:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.name = settings.name
        self.addr = settings.advertised
        self.started_at = time.time()
        # Keys, TLS and protected mode: ConfigError here, before anything is opened.
        self.security = Security.from_settings(settings)
        self.engine: Engine | None = None
        self.server: RpcServer | None = None
        # One cache of peer names for RPC and gossip, in the family the node listens in.
        self.resolver = Resolver(family_of(parse_addr(settings.listen)[0]))
        self.rpc = RpcClient(
            connect_timeout_s=settings.connect_timeout_s,
            reconnect_min_s=settings.reconnect_min_s,
            reconnect_max_s=settings.reconnect_max_s,
            max_frame_bytes=settings.max_frame_bytes,
            source_host=self._source_host(),
            resolver=self.resolver,
            **self.security.client_options(settings),
        )
        self.view: ClusterView | None = None
        self.coord: Coordinator | None = None
        self._join_lock = asyncio.Lock()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.handoff: Handoff | None = None
        self.gossip: Gossip | None = None
        self.gossip_on = False
        self._swim_down: set[str] = set()
        self._swim_rank: dict[str, int] = {}
        self.aae: AntiEntropy | None = None
        # Set when this node should exit on its own (it left the ring).
        self.exit_requested = asyncio.Event()
        self.restart_requested = False
        # Changes on every process start: lets `kv cluster rolling-restart` see a restart happen.
        self.boot_id = secrets.token_hex(6)
        self._drop_at: float | None = None
        self._was_member = False
        # Metrics, dashboard state and the HTTP port that serves them (http_port 0: none).
        self.obs = Observability()
        self.http: HttpServer | None = None

    def _source_host(self) -> str | None:
        host, _ = parse_addr(self.s.listen)
        # Bind outgoing connections to our own address only when it is a specific loopback
        # alias (fault-injection namespaces give each node its own 127.0.0.x).
        if host.startswith("127.") and host != "127.0.0.1":
            return host
        return None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        t0 = time.perf_counter()
        try:
            self.snapshot_id = f"{self.name}@{store_identity(self.s.data_dir)}"
            self.engine = Engine.open(
                self.s.data_dir, fsync=self.s.fsync, compression=self.s.storage_compression,
                snapshot_dir=self.s.snapshot_dir, node_id=self.snapshot_id,
            )
        except RawStorageError as e:
            raise StorageError(str(e), path=getattr(e, "path", None)) from None
        log.info("store %s: %s", self.s.data_dir, self.engine.load_stats)
        self.engine.on_batch = self._batch_written
        if (raw_s := self.engine.meta_get(SNAPSHOT_WRITE_KEY)) is not None:
            self.obs.snapshot_write_s = float(raw_s)
        self.view = ClusterView(
            self.name, self.addr, self.engine, self.s.n_replicas,
            down_checks=[self._says_down],
            listeners=[self._on_view_change],
            rank=self._gossip_rank,
        )
        had_view = self.view.load()
        replica = Replica(self.engine, self.name, lww=self.s.conflict == "lww")
        if not await replica.start():
            log.info("no clean stop recorded: coordinating writes as %s (a new actor epoch)", replica.actor)
        else:
            log.info("clean stop recorded: coordinating writes as %s again", replica.actor)
        self.replica = replica
        self._was_member = self.engine.meta_get(WAS_MEMBER_KEY) is not None
        # Before serving: it copies the table so its trees count every write exactly once.
        self.aae = AntiEntropy(self.s, self.view, replica, self.engine, self.rpc)
        if "aae" in self.engine.snapshot_extra:
            self.aae.import_(self.engine.snapshot_extra["aae"])
        self.handoff = Handoff(self.s, self.view, replica, self.engine, self.rpc, on_dropped=self.aae.drop)
        self.hints = Hints(self.s, self.view, self.engine, self.rpc, replica)
        self.buckets = BucketRegistry(self.s, self.view, self.engine, self.rpc)
        self.buckets.load()
        replica.bucket_lww = self.buckets.lww_of
        self.coord = Coordinator(self.s, self.view, replica, self.rpc, keep_hint=self.hints.store,
            data_path=lambda c: DataModel(c, self.buckets.props),
        )
        self.expiry = Expiry(self.s, self.view, replica, self.coord, self.buckets.props)
        log.info("ttl: %d expiring keys indexed", self.expiry.start())
        seeds = [s for s in self.s.seeds if s != self.addr]
        if not had_view and not seeds:
            # Founded before the server answers anyone: a joiner that heard "no ring yet" from
            # this node would take it for a fellow founder-to-be and, with the lower address,
            # found a second cluster beside this one.
            first = claim([self.name], self.s.partitions, zones={self.name: self.s.zone})
            self.view.found(first)
            await self.view.save()
            log.info("started a new cluster: ring v%d with this node alone", first.version)
        keyring = self.security.keyring
        swim_config = SwimConfig.from_settings(self.s)
        if keyring is not None:
            # Sealing adds bytes to each packet: keep sealed packets within the same size.
            swim_config = SwimConfig.from_settings(
                self.s, gossip_max_packet_bytes=self.s.gossip_max_packet_bytes - GOSSIP_OVERHEAD_BYTES
            )
        self.gossip = Gossip(
            swim_config, self.name, self.addr, self.s.listen, random.Random(),
            push_pull_via(self.rpc), self._on_member, meta=self._gossip_meta(),
            keyring=keyring, resolver=self.resolver,
        )
        self.server = RpcServer(
            {
                **self._handlers(),
                **self.coord.handlers(),
                **batch.handlers(self.coord),
                **self.buckets.handlers(),
                **Datatypes(self.coord).handlers(),
                **ReplicaServer(replica, self.view, self.hints.store).handlers(),
                **self.hints.handlers(),
                **self.handoff.handlers(),
                **self.aae.handlers(),
                **gossip_handlers(self.gossip),
                **keylist_handlers(self.s, self.engine),
                **MarkedGet(self.coord, self.rpc).handlers(),
            },
            **self.security.server_options(self.s),
            after_chunk=self._send_replica_calls,
            observers=self.obs.requests.observers(),
        )
        host, port = parse_addr(self.s.listen)
        await self.server.start(host, port)
        # What a storage commit or a chunk of peer replies completes is answered in the
        # same pass of the event loop (see _Flusher).
        around = (self.server.hold_replies, self.server.release_replies)
        self.engine.around_resolve = around
        self.rpc.around_replies = around
        if self.s.http_port:
            self.http = HttpServer(routes(self))
            await self.http.start(self.s.http_host, self.s.http_port)
            log.info("metrics and dashboard on http://%s:%d/", self.s.http_host, self.http.port)
        await self.gossip.start()
        self.gossip_on = True
        # Gossip with the seeds and every member we knew before a restart.
        known = [a for n, a in self.view.addrs.items() if n != self.name]
        await self.gossip.join(dict.fromkeys([*seeds, *known]))
        if seeds and self.s.auto_join and self.name not in self.view.members():
            await self._join_through(seeds)
        elif seeds:
            await self._pull_view(seeds)
        # Partitions left over from a ring change whose drop a stop or crash interrupted: the
        # drop timer lives in memory, so every start sets it again (drop_unowned keeps all
        # that the ring or a pending change still places here).
        self._drop_at = asyncio.get_running_loop().time() + self.s.handoff_drop_delay_s
        self._spawn(self.handoff.run())
        self._spawn(self.aae.run())
        self._spawn(self.hints.run())
        self._spawn(self.buckets.run())
        self._spawn(self.expiry.run())
        self._spawn(self._maintain())
        self._spawn(self.obs.live.run())
        log.info(
            "node %s ready on %s (kvstore %s) in %.2fs", self.name, self.s.listen, __version__,
            time.perf_counter() - t0,
        )

    async def _join_through(self, seeds: list[str]) -> None:
        """Join through any seed. If every seed answers but none has a ring yet (all nodes
        of a new cluster started at once, each seeded with the others), the node with the
        lowest address founds it and the others join it: deterministic, and never done
        while a seed cannot be asked (it might hold the cluster's ring)."""
        assert self.view is not None
        deadline = asyncio.get_running_loop().time() + 120.0
        delay = 0.1
        while True:
            ringless = 0
            # A node that belongs to a cluster says which, so a seed of another refuses it.
            params = [self.name, self.addr, 0, self.s.zone, *([self.view.cluster] if self.view.cluster else [])]
            for seed in seeds:
                try:
                    doc = await self.rpc.call(seed, m.JOIN, params, 5.0)
                    await self._accept_view(doc)
                except ForeignCluster as e:
                    log.warning("seed %s is of another cluster: %s", seed, e)
                    continue
                except KVError as e:
                    if isinstance(e, Unavailable) and e.extra.get("reason") == NO_RING:
                        ringless += 1
                    else:
                        log.info("join through %s: %s", seed, e)
                    continue
                log.info("joined the cluster through %s (cluster id %s)", seed, self.view.cluster or "none")
                return
            if ringless == len(seeds) and self.addr == min([self.addr, *seeds]):
                self.view.found(claim([self.name], self.s.partitions, zones={self.name: self.s.zone}))
                await self.view.save()
                log.info("no seed has a ring yet and this node has the lowest address: founding the cluster")
                return
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(f"could not join through any seed ({', '.join(seeds)})", required=1)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("node %s stopping", self.name)
        if self.gossip is not None and self.gossip_on:
            # Say so first, so coordinators and clients route around us instead of timing out.
            try:
                if self.restart_requested:
                    await self.gossip.announce_restart()
                else:
                    await self.gossip.leave()
            except (KVError, OSError) as e:
                log.info("could not announce the stop: %s", e)
        if self.http is not None:
            await self.http.close()
        if self.server is not None:
            await self.server.drain()
        if self.gossip is not None:
            self.gossip_on = False
            await self.gossip.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.coord is not None:
            await self.coord.close()
        if self.aae is not None:
            await self.aae.close()
        await self.rpc.close()
        self.resolver.close()
        if self.engine is not None:
            try:
                if self.s.snapshot_dir and not self.engine.closed:
                    await self.engine.flush()  # trees exported at the position the snapshot holds
                    extra = {"aae": self.aae.export()} if self.aae is not None else {}
                    info = write_snapshot(self.engine, self.snapshot_id, self.s.snapshot_dir, extra)
                    log.info("snapshot written: %s", info)
                    # A meta write moves no data position: the snapshot stays valid.
                    await self.engine.meta_put(SNAPSHOT_WRITE_KEY, repr(info.seconds).encode())
            except (OSError, RawStorageError, ValueError) as e:
                log.warning("no snapshot written (next start reads LevelDB): %s", e)
            try:
                if not self.engine.closed:
                    await self.replica.record_clean_stop()
            except RawStorageError as e:
                log.warning("clean stop not recorded (the next start takes a new actor epoch): %s", e)
            await self.engine.close()
        log.info("node %s stopped", self.name)

    # ------------------------------------------------------------------ handlers
    def _batch_written(self, ops: int, synced: bool, secs: float) -> None:
        """A storage batch was written and its waiters told (Engine.on_batch). The replies
        it released were written as the waiters were told (Engine.around_resolve)."""
        self.obs.storage.on_batch(ops, synced, secs)

    def _send_replica_calls(self) -> None:
        """After each chunk of client requests (RpcServer ``after_chunk``): send the replica
        calls they made now rather than at the end of the loop turn. Otherwise the replicas
        idle while this node reads every connection's chunk, and this node idles while they
        work: the two run in lockstep (measured: 3-node puts at 4x64, +20-25%). A chunk of
        a few requests (many connections with one in flight each) leaves them to the end of
        the turn, one frame per peer for all of them, until what the turn has queued
        carries AFTER_CHUNK_MIN_BYTES: writes with one in flight on each of 50 connections
        otherwise left a fifth of the two cores idle (the peers waiting on this node's turn,
        then this node on theirs; measured +4-6% puts at 50x1 with it). Gets carry only
        keys, so their turns stay one frame per peer (sent mid-turn, gets at 50x1 lost 4%)."""
        # What this chunk added, not what is queued: at one request per chunk the ops of a
        # whole turn would reach the ops bar every few chunks and go out in several frames
        # per peer (measured at 50x1: ~4 writes per peer per turn, each a batch to account for).
        if self.coord is not None:
            self.coord.outbox.flush_if_grown(AFTER_CHUNK_MIN_OPS, AFTER_CHUNK_MIN_BYTES)

    def _handlers(self) -> dict[str, Any]:
        """This node's own methods: identity, admin and cluster membership."""
        return {
            m.PING: self._ping,
            m.RESTART: self._restart,
            m.STOP: self._stop_request,
            m.RING: self._ring,
            m.STATUS: self._status,
            m.JOIN: self._join,
            m.LEAVE: self._leave,
            m.RING_UPDATE: self._ring_update,
            OPS_METHOD: lambda: ops_summary(self),
        }

    def swim_fields(self, node: str) -> dict[str, Any]:
        info = self.gossip.member(node) if self.gossip is not None and self.gossip_on else None
        if info is None:
            return {"state": "unknown"}
        return {
            "state": info.state.value,
            "incarnation": info.incarnation,
            "restarting": info.restarting,
            "damped": info.damped,
            "penalty": round(info.penalty, 2),
            "health": info.awareness,
        }

    def _ping(self) -> dict[str, Any]:
        return {"node": self.name, "addr": self.addr, "version": __version__, "boot": self.boot_id, "zone": self.s.zone}

    def _stop_request(self) -> dict[str, Any]:
        """Admin: stop gracefully (announce, drain, snapshot, exit 0). Answers first."""
        asyncio.get_running_loop().call_soon(self.exit_requested.set)
        return {"node": self.name, "boot": self.boot_id}

    def _restart(self) -> dict[str, Any]:
        """Admin: write the snapshot and re-execute this node's command line (same identity,
        same data). Answers first, then goes."""
        self.restart_requested = True
        asyncio.get_running_loop().call_soon(self.exit_requested.set)
        return {"node": self.name, "boot": self.boot_id}

    def _ring(self) -> dict[str, Any]:
        assert self.view is not None
        if self.view.ring is None:
            raise Unavailable("this node has not joined a ring yet", required=1, reason=NO_RING)
        doc = self.view.to_wire()
        doc["n"] = self.s.n_replicas
        doc["version"] = self.view.version
        return doc

    def _status(self) -> dict[str, Any]:
        assert self.view is not None and self.engine is not None and self.coord is not None
        ring = self.view.ring
        counts: dict[int, int] = {}
        for p in self.engine.partitions():
            counts[p] = self.engine.count(p)
        return {
            "node": self.name,
            "addr": self.addr,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 1),
            "boot": self.boot_id,
            "pid": os.getpid(),
            "ring_version": self.view.version,
            "ring_checksum": self.view.checksum,
            "cluster": self.view.cluster,
            "pending": self.view.next is not None,
            "zone": self.s.zone,
            "zones": list(ring.zone_names) if ring else [],
            "members": [
                {
                    "name": n,
                    "addr": a,
                    "zone": self._zone_of(n),
                    "up": self.view.is_up(n),
                    **self.swim_fields(n),
                    "partitions": len(ring.owned_by(n)) if ring else 0,
                    "next_partitions": len(self.view.next.owned_by(n)) if self.view.next else None,
                }
                for n, a in sorted(self.view.addrs.items())
                if n in self.view.members()
            ],
            "keys": sum(counts.values()),
            "aae": self.aae.status() if self.aae else None,
            "hints": self.hints.by_target(),
            "load": {"path": self.engine.load_stats.path, "reason": self.engine.load_stats.reason, "seconds": round(self.engine.load_stats.seconds, 3)},
            "n": self.s.n_replicas,
            "r": self.s.r,
            "w": self.s.w,
            "counters": {
                "gets": self.coord.counters.gets,
                "puts": self.coord.counters.puts,
                "forwarded": self.coord.counters.forwarded,
                "unavailable": self.coord.counters.unavailable,
                "read_repairs": self.coord.counters.read_repairs,
            },
        }

    async def _accept_view(self, doc: Any) -> bool:
        assert self.view is not None
        ring, nxt, addrs, cluster = ClusterView.parse(doc)
        changed = self.view.accept(ring, nxt, addrs, cluster)
        if changed:
            await self.view.save()
        return changed

    async def _ring_update(self, doc: Any) -> bool:
        return await self._accept_view(doc)

    async def _change(self, members: list[str], what: str, zones: dict[str, str] | None = None) -> dict[str, Any]:
        """Start a ring change to ``members`` (caller holds the join lock)."""
        assert self.view is not None and self.view.ring is not None
        if self.view.next is not None:
            raise Unavailable(
                f"a ring change to v{self.view.next.version} is in progress; retry when it commits "
                "(kv cluster transfers shows it)", required=1,
            )
        ring = self.view.ring
        nxt = claim(members, ring.partitions, ring, zones=zones)
        self.view.accept(ring, nxt, {})
        log.info("%s: ring change v%d -> v%d started", what, ring.version, nxt.version)
        await self.view.save()
        await self._broadcast_view()
        return self.view.to_wire()

    def _claimant(self) -> str | None:
        """The one member that makes ring changes: the lowest-named live member of the ring
        (Riak's claimant). Two nodes computing changes at once would each bump the version
        and one change would silently lose, so every join and leave goes through it."""
        assert self.view is not None
        ring = self.view.ring
        if ring is None:
            return None
        live = [n for n in ring.members if self.view.is_up(n)]
        return live[0] if live else None

    async def _via_claimant(
        self, method: str, params: list[Any], hops: Any, tail: tuple[Any, ...] = ()
    ) -> dict[str, Any] | None:
        claimant = self._claimant()
        if claimant is None or claimant == self.name or hops:
            return None
        doc = await self.rpc.call(self.view.addr_of(claimant), method, [*params, 1, *tail], 10.0)  # type: ignore[union-attr]
        await self._accept_view(doc)
        return doc  # type: ignore[no-any-return]

    async def _join(
        self, name: Any, addr: Any, hops: Any = 0, zone: Any = None, cluster: Any = None
    ) -> dict[str, Any]:
        """Add a node to the ring (or update its address) and tell every member.

        ``zone`` is the joiner's zone (older callers send none: then gossip's word on it,
        else the default). A member that asks again with another zone than the ring has
        for it gets a ring change that moves it to that zone (a restart with a new --zone).
        """
        assert self.view is not None
        node = m.as_str(name, "name")
        where = m.as_str(addr, "addr")
        parse_addr(where)
        theirs = "" if cluster is None else m.as_str(cluster, "cluster")
        if theirs and self.view.cluster and theirs != self.view.cluster:
            raise ForeignCluster(
                f"{node} belongs to cluster {theirs}; this is cluster {self.view.cluster}", cluster=theirs
            )
        z = self._joiner_zone(node, zone)
        if self.view.ring is not None and (node not in self.view.members() or self._zone_moves(node, z)):
            forwarded = await self._via_claimant(m.JOIN, [node, where], hops, (z,))
            if forwarded is not None:
                return forwarded
        async with self._join_lock:
            if self.view.ring is None:
                raise Unavailable("this node has not joined a ring yet", required=1, reason=NO_RING)
            self.view.addrs[node] = where
            if node in self.view.members():
                if self._zone_moves(node, z) and node in self.view.ring.members:
                    assert z is not None
                    return await self._change(
                        list(self.view.ring.members), f"{node} moves to zone {z}", {node: z}
                    )
                await self.view.save()
                await self._broadcast_view()
                return self.view.to_wire()
            return await self._change(
                [*self.view.ring.members, node], f"{node} ({where}) joins in zone {z or DEFAULT_ZONE}",
                {node: z} if z is not None else None,
            )

    # ------------------------------------------------------------------ zones
    def _gossip_meta(self) -> dict[str, Any]:
        """What this node publishes through gossip: its ring version, zone and cluster id."""
        assert self.view is not None
        meta: dict[str, Any] = {"ring": self.view.version, "zone": self.s.zone}
        if self.view.cluster:
            # SWIM drops a member's news whose cluster is not its own (swim.py).
            meta["cluster"] = self.view.cluster
        return meta

    def _zone_of(self, node: str) -> str:
        """``node``'s zone as the ring (or the pending ring, for a joiner) places it."""
        assert self.view is not None
        if self.view.next is not None and node in self.view.next.members:
            return self.view.next.zone_of(node)
        if self.view.ring is not None:
            return self.view.ring.zone_of(node)
        return DEFAULT_ZONE

    def _joiner_zone(self, node: str, zone: Any) -> str | None:
        """The zone a join asks for: the request's, else what the node gossips, else None."""
        if zone is None and self.gossip is not None and self.gossip_on:
            info = self.gossip.member(node)
            zone = info.meta.get("zone") if info is not None else None
        if zone is None:
            return None
        z = m.as_str(zone, "zone")
        why = zone_problem(z)
        if why is not None:
            raise InvalidRequest(why)
        return z

    def _zone_moves(self, node: str, zone: str | None) -> bool:
        """A member's join that asks for another zone than the committed ring gives it."""
        assert self.view is not None
        ring = self.view.ring
        return (
            zone is not None and ring is not None and self.view.next is None
            and node in ring.members and ring.zone_of(node) != zone
        )

    async def _leave(self, name: Any, hops: Any = 0) -> dict[str, Any]:
        assert self.view is not None
        node = m.as_str(name, "name")
        forwarded = await self._via_claimant(m.LEAVE, [node], hops)
        if forwarded is not None:
            return forwarded
        async with self._join_lock:
            ring = self.view.ring
            if ring is None or node not in ring.members:
                raise InvalidRequest(f"{node!r} is not a member of the ring")
            rest = [x for x in ring.members if x != node]
            if not rest:
                raise InvalidRequest("the last member cannot leave")
            return await self._change(rest, f"{node} leaves")

    async def _broadcast_view(self) -> None:
        assert self.view is not None
        doc = self.view.to_wire()
        targets = [n for n in self.view.members() if n != self.name]

        async def push(n: str) -> None:
            try:
                await self.rpc.call(self.view.addr_of(n), m.RING_UPDATE, [doc], 2.0)  # type: ignore[union-attr]
            except KVError as e:
                log.info("ring update to %s failed: %s", n, e)

        await asyncio.gather(*(push(n) for n in targets))

    async def _pull_view(self, peers: list[str]) -> None:
        for addr in peers:
            try:
                doc = await self.rpc.call(addr, m.RING, [], 2.0)
            except KVError:
                continue
            await self._accept_view(doc)
            return

    # ------------------------------------------------------------------ background upkeep
    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    def _says_down(self, node: str, addr: str) -> bool:
        """SWIM's word on liveness: dead, left or about to restart means skip it; a suspect is
        still tried (it may well be alive). Kept up to date from membership events, since it
        is asked several times per request. Then the RPC client's: ``addr`` failed its last
        connect and its backoff runs. One check, not two: each is a call through Python's
        call protocol, for every target of every request."""
        return node in self._swim_down or self.rpc.is_down(addr)

    def _gossip_rank(self, node: str) -> int:
        """Flap dampening takes effect here: a damped member is used after healthy ones."""
        return self._swim_rank.get(node, 0)

    def _on_member(self, ev: MemberEvent) -> None:
        m_ = ev.member
        self.obs.on_member(ev)
        if m_.state.gone or m_.restarting:
            self._swim_down.add(m_.name)
        else:
            self._swim_down.discard(m_.name)
        self._swim_rank[m_.name] = route_rank(m_)
        if ev.old_state != ev.new_state:
            log.info("member %s (%s): %s -> %s, incarnation %d", m_.name, m_.addr,
                     ev.old_state.value if ev.old_state else "new", ev.new_state.value, ev.incarnation)
        assert self.view is not None
        if m_.name != self.name and m_.name in self.view.addrs and self.view.addrs[m_.name] != m_.addr:
            self.view.addrs[m_.name] = m_.addr
        ring_v = m_.meta.get("ring")
        if isinstance(ring_v, int) and ring_v > self.view.version and not ev.new_state.gone:
            # A peer has a newer ring: fetch it now rather than at the next periodic pull.
            self._spawn(self._pull_view([m_.addr]))

    def _on_view_change(self) -> None:
        assert self.view is not None
        if self.view.ring is not None:
            self.obs.on_ring(self.view.ring.version, self.view.next.version if self.view.next else None)
        if self.gossip is not None and self.gossip_on:
            self.gossip.set_meta(self._gossip_meta())
        if self.handoff is not None:
            self.handoff.wake()
        if self.view.next is None:
            # A change committed: drop what we no longer replicate after a grace period, so
            # nodes that have not yet heard of the commit still find the data where they look.
            self._drop_at = asyncio.get_running_loop().time() + self.s.handoff_drop_delay_s

    async def _maintain(self) -> None:
        """Ring anti-entropy, commit of finished changes, and dropping handed-off data."""
        assert self.view is not None and self.handoff is not None
        rng = random.Random()
        loop = asyncio.get_running_loop()
        next_pull = 0.0
        next_gossip_join = 0.0
        next_zone_check = 0.0
        while True:
            await asyncio.sleep(0.5)
            try:
                now = loop.time()
                if self.gossip is not None and self.gossip_on and now >= next_gossip_join:
                    # A seed that was not up yet when we started, or a member gossip has not
                    # heard of: push-pull with it directly (a cluster must not depend on seeds).
                    next_gossip_join = now + 2.0
                    unknown = [
                        self.view.addrs[n] for n in self.view.members()
                        if n != self.name and n in self.view.addrs and self.gossip.member(n) is None
                    ]
                    if unknown:
                        await self.gossip.join(unknown)
                others = [n for n in self.view.members() if n != self.name and self.view.is_up(n)]
                if others and now >= next_pull:
                    next_pull = now + 2.0
                    await self._pull_view([self.view.addr_of(rng.choice(others))])
                if self.view.next is not None:
                    await self._try_commit()
                if self._drop_at is not None and now >= self._drop_at and self.view.next is None:
                    self._drop_at = None
                    await self.handoff.drop_unowned()
                    if self.aae is not None:
                        self.aae.prune()
                ring = self.view.ring
                if ring is not None and self.view.next is None and self._claimant() == self.name and self.view.mint():
                    await self.view.save()
                    await self._broadcast_view()
                if ring is not None and now >= next_zone_check:
                    next_zone_check = now + 5.0
                    await self._fix_zone()
                if ring is not None and self.view.next is None:
                    if self.name in ring.members:
                        if not self._was_member:
                            self._was_member = True
                            await self.engine.meta_put(WAS_MEMBER_KEY, b"1")  # type: ignore[union-attr]
                    elif self._was_member:
                        log.info("this node has left the ring and handed off its data; exiting")
                        self.exit_requested.set()
                        return
                    elif self.s.auto_join:
                        # Told we joined, but the change that committed does not hold us (it
                        # raced another): ask again rather than sit outside the ring.
                        log.info("not in the committed ring v%d; joining again", ring.version)
                        await self._join_through([self.view.addrs[n] for n in ring.members if n in self.view.addrs])
            except KVError as e:
                log.info("maintenance: %s", e)

    async def _fix_zone(self) -> None:
        """A member restarted with another --zone than the ring has for it: ask the
        claimant for the ring change that moves it (the claim moves no partition for it;
        preference lists change, and handoff moves what they now place elsewhere)."""
        assert self.view is not None
        if not self._zone_moves(self.name, self.s.zone):
            return
        claimant = self._claimant()
        if claimant is None:
            return
        log.info("this node's zone is %s, the ring has %s: asking for the move",
                 self.s.zone, self.view.ring.zone_of(self.name) if self.view.ring else "?")
        if claimant == self.name:
            await self._join(self.name, self.addr, 1, self.s.zone)
        else:
            doc = await self.rpc.call(self.view.addr_of(claimant), m.JOIN, [self.name, self.addr, 0, self.s.zone], 10.0)
            await self._accept_view(doc)

    async def _try_commit(self) -> None:
        """The lowest-named live member commits a pending change once every member reports
        its transfers complete."""
        assert self.view is not None and self.view.next is not None and self.handoff is not None
        nxt = self.view.next
        members = self.view.members()
        live = [n for n in members if self.view.is_up(n)]
        if not live or live[0] != self.name:
            return
        for n in members:
            if n == self.name:
                st = self.handoff.status()
            else:
                try:
                    st = await self.rpc.call(self.view.addr_of(n), STATUS, [], 2.0)
                except KVError:
                    return
            if not st.get("complete") or st.get("version") != nxt.version:
                return
        async with self._join_lock:
            if self.view.next is not nxt:
                return
            committed = Ring(nxt.partitions, nxt.owners, nxt.version + 1, nxt.zones)
            self.view.accept(committed, None, {})
            await self.view.save()
            log.info("ring change committed: v%d", committed.version)
            await self._broadcast_view()
