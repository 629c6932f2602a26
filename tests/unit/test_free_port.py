"""free_port never hands one process the same port twice: a cluster picks every node's port
before it starts any, so a repeat gave two nodes one address (a fresh-clone run lost a whole
module of tests to "address already in use")."""

from __future__ import annotations

from kvstore.testing.processes import free_port


def test_ports_handed_out_are_distinct_while_none_is_bound() -> None:
    # The kernel picks port 0's port at random from ~28k: 2,000 picks repeat one almost surely.
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
