"""Prometheus metrics of real node processes: every metric of docs/metrics.md is exposed,
parses with prometheus_client's own parser, and moves when the cluster is put under load and
through faults (a killed node, a paused node, a join, a graceful restart)."""

from __future__ import annotations

import asyncio
import math
import re
import signal
import threading
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kvstore.client import AsyncClient
from kvstore.errors import KVError
from kvstore.testing.processes import LocalCluster, give_http_ports, http_get, wait_until

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

Series = tuple[str, tuple[tuple[str, str], ...]]


def documented() -> dict[str, str]:
    """metric name -> type, from the table of docs/metrics.md."""
    rows = re.findall(r"^\| `(kvstore_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", DOC.read_text(), re.M)
    return dict(rows)


def scrape(port: int) -> tuple[dict[str, str], dict[Series, float]]:
    """(exposed metric name -> type, series -> value) of one node."""
    types: dict[str, str] = {}
    values: dict[Series, float] = {}
    for fam in text_string_to_metric_families(http_get(port)):
        name = fam.name + ("_total" if fam.type == "counter" else "")
        types[name] = fam.type
        for s in fam.samples:
            if fam.type == "histogram" and not s.name.endswith("_count"):
                continue  # a histogram moves when its count does
            if fam.type == "counter" and s.name.endswith("_created"):
                continue
            values[(name, tuple(sorted(s.labels.items())))] = s.value
    return types, values


class Recorder:
    """Scrapes every running node in the background; remembers each series' first value and
    whether it ever changed (gauges such as handoff progress only move for a moment)."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.first: dict[tuple[str, Series], float] = {}
        self.moved: set[str] = set()
        self.types: dict[str, str] = {}
        self._seen: set[str] = set()  # nodes scraped at least once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def once(self) -> None:
        for node, port in list(self.ports.items()):
            try:
                types, values = scrape(port)
            except OSError:
                continue  # a node that is down or restarting
            self.types.update(types)
            baseline = node not in self._seen
            self._seen.add(node)
            for series, v in values.items():
                key = (node, series)
                if key not in self.first:
                    self.first[key] = v
                    # A series that appears after the node's first scrape (a new label
                    # value, such as an error code or a hint target) moved from nothing.
                    if not baseline and not math.isnan(v) and v != 0:
                        self.moved.add(series[0])
                    continue
                old = self.first[key]
                if not (math.isnan(old) and math.isnan(v)) and v != old:
                    self.moved.add(series[0])

    def _run(self) -> None:
        while not self._stop.wait(0.2):  # gentle: other tests share the machine
            self.once()

    def __enter__(self) -> Recorder:
        self.once()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.once()


def test_every_documented_metric_is_exposed_and_moves(tmp_path: Path) -> None:
    table = documented()
    assert len(table) >= 30, "docs/metrics.md lost its table"
    flags = [
        "--hint-interval-s", "2", "--max-hints", "40", "--aae-interval-s", "1",
        "--dampen-suppress", "1.5", "--dampen-reuse", "0.5",
    ]
    with LocalCluster(tmp_path, nodes=3, extra=flags) as c:
        c.add("n4")
        ports = give_http_ports(c)
        names = ["n1", "n2", "n3"]
        c.start(names[0])
        for n in names[1:]:
            c.start(n, wait=False)
        for n in names:
            c.wait_serving(n)
        c.wait_ring(3)
        live = {n: ports[n] for n in names}
        with Recorder(live) as rec:
            types, _ = scrape(ports["n1"])
            # The table and the scrape name the same metrics, with the same types.
            assert {k: v for k, v in types.items()} == table

            async def load(addrs: list[str], keys: list[str], *, r: int | None = None, route: bool = True) -> None:
                async with AsyncClient(addrs, route=route, timeout_s=5.0) as kv:
                    for i in range(0, len(keys), 100):
                        chunk = keys[i : i + 100]
                        await asyncio.gather(*(kv.put(k, k) for k in chunk))
                        await asyncio.gather(*(kv.get(k, r=r) for k in chunk))

            async def faults(addrs: list[str]) -> None:
                async with AsyncClient(addrs, timeout_s=5.0) as kv:
                    # Siblings: two writes without a context.
                    await asyncio.gather(kv.put("sib", "a"), kv.put("sib", "b"))
                    await kv.get("sib")
                    await kv.delete("k0")
                    # An error reply of its own code.
                    try:
                        await kv.call(addrs[0], "get", 42)
                    except KVError:
                        pass

            asyncio.run(load(c.addrs(*names), [f"k{i}" for i in range(600)]))
            asyncio.run(faults(c.addrs(*names)))
            # A node killed: suspicion, death, damping, hints (past max_hints: refused).
            c.kill("n3")
            live.pop("n3")
            wait_until(lambda: c.status("n1") is not None and any(
                mm["name"] == "n3" and mm["state"] == "dead" for mm in c.status("n1")["members"]  # type: ignore[index]
            ), 60, 0.1, "n1 to see n3 dead")
            down_keys = [f"d{i}" for i in range(300)]
            asyncio.run(load(c.addrs("n1", "n2"), down_keys))

            async def want_all(addrs: list[str]) -> None:
                async with AsyncClient(addrs, timeout_s=3.0) as kv:
                    try:
                        await kv.put("all3", "x", w=3)  # W=3 with a replica down: unavailable
                    except KVError:
                        pass

            asyncio.run(want_all(c.addrs("n1", "n2")))
            c.start("n3")
            live["n3"] = ports["n3"]
            # Reads of all three replicas while n3 still lacks the keys: read repair.
            asyncio.run(load(c.addrs("n1", "n2", "n3"), down_keys[:100], r=3))
            # Paused nodes are suspected and, when they resume, refute. With both peers paused,
            # n1's probes fail with no relay answering: its Lifeguard score climbs (and each
            # refutation raises the refuter's) for a moment; let the recorder see it.
            # The pause lasts until the recorder has seen a score move (a fixed second was
            # sometimes too short on a loaded machine for n1 to probe and the recorder to look).
            for n in ("n2", "n3"):
                c.nodes[n].proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
            try:
                wait_until(lambda: "kvstore_swim_health_score" in rec.moved, 10, 0.1, "a Lifeguard score to rise")
            except TimeoutError:
                pass  # reported below with everything else that did not move
            finally:
                for n in ("n2", "n3"):
                    c.nodes[n].proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            wait_until(lambda: c.status("n1") is not None and all(
                mm["state"] == "alive" for mm in c.status("n1")["members"] if mm["name"] in ("n2", "n3")  # type: ignore[index]
            ), 60, 0.1, "n2 and n3 to be alive again at n1")
            # A graceful restart: snapshot written, then loaded.
            live.pop("n2")
            c.stop("n2")
            c.start("n2")
            live["n2"] = ports["n2"]
            # A join: ownership handoff, a new ring; requests to a node now forward some keys.
            c.start("n4")
            live["n4"] = ports["n4"]
            c.wait_ring(4, timeout=120)
            asyncio.run(load(c.addrs("n1"), [f"f{i}" for i in range(200)], route=False))

            def all_moved() -> bool:
                rec.once()
                return set(table) <= rec.moved

            try:
                wait_until(all_moved, 120, 0.5, "every documented metric to move")
            except TimeoutError:
                raise AssertionError(f"never moved: {sorted(set(table) - rec.moved)}") from None
