"""Carries out a fault schedule against the cluster and the network, and heals everything.

Each fault is two nemesis operations in the history, ``start`` and ``stop``, each an invoke
and an ``info`` completion (a nemesis action has no ok/fail outcome to the checker). The
fault window the checker uses runs from the start's invocation to the stop's completion.
Anything that blocks (iptables, waiting for a process) runs in a worker thread so clients
keep their pace.

``lose-unsynced`` models a power loss: the node is restarted gracefully (nothing lost) with
the storage engine's test-only mode on, in which acknowledged writes sit in memory until the
next periodic fsync; ``delay_s`` later it is SIGKILLed, losing exactly that un-synced tail;
the heal starts it again with the mode off. ``ring`` asks a node to leave the ring,
crash-restarts a node ``delay_s`` later (during the handoff), and at the heal waits for the
leaver to be gone, starts it again so it joins back, and crash-restarts the same node
``delay_s`` after the join; then it waits for the join to commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jepsen_lite.cluster import Cluster, Node
from jepsen_lite.errors import HarnessError
from jepsen_lite.history import History
from jepsen_lite.netns import Firewall, probe_link
from jepsen_lite.schedule import Fault
from kvstore.core import messages as m
from kvstore.errors import KVError

__all__ = ["Nemesis"]

# Bounds of the waits of the ring nemesis: a leave or join on a small test data set commits in
# seconds; one that takes longer is reported (it is a finding), and the run goes on.
RING_CHANGE_TIMEOUT_S = 90.0


def _host(addr: str) -> str:
    return addr.rpartition(":")[0]


class Nemesis:
    def __init__(
        self,
        cluster: Cluster,
        history: History,
        firewall: Firewall | None,
        *,
        on_change: Callable[[str | None], None] | None = None,
        verify: bool = True,
    ) -> None:
        self.verify = verify
        self.cluster = cluster
        self.history = history
        self.firewall = firewall
        self.on_change = on_change or (lambda _label: None)
        self.active: dict[int, Fault] = {}
        self.errors: list[str] = []

    # ------------------------------------------------------------------ one fault
    async def _record(self, f: str, fault: Fault, action: Any) -> None:
        value = fault.to_json()
        inv = self.history.invoke("nemesis", f, value=value)
        error: str | None = None
        try:
            await action()
        except (HarnessError, OSError) as e:
            error = str(e)
            self.errors.append(f"{f} {fault.label}: {e}")
        self.history.complete(inv, "info", value=value, error=error)

    async def start(self, fault: Fault) -> None:
        self.active[fault.id] = fault
        self.on_change(fault.label)
        await self._record("start", fault, lambda: self._apply(fault))

    async def stop(self, fault: Fault) -> None:
        await self._record("stop", fault, lambda: self._heal(fault))
        self.active.pop(fault.id, None)
        self.on_change(None)

    async def _apply(self, fault: Fault) -> None:
        nodes = [self.cluster.nodes[i] for i in fault.nodes]
        if fault.kind == "partition":
            if self.firewall is None:
                raise HarnessError("partition nemesis unavailable (no network namespace)")
            hosts = [_host(a) for a in self.cluster.addrs]
            links = sorted((hosts[a], hosts[b]) for a, b in fault.cuts)
            await asyncio.to_thread(self.firewall.cut, links)
            if self.verify and links:
                # Trust but verify: one cut link must really carry no traffic now.
                src, dst = links[fault.id % len(links)]
                if await asyncio.to_thread(probe_link, src, dst, timeout_s=0.3):
                    raise HarnessError(f"partition rules in place but {src} still reaches {dst}")
        elif fault.kind == "kill":
            for n in nodes:
                self.cluster.kill(n)
        elif fault.kind == "pause":
            for n in nodes:
                self.cluster.pause(n)
        elif fault.kind == "clock":
            await asyncio.to_thread(self.cluster.stop_all, nodes)
            for n in nodes:
                self.cluster.start(n, clock_offset_s=fault.clock_offset_s)
            await asyncio.gather(*(self.cluster.wait_ready(n) for n in nodes))
        elif fault.kind == "lose-unsynced":
            await asyncio.to_thread(self.cluster.stop_all, nodes)
            for n in nodes:
                self.cluster.start(n, lose_unsynced=True)
            await asyncio.gather(*(self.cluster.wait_ready(n) for n in nodes))
            await asyncio.sleep(fault.delay_s)  # take writes, some synced, a tail not yet
            for n in nodes:
                self.cluster.kill(n)
        elif fault.kind == "ring":
            leaver = nodes[0]
            await self._leave(leaver)
            await asyncio.sleep(fault.delay_s)
            await self._crash_restart([self.cluster.nodes[i] for i in fault.restart])
        else:
            raise HarnessError(f"unknown fault kind {fault.kind!r}")

    async def _heal(self, fault: Fault) -> None:
        nodes = [self.cluster.nodes[i] for i in fault.nodes]
        if fault.kind == "partition":
            if self.firewall is not None:
                await asyncio.to_thread(self.firewall.heal)
        elif fault.kind == "kill":
            for n in nodes:
                if not n.running:
                    self.cluster.start(n)
            await asyncio.gather(*(self.cluster.wait_ready(n) for n in nodes))
        elif fault.kind == "pause":
            for n in nodes:
                self.cluster.resume(n)
        elif fault.kind == "clock":
            await asyncio.to_thread(self.cluster.stop_all, nodes)
            for n in nodes:
                self.cluster.start(n)
            await asyncio.gather(*(self.cluster.wait_ready(n) for n in nodes))
        elif fault.kind == "lose-unsynced":
            # Still up only if the fault was cut short before its kill: stop it gracefully.
            await asyncio.to_thread(self.cluster.stop_all, [n for n in nodes if n.running])
            for n in nodes:
                self.cluster.start(n)
            await asyncio.gather(*(self.cluster.wait_ready(n) for n in nodes))
        elif fault.kind == "ring":
            await self._rejoin(nodes[0], fault)

    # ------------------------------------------------------------------ ring changes
    def _via(self, avoid: Node) -> Node:
        for n in self.cluster.nodes:
            if n is not avoid and n.running and not n.paused and not n.leaving:
                return n
        raise HarnessError(f"no node to ask for a ring change of {avoid.name}")

    async def _leave(self, node: Node) -> None:
        via = self._via(node)
        node.leaving = True
        try:
            await self.cluster.call(via, m.LEAVE, [node.name], 10.0)
        except KVError as e:
            node.leaving = False
            raise HarnessError(f"cluster.leave {node.name} via {via.name}: {e}") from None

    async def _crash_restart(self, nodes: list[Node]) -> None:
        """SIGKILL and start again, except a leaver that has already left (starting it would
        be the rejoin, which belongs to the heal)."""
        again = [n for n in nodes if n.running or not n.leaving]
        for n in again:
            self.cluster.kill(n)
            self.cluster.start(n)
        await asyncio.gather(*(self.cluster.wait_ready(n) for n in again))

    async def _until(self, cond: Callable[[], Awaitable[bool]], what: str) -> bool:
        deadline = time.monotonic() + RING_CHANGE_TIMEOUT_S
        while not await cond():
            if time.monotonic() > deadline:
                self.errors.append(f"{what}: not within {RING_CHANGE_TIMEOUT_S:.0f}s")
                return False
            await asyncio.sleep(0.2)
        return True

    async def _settled_with(self, node: Node) -> bool:
        """Every running node sees ``node`` in its ring and no change pending."""
        for n in self.cluster.nodes:
            if not n.running:
                continue
            st = await self.cluster.status(n)
            if st is None or st.get("pending") or node.name not in {mem.get("name") for mem in st.get("members", [])}:
                return False
        return True

    async def _rejoin(self, leaver: Node, fault: Fault) -> None:
        async def joined() -> bool:
            return await self._settled_with(leaver)

        if not leaver.leaving:
            # A heal cut short after the rejoin began (the run ended): only wait for it.
            await self._until(joined, f"{leaver.name} joining the ring again")
            return

        async def gone() -> bool:
            if leaver.running:
                return False
            if leaver.proc is not None and leaver.proc.returncode == 0:
                return True  # it exited by itself: the leave is done
            # Killed and not started again (the fault was cut short mid-restart): bring it
            # back so it can finish leaving.
            self.cluster.start(leaver)
            return False

        if not await self._until(gone, f"{leaver.name} leaving the ring"):
            leaver.leaving = False
            return  # still a member with the leave pending; nothing to rejoin
        leaver.leaving = False
        # Same data dir, as an operator would bring the machine back; it joins on its own.
        self.cluster.start(leaver)
        await self.cluster.wait_ready(leaver)
        await asyncio.sleep(fault.delay_s)
        await self._crash_restart([self.cluster.nodes[i] for i in fault.restart])
        await self._until(joined, f"{leaver.name} joining the ring again")

    # ------------------------------------------------------------------ schedule
    async def run(self, schedule: list[Fault], t0: float) -> None:
        """Follow the schedule (times relative to monotonic t0). Cancel it to stop early;
        whatever is active then is healed by ``heal_all``."""
        for fault in schedule:
            await asyncio.sleep(max(0.0, t0 + fault.start_s - time.monotonic()))
            await self.start(fault)
            await asyncio.sleep(max(0.0, t0 + fault.end_s - time.monotonic()))
            await self.stop(fault)

    async def heal_all(self) -> None:
        """Undo every fault still active, then make sure every node runs with a true clock,
        unpaused, and the firewall is empty: the final read must meet the whole cluster."""
        for fault in list(self.active.values()):
            await self.stop(fault)
        if self.firewall is not None:
            await asyncio.to_thread(self.firewall.heal)
        restart = []
        for n in self.cluster.nodes:
            self.cluster.resume(n)
            if n.clock_offset_s and n.running:
                await asyncio.to_thread(self.cluster.stop_all, [n])
            if not n.running:
                self.cluster.start(n)
                restart.append(n)
        await asyncio.gather(*(self.cluster.wait_ready(n) for n in restart))
