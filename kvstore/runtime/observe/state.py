"""The observability state a node keeps beside its modules' own counters: request stats,
live rates, storage batch and fsync histograms, SWIM transitions and a short history of
ring and member changes for the dashboard."""

from __future__ import annotations

import collections
import time
from typing import Any

from kvstore.core.membership import MemberEvent
from kvstore.runtime.observe.histogram import BATCH_BOUNDS, DISK_BOUNDS_S, Histogram
from kvstore.runtime.observe.live import LiveStats
from kvstore.runtime.observe.requests import RequestStats

# Ring and member changes the dashboard lists (newest last).
HISTORY_EVENTS = 50


class StorageStats:
    """Fed by the engine once per written batch (``Engine.on_batch``), not per write."""

    __slots__ = ("batch_ops", "fsync")

    def __init__(self) -> None:
        self.batch_ops = Histogram(BATCH_BOUNDS)
        self.fsync = Histogram(DISK_BOUNDS_S)

    def on_batch(self, ops: int, synced: bool, seconds: float) -> None:
        if ops:
            self.batch_ops.observe(ops)
        if synced:
            # A synced batch is written and fsynced in the storage worker: its duration is
            # the fsync latency a write under fsync=always waits for.
            self.fsync.observe(seconds)


class Observability:
    def __init__(self, wall: Any = time.time) -> None:
        self.wall = wall
        self.requests = RequestStats()
        self.live = LiveStats(self.requests)
        self.storage = StorageStats()
        # (member, new state) -> transitions seen by this node
        self.transitions: dict[tuple[str, str], int] = {}
        self.damped_changes = 0
        self._damped: set[str] = set()
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_EVENTS)
        self.ring_seen: tuple[int, int | None] | None = None
        # Seconds the previous graceful stop took to write its snapshot (None: no such stop).
        self.snapshot_write_s: float | None = None

    def on_member(self, ev: MemberEvent) -> None:
        mem = ev.member
        if ev.old_state != ev.new_state:
            k = (mem.name, ev.new_state.value)
            self.transitions[k] = self.transitions.get(k, 0) + 1
            old = ev.old_state.value if ev.old_state else "new"
            self._note("member", f"{mem.name}: {old} → {ev.new_state.value} (incarnation {ev.incarnation})")
        if mem.damped != (mem.name in self._damped):
            self.damped_changes += 1
            if mem.damped:
                self._damped.add(mem.name)
            else:
                self._damped.discard(mem.name)
            self._note("member", f"{mem.name}: {'damped' if mem.damped else 'no longer damped'} (penalty {mem.penalty:.1f})")

    def on_ring(self, version: int, next_version: int | None) -> None:
        seen = (version, next_version)
        if seen == self.ring_seen:
            return
        if self.ring_seen is not None or version > 0:
            if next_version is not None:
                self._note("ring", f"ring change v{version} → v{next_version} started")
            elif self.ring_seen is not None and self.ring_seen[1] is not None:
                self._note("ring", f"ring change committed: v{version}")
            else:
                self._note("ring", f"ring v{version}")
        self.ring_seen = seen

    def _note(self, kind: str, text: str) -> None:
        self.history.append({"ts": round(self.wall(), 3), "kind": kind, "text": text})
