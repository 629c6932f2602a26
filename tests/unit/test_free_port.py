"""free_port never hands one process the same port twice: a cluster picks every node's port
before it starts any, so a repeat gave two nodes one address (a fresh-clone run lost a whole
module of tests to "address already in use")."""

from __future__ import annotations

import sys
import types

import pytest

from kvstore.testing import processes
from kvstore.testing.processes import free_port


def test_ports_handed_out_are_distinct_while_none_is_bound() -> None:
    # The kernel picks port 0's port at random from ~28k: 2,000 picks repeat one almost surely.
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


def test_xdist_workers_take_disjoint_ports_below_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    # A kernel-picked port may be one another worker's killed node had moments ago, still
    # called by that test's other nodes: each worker has its own slice, taken in order.
    monkeypatch.setitem(sys.modules, "xdist", sys.modules.get("xdist") or types.ModuleType("xdist"))
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    seen: dict[str, set[int]] = {}
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setattr(processes, "_next_in_slice", None)
        seen[worker] = {free_port() for _ in range(200)}
        assert len(seen[worker]) == 200
        assert all(processes.SLICE_LOW <= p < processes._ephemeral_low() for p in seen[worker])
    assert not seen["gw0"] & seen["gw1"] and not seen["gw1"] & seen["gw2"] and not seen["gw0"] & seen["gw2"]


def test_a_process_a_worker_started_takes_kernel_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.delitem(sys.modules, "xdist", raising=False)
    assert processes._worker_slice() is None
    assert free_port() >= processes._ephemeral_low()
